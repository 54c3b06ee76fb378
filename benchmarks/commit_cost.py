"""What the commit's exact duplicate-id count costs, per million ids: the serial tail of a
job of any size (the Ray executor runs it as one task once the workers are done).

    python benchmarks/commit_cost.py [--ids 1000000] [--dimension 384]

Part files are written as the job writes them (`part_schema`, `PARQUET_OPTIONS`, row groups
of 4,096 rows, parts of 65,536 rows) with random vectors, once with integer ids and once
with string ids (`doc-N`, a tenth of them repeated); then, for each, the duplicate count over
the id columns (`Parts.ids`, what the commit reads) and, for comparison, over whole row
groups (ids and vectors, what it read before issue 18). Seconds, ids/s, and the answer
checked against the known number of duplicates.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from machine import cpu_description

from albert_onnx.runtime.io.formats import PARQUET_OPTIONS
from albert_onnx.runtime.io.storage import locate
from albert_onnx.runtime.jobs.part import part_schema, read_column, read_part, vector_column
from albert_onnx.runtime.stats import count_duplicates

PART_ROWS, GROUP_ROWS = 65_536, 4_096


def write_parts(directory: Path, ids: list, dimension: int) -> list[Path]:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    schema = part_schema("int" if isinstance(ids[0], int) else "str", "float32", dimension, False)
    paths = []
    for number, start in enumerate(range(0, len(ids), PART_ROWS)):
        path = directory / f"part-{number:06d}.parquet"
        with pq.ParquetWriter(path, schema, **PARQUET_OPTIONS) as writer:
            for group in range(start, min(start + PART_ROWS, len(ids)), GROUP_ROWS):
                chunk = ids[group : min(group + GROUP_ROWS, start + PART_ROWS, len(ids))]
                vectors = rng.standard_normal((len(chunk), dimension), dtype=np.float32)
                writer.write_table(pa.table({"id": chunk,
                                             "vector": vector_column(vectors, "float32", False)},
                                            schema=schema))  # fmt: skip
        paths.append(path)
    return paths


def timed(chunks) -> tuple[float, int]:
    start = time.perf_counter()
    found = count_duplicates(chunks)
    return time.perf_counter() - start, found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="commit-cost-"))
    repeated = args.ids // 10
    kinds = {
        "integer ids": list(range(args.ids - repeated)) + list(range(repeated)),
        "string ids": [f"doc-{i}" for i in range(args.ids - repeated)]
        + [f"doc-{i}" for i in range(repeated)],
    }
    rows = []
    for name, ids in kinds.items():
        paths = write_parts(work / name.split()[0], ids, args.dimension)
        locations = [locate(str(p)) for p in paths]
        id_columns = timed(chunk for loc in locations for chunk in read_column(loc, "id"))
        whole = timed(ids for loc in locations for ids, _, _ in read_part(loc, args.dimension))
        assert id_columns[1] == whole[1] == repeated, (id_columns, whole)
        rows.append({"ids": name, "parts": len(paths), "id_columns_s": id_columns[0],
                     "whole_row_groups_s": whole[0]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "command": f"python benchmarks/commit_cost.py --ids {args.ids} --dimension "
        f"{args.dimension}",
        "machine": cpu_description(),
        "versions": {d: metadata.version(d) for d in ("numpy", "pyarrow")},
        "ids": args.ids,
        "duplicates": repeated,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "commit_cost.json").write_text(json.dumps(report, indent=2) + "\n")
    machine = report["machine"]
    lines = [
        f"# The commit's duplicate count ({machine['cpu']}, {machine['threads']} threads, flags "
        f"{' '.join(machine['flags'])})",
        "",
        f"Command: `{report['command']}`  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}  ",
        f"{args.ids:,} ids in parts of {PART_ROWS:,} rows, {repeated:,} of them duplicates "
        "(found exactly by every run)",
        "",
        "| ids | id columns only: s | M ids/s | whole row groups: s | M ids/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['ids']} | {r['id_columns_s']:.2f} | {args.ids / r['id_columns_s'] / 1e6:.2f} "
            f"| {r['whole_row_groups_s']:.2f} | {args.ids / r['whole_row_groups_s'] / 1e6:.2f} |"
        )
    (args.out / "commit_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
