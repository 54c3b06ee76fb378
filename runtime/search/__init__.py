"""Search over an output: read it back in bounded memory (`stored`), score and keep the
best (`search`)."""
