"""`albert-onnx serve`: an embedding server over the runtime's stages (torch-free, and
nothing from export): OpenAI- and text-embeddings-inference-compatible endpoints, batching
by tokens across requests, backpressure, metrics and a drain on SIGTERM."""
