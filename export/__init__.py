"""Export half (needs torch): ALBERT checkpoint -> ONNX model directory with parity proof."""
