"""Inputs and outputs: where they live (`storage`: local paths and pyarrow.fs URLs), which
files a job reads (`inputs`), how each format is read (`lines`, `tabular`, `records`), the
single-file output formats (`formats`), and files written whole (`files`, `output_lock`)."""
