"""A model directory and its manifest: what there is, checked against its hashes."""
