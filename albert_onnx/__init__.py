"""albert-onnx: ALBERT encoders as fast, torch-free ONNX embedding workers.

`albert_onnx.export` (needs torch) writes model directories; `albert_onnx.runtime`
(onnxruntime, numpy, tokenizers only) embeds text with them.
"""

__version__ = "0.1.0"
