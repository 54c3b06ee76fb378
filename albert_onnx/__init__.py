"""albert-onnx: ALBERT encoders as fast, torch-free ONNX embedding workers.

`albert_onnx.export` (needs torch) writes model directories; `albert_onnx.runtime`
(onnxruntime, numpy, tokenizers only) embeds text with them.
"""

__version__ = "0.1.0"

__all__ = ["Embedder"]


def __getattr__(name: str):
    # Lazy, so `import albert_onnx` stays cheap and the CLI can report a missing onnxruntime.
    if name == "Embedder":
        from albert_onnx.runtime.embedder import Embedder

        return Embedder
    raise AttributeError(f"module 'albert_onnx' has no attribute {name!r}")
