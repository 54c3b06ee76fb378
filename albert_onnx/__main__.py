from albert_onnx.cli import app

app()
