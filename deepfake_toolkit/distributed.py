"""The same classification on a Ray cluster (Ray Data), for folders past one machine.

Two actor pools, built from the toolkit's own pieces, stream into each other with Ray Data's
backpressure:

1. *Crop* actors (CPU): read and decode each file (:func:`~deepfake_toolkit.images.load_image`),
   find and crop the face (:class:`~deepfake_toolkit.faces.FaceCropper`) and transform the
   regions for every model, exactly as the local engine's decoding workers do. A file that
   cannot be read becomes an ``error`` row here; it never fails the dataset.
2. *Model* actors (a GPU each when the cluster has GPUs, else CPU): each loads the models once
   and scores the regions with :meth:`~deepfake_toolkit.models.Detector.predict`, turning them
   into the rows of :data:`~deepfake_toolkit.results.COLUMNS`.

The crop actors run the local engine's own per-file code (``pipeline._FileDataset``) and the
model actors its own scoring (``pipeline._score_batch``), so both engines give the same rows by
construction, errors included. The weights are loaded (and checked) once by the caller and
travel to the actors through Ray's object store, so worker machines need the toolkit installed
but not the weight files.

Ray is an optional extra (``pip install "deepfake-toolkit[ray]"``); only this module imports it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .faces import Face, FaceCropper, NoFacePolicy
from .images import DEFAULT_MAX_PIXELS, path_text
from .models import Detector
from .models.loading import build_loaded, set_precision
from .output import ResultFile, check_writable, open_result_file
from .pipeline import (
    ClassificationInterrupted,
    ModelArg,
    _FileDataset,
    _Item,
    _progress_bar,
    _score_batch,
    load_detectors,
    settle_worker_memory,
    shared_transforms,
)
from .results import COLUMNS, FLOAT_COLUMNS, TEXT_COLUMNS, arrow_schema, empty_results, \
    escape_cell, restore_types, results_frame, unescape_cell
from .scoring import FaceSettings, Scoring, run_policies

RAY_INSTALL_HINT = 'pip install "deepfake-toolkit[ray]"'
"""What to run when Ray is missing."""

MAX_ACTOR_RESTARTS = 3
"""How often a crashed actor is restarted (and its batch retried) before the run fails. Bounded,
so that a file that kills its actor every time stops the run with an error instead of looping."""


class RayEngineError(RuntimeError):
    """Ray is missing, or the cluster cannot be reached or used; the message says what to do."""


def import_ray():
    """Import Ray with usage statistics off.

    Raises:
        RayEngineError: Ray is not installed (the message says how to install it).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayEngineError(f"the Ray engine needs Ray ({exc}): {RAY_INSTALL_HINT}") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, **init_options: Any) -> Iterator[Any]:
    """Use the Ray this process is connected to, or connect (or start a local one) for the block.

    An already initialised Ray (``ray.init`` called earlier, e.g. by a notebook or a test) is used
    as it is, whatever ``address`` says, and left running. Otherwise ``ray.init(address)``
    connects to a cluster ("auto", a head node's "host:6379", "ray://host:10001" with the
    ``ray[client]`` extra) or, with None and no ``RAY_ADDRESS``, starts a local one without the
    dashboard; it is shut down when the block ends, also on an error or Ctrl+C, so no Ray process
    of this run is left behind (a cluster it only connected to keeps running).

    Yields:
        The ``ray`` module.

    Raises:
        RayEngineError: Ray is missing or the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options = {"include_dashboard": False, "log_to_driver": False, **init_options}
    interrupt_handler = signal.getsignal(signal.SIGINT)
    pressed = _defer_ctrl_c()
    try:
        ray.init(address=address, **options)
    except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception on a slow start too
        ray.shutdown()
        _end_half_started_ray()
        where = f"at {address}" if address else "locally"
        raise RayEngineError(
            f"could not start or reach a Ray cluster {where}: {exc}. Start one with "
            "'ray start --head' and pass --ray-address auto, leave the address out to start a "
            "local one, or for ray:// addresses pip install \"ray[client]\"") from None
    finally:
        _reinstall(interrupt_handler)
    try:
        if pressed.is_set():
            # Ctrl+C while Ray started: it counts once Ray is up, and ends it as any Ctrl+C does.
            raise KeyboardInterrupt
        yield ray
    finally:
        _stop_dataset_executors()
        ray.shutdown()
        _reinstall(interrupt_handler)


def _defer_ctrl_c() -> threading.Event:
    """Hold a Ctrl+C back until :func:`_reinstall`: set the event returned instead of raising.

    A KeyboardInterrupt inside ``ray.init`` can stop it halfway through building its core worker,
    and the process then crashes at exit (a segmentation fault) instead of ending as a Ctrl+C.
    """
    pressed = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: pressed.set())
    return pressed


def _reinstall(interrupt_handler) -> None:
    """Give Ctrl+C back to Python: Ray's core worker takes SIGINT over below Python's signal
    module (``signal.getsignal`` does not show it), so a KeyboardInterrupt would never come."""
    if threading.current_thread() is threading.main_thread() and interrupt_handler is not None:
        signal.signal(signal.SIGINT, interrupt_handler)


def _stop_dataset_executors(timeout: float = 60.0) -> None:
    """Stop Ray Data's executors in this process and wait for their threads, before Ray shuts
    down. A Ctrl+C while the actors start can leave an executor's scheduling thread running past
    Ray Data's own 2 s wait; the thread then calls into the stopped core worker, and the whole
    process exits (status 1, or a segmentation fault) before the rows are written."""
    for thread in threading.enumerate():
        # Ray Data's StreamingExecutor is its scheduling thread (internal: found by name).
        if type(thread).__name__ != "StreamingExecutor" or thread is threading.current_thread():
            continue
        shutdown = getattr(thread, "shutdown", None)
        if callable(shutdown):
            try:
                shutdown(force=True)
            except Exception:  # noqa: BLE001 - the run is ending; Ray's shutdown follows
                pass
        thread.join(timeout)


def _end_half_started_ray() -> None:
    """End the Ray processes a failed ``ray.init`` of this process left (its own children only):
    when the start times out (on an overloaded machine the raylet can take over Ray's fixed 30 s
    to register), ``ray.shutdown()`` does not know them."""
    import psutil  # Ray ships it

    def is_ray(process) -> bool:
        name = process.name()
        command = " ".join(process.cmdline())
        return name in ("raylet", "gcs_server") or name.startswith("ray::") or \
            f"{os.sep}ray{os.sep}" in command

    ended = []
    for child in psutil.Process().children(recursive=True):
        try:
            if is_ray(child):
                child.kill()
                ended.append(child)
        except psutil.Error:
            continue
    psutil.wait_procs(ended, timeout=10)


@dataclass(frozen=True)
class ActorPlan:
    """How many actors each stage gets and what each reserves.

    Attributes:
        crop_actors: CPU actors that decode and crop.
        crop_cpus: CPUs each crop actor reserves.
        model_actors: Actors that hold the models.
        model_cpus: CPUs each model actor reserves.
        model_gpus: GPUs each model actor reserves (1 on GPU clusters, else 0).
    """

    crop_actors: int
    crop_cpus: float
    model_actors: int
    model_cpus: float
    model_gpus: float


def plan_actors(cluster_cpus: float, cluster_gpus: float = 0.0, use_gpu: bool = False,
                crop_actors: int | None = None, model_actors: int | None = None) -> ActorPlan:
    """Size the two actor pools so that they can never reserve every CPU.

    One CPU (all of it on a 1-CPU cluster) stays unreserved for Ray Data's own tasks (reading a
    Parquet file of paths, splitting blocks): a pool of 1-CPU actors on a 2-CPU cluster starved
    them and hung. Each actor runs one torch thread, so a fraction of a CPU reserved is what it
    uses when the pools share a small machine.

    Args:
        cluster_cpus: CPUs in the cluster.
        cluster_gpus: GPUs in the cluster.
        use_gpu: Put each model actor on a GPU of its own.
        crop_actors: Crop actors wanted; None: the CPUs left after the model actors.
        model_actors: Model actors wanted; None: one per GPU, or on CPUs one per three CPUs
            reserved (at least one).
    """
    budget = max(0.0, cluster_cpus - 1.0)
    if use_gpu and cluster_gpus < 1:
        raise RayEngineError("the models were asked to run on CUDA but the Ray cluster has no "
                             "GPU; use device 'auto' or 'cpu'")
    if model_actors is None:
        model_actors = int(cluster_gpus) if use_gpu else max(1, int(budget // 3))
    if crop_actors is None:
        crop_actors = max(1, int(budget) - (0 if use_gpu else model_actors))
    if crop_actors < 1 or model_actors < 1:
        raise ValueError("the Ray engine needs at least one crop actor and one model actor")
    share = min(1.0, budget / (crop_actors + model_actors))
    return ActorPlan(crop_actors=crop_actors, crop_cpus=share, model_actors=model_actors,
                     model_cpus=share, model_gpus=1.0 if use_gpu else 0.0)


class _CropStage:
    """Ray Data stage (a callable class: one per actor): paths to decoded, cropped and
    transformed regions, one row per file."""

    def __init__(self, transforms: list, region: Scoring, max_pixels: int,
                 perturb: Callable[[Image.Image], Image.Image] | None,
                 provenance: bool = True) -> None:
        # Several actors share each machine's cores: more threads each only oversubscribe them.
        torch.set_num_threads(1)
        settle_worker_memory()
        self.transforms = transforms
        self.cropper = FaceCropper(region.face, device="cpu") if region.face_crop else None
        self.no_face = region.no_face
        self.max_pixels = max_pixels
        self.perturb = perturb
        self.provenance = provenance

    def __call__(self, batch: dict[str, np.ndarray]):
        # Paths travel in escape_cell form: Arrow text cannot hold bytes that are not UTF-8.
        paths = [unescape_cell(str(p)) for p in batch["path"]]
        # path_text: pathlib's form of each path without a Path per file (pathlib interns every
        # file name it parses, in a table that never shrinks).
        files = _FileDataset([path_text(p) for p in paths], self.transforms, self.cropper,
                             detect_here=True, no_face=self.no_face, max_pixels=self.max_pixels,
                             perturb=self.perturb, provenance=self.provenance)
        items = []
        for index, path in enumerate(paths):
            try:
                item = files[index]
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
                item = _Item(path=path, error=f"unexpected error while preparing: "
                                              f"{type(exc).__name__}: {exc}")
            item.path = path  # as given (a URI-like string would not survive pathlib's form)
            items.append(item)
        return _items_to_columns(items, len(self.transforms))


class _ScoreStage:
    """Ray Data stage (a callable class: one per actor): prepared files to result rows."""

    def __init__(self, models: list, device: str, policies: list[Scoring],
                 batch_size: int) -> None:
        ray = import_ray()
        torch.set_num_threads(1)
        resolved = torch.device(device)
        # ``models`` holds one object reference, wrapped so that Ray does not resolve it early.
        self.detectors = [_rebuild_detector(spec, state, path, resolved, precision)
                          for spec, state, path, precision in ray.get(models[0])]
        self.policies = policies
        self.transform_index = shared_transforms(self.detectors)[1]
        self.batch_size = batch_size

    def __call__(self, batch):
        import pyarrow as pa

        items = _items_from_columns(batch)
        rows = _score_batch(items, self.detectors, self.transform_index, self.policies,
                            self.batch_size)
        for row in rows:
            # Columns a run fills later (the stability check) are absent here: empty.
            for column in TEXT_COLUMNS:
                row[column] = escape_cell(row.get(column) or "")
            for column in FLOAT_COLUMNS:
                value = row.get(column)
                row[column] = None if value is None or math.isnan(value) else value
        return pa.Table.from_pylist(rows, schema=arrow_schema())


def _rebuild_detector(spec, state: dict[str, torch.Tensor], weights_path: Path,
                      device: torch.device, precision: str) -> Detector:
    """The driver's detector in an actor, computing in the precision the driver's run records
    (whatever this worker's hardware would pick), so that every row is scored alike."""
    module = build_loaded(spec.build, state, f"{weights_path} for model '{spec.name}'")
    module.to(device, memory_format=spec.memory_format).eval()
    return Detector(spec=spec, module=module, device=device, weights_path=weights_path,
                    precision=set_precision(module, precision))


def _items_to_columns(items: list[_Item], n_transforms: int):
    """Prepared files as an Arrow table: the facts as JSON, each transform's regions as one
    ``.npy`` blob (exact float32, any number of regions)."""
    import pyarrow as pa

    columns: dict[str, list] = {"item": []}
    for t in range(n_transforms):
        columns[f"regions_{t}"] = []
    for item in items:
        faces = item.faces or []
        columns["item"].append(json.dumps({
            "path": item.path, "width": item.width, "height": item.height, "error": item.error,
            "file_size": item.file_size, "file_mtime": item.file_mtime,
            "region": item.region, "faces": [[*face.box, face.prob] for face in faces],
            "scored": [faces.index(face) if face is not None else -1
                       for face in item.scored_faces],
            "provenance": item.provenance,
        }))
        for t in range(n_transforms):
            blob = io.BytesIO()
            if item.tensors:
                np.save(blob, item.tensors[t].numpy(), allow_pickle=False)
            columns[f"regions_{t}"].append(blob.getvalue())
    return pa.table({name: pa.array(values, pa.string() if name == "item" else pa.binary())
                     for name, values in columns.items()})


def _items_from_columns(batch) -> list[_Item]:
    names = [name for name in batch.column_names if name.startswith("regions_")]
    regions = {name: batch.column(name).to_pylist() for name in names}
    n_transforms = len(names)
    items = []
    for index, text in enumerate(batch.column("item").to_pylist()):
        facts = json.loads(text)
        faces = [Face(box=tuple(values[:4]), prob=values[4]) for values in facts["faces"]]
        tensors = []
        for t in range(n_transforms):
            blob = regions[f"regions_{t}"][index]
            tensors.append(torch.from_numpy(np.load(io.BytesIO(blob), allow_pickle=False))
                           if len(blob) else torch.empty(0))
        items.append(_Item(
            path=facts["path"], width=facts["width"], height=facts["height"],
            file_size=facts["file_size"], file_mtime=facts["file_mtime"], error=facts["error"],
            faces=faces, region=facts["region"],
            scored_faces=[faces[i] if i >= 0 else None for i in facts["scored"]],
            tensors=tensors, provenance=facts["provenance"]))
    return items


def classify_dataset(
    dataset,
    model: ModelArg = "default",
    face_crop: bool | None = None,
    *,
    no_face: NoFacePolicy | None = None,
    face_config: FaceSettings | None = None,
    threshold: float | None = None,
    bands: bool | None = None,
    batch_size: int = 32,
    device: str = "auto",
    weights_dir: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    perturb: Callable[[Image.Image], Image.Image] | None = None,
    provenance: bool = True,
    path_column: str = "path",
    crop_actors: int | None = None,
    model_actors: int | None = None,
):
    """Score the image files a Ray dataset names; a dataset of result rows, for your pipelines.

    Ray must be initialised first (``ray.init(...)``; :func:`ray_session` does it).

    Args:
        dataset: A ``ray.data.Dataset`` with a column of image paths that every Ray worker can
            read (a shared or mounted file system), e.g. ``ray.data.from_items([{"path": p}
            ...])`` or ``ray.data.read_parquet("paths.parquet")``. Other columns are dropped.
        model: A registry name, a loaded :class:`~deepfake_toolkit.models.Detector`, or a list
            of them (one row per file and model). Loaded here once; the weights travel to the
            actors through the object store.
        face_crop, no_face, face_config, threshold, bands: Overrides of each model's own
            scoring policy (None keeps it), as for
            :func:`~deepfake_toolkit.pipeline.classify_files`.
        batch_size: Files per batch in both stages (and images per inference batch).
        device: "auto" (a GPU per model actor when the cluster has GPUs), "cuda" or "cpu".
        weights_dir: Folder searched first for weight files (on this machine).
        max_pixels: Refuse images larger than this (decompression-bomb guard).
        perturb: Applied to every decoded image before face detection; must be picklable.
        provenance: Read each file's C2PA manifest and metadata into the provenance columns
            (see :mod:`deepfake_toolkit.provenance`).
        path_column: The column holding the paths.
        crop_actors: Crop (CPU) actors; None sizes them from the cluster (:func:`plan_actors`).
        model_actors: Model actors; None: one per GPU, or on CPU clusters about one per three
            CPUs.

    Returns:
        A lazy ``ray.data.Dataset`` with the columns of :data:`~deepfake_toolkit.results.COLUMNS`
        (``face_box`` a list of 4 floats or null); rows come in no particular order. Write it
        with ``.write_parquet(...)``, or bring it home with ``.to_pandas()`` and
        :func:`~deepfake_toolkit.results.restore_types`.

    Example:
        >>> import ray                                                      # doctest: +SKIP
        >>> ray.init(address="auto")                                        # doctest: +SKIP
        >>> paths = ray.data.read_parquet("s3-mount/case-42/paths.parquet") # doctest: +SKIP
        >>> classify_dataset(paths, "default").write_parquet("scores/")      # doctest: +SKIP
    """
    # Loaded here: unknown models and missing or mismatched weights fail now, with their own
    # messages, before any actor starts.
    detectors = load_detectors(model, weights_dir, "cpu")
    policies = run_policies([(d.name, d.scoring) for d in detectors], face_crop=face_crop,
                            face_config=face_config, no_face=no_face, threshold=threshold,
                            bands=bands)
    return _score_dataset(dataset, detectors, policies, batch_size=batch_size, device=device,
                          max_pixels=max_pixels, perturb=perturb, provenance=provenance,
                          path_column=path_column, crop_actors=crop_actors,
                          model_actors=model_actors)


def _score_dataset(dataset, detectors: list[Detector], policies: list[Scoring], *,
                   batch_size: int = 32, device: str = "auto",
                   max_pixels: int = DEFAULT_MAX_PIXELS,
                   perturb: Callable[[Image.Image], Image.Image] | None = None,
                   provenance: bool = True, path_column: str = "path",
                   crop_actors: int | None = None, model_actors: int | None = None):
    """:func:`classify_dataset` with the models loaded and their policies resolved."""
    ray = import_ray()
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda on the Ray engine, not {device!r}")
    if not ray.is_initialized():
        raise RayEngineError("Ray is not initialised: call ray.init(...) first, or use "
                             "classify_directory(..., engine='ray')")
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0.0))
    use_gpu = device == "cuda" or (device == "auto" and gpus >= 1)
    plan = plan_actors(float(resources.get("CPU", 1.0)), gpus, use_gpu, crop_actors,
                       model_actors)
    transforms = shared_transforms(detectors)[0]
    payload = ray.put([(d.spec, {k: v.detach().cpu() for k, v in d.module.state_dict().items()},
                        d.weights_path, d.precision) for d in detectors])

    paths = dataset.select_columns([path_column])
    if path_column != "path":
        paths = paths.rename_columns({path_column: "path"})
    # A listing often arrives as one big block (one Parquet file): cut it into batches that
    # every crop actor can take, streaming.
    paths = paths.repartition(target_num_rows_per_block=batch_size)
    with warnings.catch_warnings():
        # Ray 2.60 offers no named parameter for actor restarts yet; its generic remote
        # arguments still work but warn that they will go (the extra pins Ray below 2.64).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        return _two_stages(ray, paths, plan, transforms, payload, use_gpu, policies=policies,
                           max_pixels=max_pixels, perturb=perturb, provenance=provenance,
                           batch_size=batch_size)


def _two_stages(ray, paths, plan: ActorPlan, transforms: list, payload, use_gpu: bool, *,
                policies: list[Scoring], max_pixels: int,
                perturb: Callable[[Image.Image], Image.Image] | None, provenance: bool,
                batch_size: int):
    """The crop actors streaming into the model actors."""
    retries = {"max_restarts": MAX_ACTOR_RESTARTS, "max_task_retries": MAX_ACTOR_RESTARTS}
    prepared = paths.map_batches(
        _CropStage, batch_size=batch_size, batch_format="numpy",
        fn_constructor_kwargs=dict(transforms=transforms, region=policies[0],
                                   max_pixels=max_pixels, perturb=perturb,
                                   provenance=provenance),
        compute=ray.data.ActorPoolStrategy(size=plan.crop_actors), num_cpus=plan.crop_cpus,
        **retries)
    return prepared.map_batches(
        _ScoreStage, batch_size=batch_size, batch_format="pyarrow",
        fn_constructor_kwargs=dict(models=[payload], device="cuda" if use_gpu else "cpu",
                                   policies=policies, batch_size=batch_size),
        compute=ray.data.ActorPoolStrategy(size=plan.model_actors), num_cpus=plan.model_cpus,
        num_gpus=plan.model_gpus, **retries)


def classify_files_on_ray(
    files: Sequence[str | os.PathLike[str]],
    model: ModelArg = "default",
    face_crop: bool | None = None,
    *,
    ray_address: str | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    device: str = "auto",
    output_csv: str | os.PathLike[str] | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_batch: Callable[[pd.DataFrame], None] | None = None,
    resume: bool = False,
    **options: Any,
) -> pd.DataFrame:
    """:func:`~deepfake_toolkit.pipeline.classify_files` on Ray: the same rows, in the same order.

    Called by ``classify_files(..., engine="ray")``; ``num_workers`` sets the crop actors and
    ``ray_address`` the cluster (see :func:`ray_session`). Rows stream back as they are scored
    (``on_batch``, the progress bar, ``stop``) and are put into the local engine's order at the
    end; on Ctrl+C the rows so far are written and
    :class:`~deepfake_toolkit.pipeline.ClassificationInterrupted` is raised, as locally.
    ``attrs["ray_start_seconds"]`` holds the time taken to start or reach Ray, which
    ``seconds`` and ``images_per_second`` leave out. The output streams and resumes as
    locally (see :class:`~deepfake_toolkit.output.ResultFile`): rows reach the partial in the
    order they arrive, and the finished output holds them in the local engine's order.
    """
    paths = [path_text(f) for f in files]
    if output_csv is not None:
        check_writable(output_csv)
    detectors = load_detectors(model, options.pop("weights_dir", None), "cpu")
    # Resolved once: the run record and the actors use the same policies.
    policies = run_policies([(d.name, d.scoring) for d in detectors], face_crop=face_crop,
                            **{key: options.pop(key, None)
                               for key in ("face_config", "no_face", "threshold", "bands")})
    output = open_result_file(output_csv, detectors, policies, paths,
                              max_pixels=options.get("max_pixels", DEFAULT_MAX_PIXELS),
                              provenance=options.get("provenance", True), resume=resume)
    if output is not None:
        paths = output.remaining
    try:
        return _classify_on_ray(paths, detectors, policies, output, ray_address=ray_address,
                                batch_size=batch_size, num_workers=num_workers, device=device,
                                progress=progress, stop=stop, on_batch=on_batch, **options)
    except BaseException as exc:
        if output is not None and not isinstance(exc, ClassificationInterrupted):
            output.close()  # the partial stays, for resume=True
        raise


def _classify_on_ray(paths: list[str], detectors: list[Detector], policies: list[Scoring],
                     output: ResultFile | None, *, ray_address: str | None, batch_size: int,
                     num_workers: int | None, device: str, progress: bool,
                     stop: threading.Event | None,
                     on_batch: Callable[[pd.DataFrame], None] | None,
                     **options: Any) -> pd.DataFrame:
    kept = output.kept if output is not None else empty_results()
    if not paths:
        frame = kept
        frame.attrs.update(seconds=0.0, stopped=False, images_per_second=math.nan)
        if output is not None:
            output.finish(frame)
        return frame
    if num_workers is not None and num_workers < 1:
        num_workers = None

    started_ray = time.perf_counter()
    parts: list[pd.DataFrame] = []
    stopped = interrupted = False
    with ray_session(ray_address) as ray:
        context = ray.data.DataContext.get_current()
        bars = context.enable_progress_bars
        context.enable_progress_bars = False  # the toolkit's own bar counts files instead
        ray_seconds = time.perf_counter() - started_ray
        started = time.perf_counter()
        bar = _progress_bar(len(paths), detectors, progress)
        try:
            listing = ray.data.from_items(
                [{"path": escape_cell(p)} for p in paths],
                override_num_blocks=max(1, math.ceil(len(paths) / batch_size)))
            results = _score_dataset(listing, detectors, policies, batch_size=batch_size,
                                     device=device, crop_actors=num_workers, **options)
            for batch in _interruptible(results.iter_batches(batch_size=None,
                                                             batch_format="pandas")):
                part = restore_types(batch)
                parts.append(part)
                if output is not None:
                    output.append(part)
                bar.update(len(part) // len(detectors))
                if on_batch is not None:
                    on_batch(part)
                if stop is not None and stop.is_set():
                    stopped = True
                    break
        except KeyboardInterrupt:
            # As the local engine: keep (and write) the rows scored so far, then re-raise.
            stopped = interrupted = True
        finally:
            bar.close()
            context.enable_progress_bars = bars
    seconds = time.perf_counter() - started
    scored = _in_local_order(parts, paths, [d.name for d in detectors], batch_size)
    frame = pd.concat([kept, scored], ignore_index=True) if len(kept) else scored
    frame.attrs.update(seconds=seconds, stopped=stopped, ray_start_seconds=ray_seconds,
                       images_per_second=len(scored) / len(detectors) / seconds)
    if output is not None:
        output.finish(frame, rewrite=True)
    if interrupted:
        raise ClassificationInterrupted(frame)
    return frame


def _interruptible(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``batches``, ending in KeyboardInterrupt after Ctrl+C even when Ray's own code caught the
    first KeyboardInterrupt (seen: a Ctrl+C while Ray Data waits for a batch can be lost)."""
    if threading.current_thread() is not threading.main_thread():
        yield from batches
        return
    pressed = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(signum, frame) -> None:
        pressed.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        for batch in batches:
            if pressed.is_set():
                raise KeyboardInterrupt
            yield batch
        if pressed.is_set():
            raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)


def _in_local_order(parts: list[pd.DataFrame], paths: list[str], models: list[str],
                    batch_size: int) -> pd.DataFrame:
    """The rows in the order the local engine gives them: per batch of files, per model, per
    file."""
    if not parts:
        return empty_results()
    frame = pd.concat(parts, ignore_index=True)[list(COLUMNS)]
    file_order = {path: index for index, path in enumerate(paths)}
    model_order = {name: index for index, name in enumerate(models)}
    position = frame["path"].map(file_order)
    key = pd.DataFrame({"batch": position // batch_size, "model": frame["model"].map(model_order),
                        "file": position})
    order = key.sort_values(["batch", "model", "file"], kind="stable").index
    return results_frame(frame.loc[order].to_dict("records"))
