"""Models shipped with albert-onnx. DEFAULT_MODEL names the directory `embed` uses when
no --model is given; its files are installed with the package."""

DEFAULT_MODEL = "albert-minilm-small"
