"""Torch-free runtime: onnxruntime, numpy and tokenizers only. Imports nothing from export."""
