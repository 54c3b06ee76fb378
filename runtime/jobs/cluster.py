"""What every Ray run of albert-onnx needs, whatever it runs: Ray itself (an extra), a
connection (a cluster's address, RAY_ADDRESS, or a local instance), workers that the nodes
can hold, and the model on every node without a shared filesystem.

The model directory travels through the object store: the first worker on a node writes it
to a directory of its user's that no one else can write (`$TMPDIR/albert-onnx-UID/`, named
by the manifest's sha256), the others reuse it, and each checks every sha256 against the
manifest before use, writing the copy again if it was damaged.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from albert_onnx.errors import ManifestError, OptionError
from albert_onnx.runtime.model.manifest import MANIFEST_NAME
from albert_onnx.runtime.model.model_dir import ModelDir

T = TypeVar("T")
RETRIES = 3  # times a part is run again after its worker died, before the job fails


def ray_module():
    """Ray, or one sentence saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise OptionError("--ray needs Ray: pip install 'albert-onnx[cpu,ray]'") from exc
    return ray


@dataclass(frozen=True)
class WorkerModel:
    """What a worker needs to build its pipeline: the model's files, and their identity."""

    files: dict[str, bytes]
    key: str  # the manifest's sha256: one copy per node per model, whatever the restarts


def worker_model(model: ModelDir) -> WorkerModel:
    """The model directory's files, after the graphs and the tokenizer were checked against
    the manifest here (each worker checks them again)."""
    for precision in model.manifest.variants:
        model.graph(precision)
    model.tokenizer()
    files = {p.name: p.read_bytes() for p in sorted(model.directory.iterdir()) if p.is_file()}
    return WorkerModel(files, hashlib.sha256(files[MANIFEST_NAME]).hexdigest()[:32])


def materialize(model: WorkerModel, *, rebuild: bool = False) -> Path:
    """The model as a directory on this node, shared by this user's workers: written by the
    first (under a lock, renamed into place), reused while it holds exactly the files sent,
    and replaced when REBUILD finds it damaged (a /tmp cleaner). Where no private shared
    directory can be had, a fresh one of this worker's own."""
    home = private_home()
    if home is None:
        return write_copy(model, Path(tempfile.mkdtemp(prefix="albert-onnx-model-")))
    target = home / f"model-{model.key}"
    with open(home / f".model-{model.key}.lock", "ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed, or when the worker dies
        manifest = target / MANIFEST_NAME
        current = manifest.is_file() and manifest.read_bytes() == model.files[MANIFEST_NAME]
        if current and rebuild:  # another worker may have replaced it while this one waited
            current = all(
                (target / name).is_file() and (target / name).read_bytes() == data
                for name, data in model.files.items()
            )
        if not current:
            staging = write_copy(model, Path(tempfile.mkdtemp(prefix=".staging-", dir=home)))
            if target.exists():  # aside first: the target path is never half-written
                aside = Path(tempfile.mkdtemp(prefix=".damaged-", dir=home))
                os.replace(target, aside / "model")
                shutil.rmtree(aside, ignore_errors=True)
            os.replace(staging, target)
    return target


def on_this_node(model: WorkerModel, build: Callable[[Path], T]) -> T:
    """BUILD (a pipeline, which checks every sha256 against the manifest) over the model's
    copy on this node; over a fresh copy if that one was damaged since it was written."""
    try:
        return build(materialize(model))
    except ManifestError:
        return build(materialize(model, rebuild=True))


def private_home() -> Path | None:
    """$TMPDIR/albert-onnx-UID, if it is a directory of this user's that no one else can
    write (a file system that ignores modes, or someone else's directory, is not)."""
    home = Path(tempfile.gettempdir()) / f"albert-onnx-{os.getuid()}"
    try:
        home.mkdir(mode=0o700, exist_ok=True)
        info = home.lstat()
    except OSError:  # a dangling link, a read-only TMPDIR
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    return home if private and not info.st_mode & 0o077 else None


def write_copy(model: WorkerModel, directory: Path) -> Path:
    for name, data in model.files.items():
        (directory / name).write_bytes(data)
    return directory


def connect(ray, address: str | None) -> bool:
    """Ray as the caller started it; else the cluster at ADDRESS, or at RAY_ADDRESS (which
    `ray job submit` sets for its entrypoint); else a new local instance. True when this
    started a local instance: its nodes are fixed, and it is this job's to shut down."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        raise OptionError(
            f"RAY_ADDRESS={address} is the address of Ray's Jobs API, which `ray job submit` "
            "takes; albert-onnx is a driver: send it there with `ray job submit -- albert-onnx "
            "embed ... --ray`, run it on a node of the cluster with --ray-address auto, or "
            "unset RAY_ADDRESS for a local Ray instance"
        )
    check_address(address)
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # fmt: skip
    except (ConnectionError, ValueError) as exc:  # ValueError: an address Ray cannot parse
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        cause = f" ({' '.join(str(exc.__cause__).split())})" if exc.__cause__ else ""
        hint = (
            ". A cluster whose `ray start` enabled token authentication needs "
            "RAY_AUTH_MODE=token and its token here too"
            if isinstance(exc, ConnectionError) and address else ""
        )  # fmt: skip
        raise OptionError(f"cannot connect to {where}: {exc}{cause}{hint}") from exc
    return address in (None, "local")


def check_address(address: str | None) -> None:
    if address is not None and address.startswith("ray://"):
        raise OptionError(  # Ray Client: ray-project/ray#48682, and Ray's own advice
            "albert-onnx does not run over Ray Client (ray://): its driver plans from the "
            "inputs it sees and schedules workers all job long, which Ray Client does not "
            "keep up (and embed_dataset's Ray Data needs a driver inside the cluster); run "
            "albert-onnx on a node of the cluster with --ray-address auto, or send it there "
            "with `ray job submit`"
        )


def worker_count(ray, provider: str, threads: int, workers: int | None, *, fixed: bool) -> int:
    """WORKERS, or as many as the Ray nodes hold now (each needs THREADS CPUs, and a GPU on
    CUDA). More than the nodes hold are refused where the nodes are FIXED (a local
    instance); on a cluster, where an autoscaler may add nodes, a warning says so, and the
    job runs on the workers that start."""

    def holds(resources: dict) -> int:
        by_cpu = int(resources.get("CPU", 0)) // threads
        return min(by_cpu, int(resources.get("GPU", 0))) if provider == "cuda" else by_cpu

    fits = sum(holds(node["Resources"]) for node in ray.nodes() if node["Alive"])
    wanted = workers or max(1, fits)
    if wanted > fits:
        each = f"{threads} CPUs{' and a GPU' if provider == 'cuda' else ''}"
        message = f"the Ray nodes hold {fits} worker(s) of {each}, not {wanted}"
        if fixed:
            raise OptionError(f"{message}: lower --workers or --threads-per-worker")
        warnings.warn(f"{message} now: the others start as nodes join", stacklevel=3)
    return wanted
