"""Batched classification of image files to a result table (see :mod:`deepfake_toolkit.results`).

Decoding and (on the CPU) face cropping run in DataLoader worker processes; inference runs in the
main process in batches under ``torch.inference_mode``. With several models, each image is decoded
and cropped once and scored by every model.
"""

from __future__ import annotations

import array
import contextlib
import gc
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .faces import Face, FaceCropper, NoFacePolicy
from .images import DEFAULT_MAX_PIXELS, ImageReadError, iter_images, load_image, path_text, \
    printable_path
from .models import Detector, load_model, resolve_device
from .models.transforms import ImageTransform
from .output import check_writable, open_result_file
from .provenance import empty_provenance, read_provenance
from .results import ResultColumns, empty_results, results_frame
from .scoring import FaceSettings, Scoring, run_policies

ModelArg = str | Detector | Sequence[str | Detector]
ENGINES: tuple[str, ...] = ("local", "ray")
"""Where classification runs: this machine, or a Ray cluster."""


@dataclass
class _Item:
    """One file after the worker stage: its decoded facts and the regions to score."""

    path: str
    width: int | None = None
    height: int | None = None
    file_size: int | None = None
    file_mtime: float | None = None
    error: str = ""
    image: Image.Image | None = None
    faces: list[Face] | None = None
    region: str = ""
    scored_faces: list[Face | None] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=empty_provenance)


class PackedPaths(Sequence[str]):
    """File paths packed into one byte string: ``packed[i]`` is ``str(paths[i])``, exactly.

    A forked decoding worker that reads a path from a list of strings writes to that string's
    reference count, which copies the memory page it sits on into the worker: over a run, every
    page of the list. On 100,000 files each worker grew by about 11 MB that way. Packed, the
    paths are one object that the workers only read, and each costs its UTF-8 bytes and an
    offset instead of a string object (about 60 bytes less). Surrogates (file names that are not
    UTF-8) pass through unchanged.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        # Packed one path at a time: a list of every path's bytes first would be as large again.
        blob, ends = bytearray(), array.array("q")
        for path in paths:
            blob += str(path).encode("utf-8", "surrogatepass")
            ends.append(len(blob))
        self._offsets = np.zeros(len(ends) + 1, dtype=np.int64)
        self._offsets[1:] = np.frombuffer(ends, dtype=np.int64)
        self._blob = bytes(blob)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError("path index out of range")
        index %= len(self)
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._blob[start:end].decode("utf-8", "surrogatepass")


class _FileDataset(Dataset):
    """Decodes files and, when ``cropper`` is set, finds faces and transforms the crops."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], transforms: list[ImageTransform],
                 cropper: FaceCropper | None, detect_here: bool, no_face: NoFacePolicy,
                 max_pixels: int, perturb: Callable[[Image.Image], Image.Image] | None,
                 provenance: bool = False) -> None:
        self.paths = paths if isinstance(paths, PackedPaths) else PackedPaths(paths)
        self.provenance = provenance
        self.perturb = perturb
        self.transforms = transforms
        self.cropper = cropper
        self.detect_here = detect_here
        self.no_face = no_face
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Item:
        item = _Item(path=self.paths[index])
        # Taken before reading, so that a file changed meanwhile looks changed to a resumed run.
        with contextlib.suppress(OSError, ValueError):  # ValueError: a NUL or lone surrogate
            info = os.stat(item.path)
            item.file_size, item.file_mtime = info.st_size, info.st_mtime
        try:
            image = load_image(item.path, max_pixels=self.max_pixels)
        except ImageReadError as exc:
            item.error = str(exc)
            return item
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
            _fail(item, "reading", exc)
            return item
        # Only files that decoded as an image are opened again for their metadata: a FIFO, a
        # device or a format the toolkit does not decode never reaches the metadata readers.
        if self.provenance:
            item.provenance = read_provenance(item.path)
        item.width, item.height = image.size
        stage = "perturbing the image"
        try:
            if self.perturb is not None:
                image = self.perturb(image).convert("RGB")
            if self.cropper is not None and not self.detect_here:
                item.image = image
                return item
            stage = "face detection"
            faces = self.cropper.detect([image])[0] if self.cropper is not None else None
            stage = "preparing the image for the model"
            prepare_regions(item, image, faces, self.cropper, self.no_face, self.transforms)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
            _fail(item, stage, exc)
        return item


def _fail(item: _Item, stage: str, error: BaseException) -> None:
    """Record that ``stage`` failed for ``item``: the file gets an error row, the run goes on."""
    item.error = f"{stage} failed ({type(error).__name__}: {printable_path(str(error))})"
    item.image, item.faces, item.region = None, None, ""
    item.scored_faces, item.tensors = [], []


def prepare_regions(item: _Item, image: Image.Image, faces: list[Face] | None,
                    cropper: FaceCropper | None, no_face: NoFacePolicy,
                    transforms: list[ImageTransform]) -> None:
    """Decide what of ``image`` is scored and transform it for every model."""
    item.faces = faces
    if cropper is None:
        item.region, item.scored_faces, regions = "image", [None], [image]
    elif faces:
        item.region = "face"
        item.scored_faces = list(cropper.faces_to_score(faces))
        regions = [cropper.crop(image, face) for face in item.scored_faces]
    elif no_face == "whole":
        item.region, item.scored_faces, regions = "image", [None], [image]
    else:
        item.region, item.scored_faces, regions = "", [], []
    item.tensors = [torch.stack([t(r) for r in regions]) if regions else torch.empty(0)
                    for t in transforms]
    item.image = None


def _keep_item(item: _Item) -> _Item:
    return item


class ClassificationInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped :func:`classify_files`; ``frame`` holds the rows scored before it (already
    written to ``output_csv`` when one was given)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        super().__init__(f"interrupted after {len(frame)} rows")
        self.frame = frame


WORKER_MMAP_THRESHOLD = 1 << 20
"""Bytes from which a decoding worker's allocations get their own memory map (see
:func:`settle_worker_memory`)."""


def settle_worker_memory() -> None:
    """Keep a decoding process's memory flat under glibc's allocator.

    glibc raises its threshold for giving an allocation its own memory map each time such a map
    is freed, so the decoded images and face-detection tensors of a long run end up in heaps
    that fragment and are not returned: on 400 photos with face crop (Python API, no tcmalloc)
    each worker grew from 550 to 850 MB. A fixed threshold of 1 MiB kept them at 540 MB (the
    run's summed PSS peak 1,908 MiB instead of 2,722 MiB; the same speed within the noise of a
    paired timing). Nothing changes where another allocator (tcmalloc) is preloaded or the C
    library is not glibc.
    """
    mallopt = _glibc_function("mallopt")
    if mallopt is not None:
        m_mmap_threshold = -3  # from glibc's malloc.h
        mallopt(m_mmap_threshold, WORKER_MMAP_THRESHOLD)


def release_free_memory() -> None:
    """Give the memory that glibc's allocator holds free back to the system, before forking.

    Free memory that stays mapped is shared with the forked workers, and when this process
    reuses it, each page written is copied (the workers keep the old one): on 100,000 files the
    freed list of paths left about 5 MB so. Nothing happens under another allocator.
    """
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def _glibc_function(name: str):
    """A function of glibc's allocator, or None where another allocator is preloaded or the C
    library is not glibc."""
    import ctypes
    import ctypes.util

    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def frozen_for_workers(workers: int) -> Iterator[None]:
    """Keep the Python objects that exist now out of the garbage collector's passes while
    decoding workers run.

    A forked worker shares the main process's memory until it writes to it, and a full pass of
    the collector writes to every object it visits: in a worker, it copies the pages of every
    object the main process had (in a 100,000-file run, each worker's private memory jumped by
    100 MB at once, half-way through). ``gc.freeze()`` moves those objects to a generation that
    no pass visits, in the main process and in the workers forked from it; they go back to the
    oldest generation when the block ends. Objects made meanwhile are collected as usual.
    """
    if not workers or gc.get_freeze_count():
        yield  # nothing forked, or a caller (or an enclosing run) froze them already
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _worker_init(_: int) -> None:
    # Workers share the machine's cores with inference: one thread each avoids oversubscription.
    torch.set_num_threads(1)
    settle_worker_memory()


def load_detectors(model: ModelArg = "default",
                   weights_dir: str | os.PathLike[str] | None = None,
                   device: str | torch.device = "auto") -> list[Detector]:
    """Load each named model once, for a whole job (loaded detectors pass through as they are).

    Args:
        model: A registry name, a loaded detector, or a list of them.
        weights_dir: Folder searched first for weight files.
        device: "auto", "cpu" or "cuda".

    Raises:
        ValueError: No model was given.
    """
    models = [model] if isinstance(model, (str, Detector)) else list(model)
    if not models:
        raise ValueError("no model given")
    detectors = []
    for entry in models:
        detectors.append(entry if isinstance(entry, Detector)
                         else load_model(entry, weights_dir=weights_dir, device=device))
    return detectors


def shared_transforms(detectors: list[Detector]) -> tuple[list[ImageTransform], list[int]]:
    """The distinct input transforms of ``detectors`` and, per detector, the index of its own:
    models that share a preprocessing get each image transformed once."""
    unique: list[ImageTransform] = []
    transform_index: list[int] = []
    for detector in detectors:
        preprocess = detector.spec.preprocess
        known = [t.preprocess for t in unique]
        if preprocess not in known:
            unique.append(detector.transform)
            known.append(preprocess)
        transform_index.append(known.index(preprocess))
    return unique, transform_index


def default_workers(n_files: int, batch_size: int) -> int:
    """Worker processes for decoding: none for small jobs, else up to the CPU count (max 4)."""
    if n_files <= batch_size:
        return 0
    return max(1, min(4, os.cpu_count() or 1))


def classify_files(
    files: Iterable[str | os.PathLike[str]],
    model: ModelArg = "default",
    face_crop: bool | None = None,
    *,
    no_face: NoFacePolicy | None = None,
    face_config: FaceSettings | None = None,
    threshold: float | None = None,
    bands: bool | None = None,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    num_workers: int | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    perturb: Callable[[Image.Image], Image.Image] | None = None,
    provenance: bool = True,
    stability: bool = False,
    output_csv: str | os.PathLike[str] | None = None,
    progress: bool = True,
    stop: threading.Event | None = None,
    on_batch: Callable[[pd.DataFrame], None] | None = None,
    worker_start: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Score image files with one or more models.

    Each model scores with its own policy (``detector.scoring``: the face-crop settings it was
    trained with and its operating threshold); the scoring arguments below override it, and None
    keeps the model's own (see :class:`~deepfake_toolkit.scoring.Scoring`). A region that differs
    from the model's own gives a :class:`~deepfake_toolkit.scoring.ScoringMismatchWarning`.

    Args:
        files: Image files, scored in this order (a list, or an iterator: read once).
        model: A registry name, a loaded :class:`~deepfake_toolkit.models.Detector`, or a list of
            them (one row per file and model; every model scores the first model's region).
        face_crop: Score the face crop (True) or the whole image (False); None: as the model.
        no_face: With face cropping, what to do when no face is found: "whole" scores the whole
            image, "skip" records the file with label "no face" and no score; None: "whole".
        face_config: Face-crop settings (detector, margin, square, min_face_size, min_prob,
            select, edge, detect_max_side): a whole :class:`FaceCropConfig`, or a mapping of the
            ones to change in the model's own, e.g. ``{"margin": 0.3}``.
        threshold: Label "fake" when fake_score >= threshold, else "real". None uses the model's
            operating threshold when it has one, else the five score bands.
        bands: True labels with the five bands even when the model has an operating threshold.
        batch_size: Images per inference batch.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        num_workers: Decoding processes; None picks one from the job size and CPU count.
        weights_dir: Folder searched first for weight files.
        max_pixels: Refuse images larger than this (decompression-bomb guard).
        perturb: Applied to every decoded image before face detection (e.g. JPEG re-compression
            for robustness tests); must be picklable when workers are used. ``width`` and
            ``height`` stay those of the file.
        provenance: Read each file's C2PA manifest and metadata into the provenance columns
            (about 1 ms per image; see :mod:`deepfake_toolkit.provenance`). Without c2pa-python
            installed, ``c2pa_status`` is "unavailable" and the rest is still read.
        stability: Also score each image under mild re-encodings (JPEG quality 90 and 75,
            downscale to 0.75; 4x the work) and label it "uncertain" when the verdict flips (see
            :mod:`deepfake_toolkit.stability`).
        output_csv: Also write the table here (atomically, text cells made safe, see
            :func:`~deepfake_toolkit.results.write_csv`); Parquet when the name ends in .parquet
            (needs pyarrow). Rows are streamed to ``OUT.partial`` as batches finish and the
            settings recorded in ``OUT.run.json`` (see :mod:`deepfake_toolkit.output`); the
            output itself appears complete at the end. A folder that cannot be written fails
            before anything is scored.
        progress: Show a progress bar (tqdm; renders in Jupyter too).
        stop: Set this event to stop after the current batch; the rows done so far are returned
            and ``frame.attrs["stopped"]`` is True.
            Ctrl+C (KeyboardInterrupt) also keeps the rows scored so far: they are written to
            ``output_csv`` and :class:`ClassificationInterrupted` (a KeyboardInterrupt) carries
            them as its ``frame``.
        on_batch: Called with the rows of each finished batch (for live displays).
        worker_start: How decoding processes start: "fork", "forkserver" or "spawn" (None: the
            platform's default). A server uses "forkserver", so that workers do not inherit its
            open sockets and files.
        engine: "local" (this machine: worker processes and one model) or "ray" (a Ray cluster,
            see :mod:`deepfake_toolkit.distributed`; needs ``pip install
            "deepfake-toolkit[ray]"``). Both give the same rows in the same order.
        ray_address: With ``engine="ray"``: None starts a local Ray (or uses the one this
            process already started), "auto" joins the cluster of this machine, "host:6379" or
            "ray://host:10001" a remote one.
        resume: With ``output_csv``: keep the rows an earlier run with the same models and
            scoring settings wrote there (the partial of a killed run, or the finished output),
            for files whose size and modification time are unchanged, and score only the
            rest; files with an error row are scored again. The table returned, and the output,
            hold the kept rows first, then the new ones. Not with ``stability`` or
            ``perturb``.

    Returns:
        A table with the columns of :data:`deepfake_toolkit.results.COLUMNS` (``label_rule``
        says which rule labelled each row); ``attrs`` holds "seconds", "images_per_second" and
        "stopped". A file that fails anywhere on its way
        (decoding, face detection, cropping, transforming, scoring, or a score that is not a
        number) gets label "error" and a message in ``error``; the run goes on.

    Raises:
        OutputNotWritableError: ``output_csv`` cannot be written (raised before scoring).
        ResumeRefused: ``resume`` and the output was written with other settings (or has no
            record of them); raised before scoring.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if stability and perturb is not None:
        raise ValueError("stability=True re-encodes the files itself; it cannot be combined "
                         "with perturb")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if ray_address is not None and engine != "ray":
        raise ValueError("ray_address needs engine='ray'")
    if resume and (output_csv is None or stability or perturb is not None):
        raise ValueError("resume=True needs output_csv, and works without stability and "
                         "perturb")
    if engine == "ray":
        from .distributed import classify_files_on_ray

        if stability:
            raise ValueError("the stability check runs on the local engine only")
        return classify_files_on_ray(
            files, model, face_crop, ray_address=ray_address, no_face=no_face,
            face_config=face_config, threshold=threshold, bands=bands, batch_size=batch_size,
            device=str(device), num_workers=num_workers, weights_dir=weights_dir,
            max_pixels=max_pixels, perturb=perturb, output_csv=output_csv, progress=progress,
            stop=stop, on_batch=on_batch, provenance=provenance, resume=resume)
    # Held as plain strings: a Path per file costs several times the memory on 100,000 files
    # (path_text makes none).
    paths = [path_text(f) for f in files]
    if output_csv is not None:
        check_writable(output_csv)
    resolved = resolve_device(device)
    detectors = load_detectors(model, weights_dir, resolved)
    policies = run_policies([(d.name, d.scoring) for d in detectors], face_crop=face_crop,
                            face_config=face_config, no_face=no_face, threshold=threshold,
                            bands=bands)
    region = policies[0]
    unique, transform_index = shared_transforms(detectors)
    cropper = FaceCropper(region.face, device=resolved) if region.face_crop else None
    output = open_result_file(output_csv, detectors, policies, paths, max_pixels=max_pixels,
                              provenance=provenance, resume=resume)
    # The files to score, held packed and nowhere else: the list of path strings is freed before
    # the decoding workers fork, so that this process never writes to (and so copies) pages the
    # workers share; each row's path string comes back from the worker that read the file.
    paths = PackedPaths(output.remaining if output is not None else paths)
    if output is not None:
        output.remaining = paths
    try:
        detect_in_workers = cropper is not None and not _detects_in_batches(cropper, resolved)
        workers = (default_workers(len(paths), batch_size) if num_workers is None
                   else num_workers)
        dataset = _FileDataset(paths, unique, cropper,
                               detect_here=cropper is None or detect_in_workers,
                               no_face=region.no_face, max_pixels=max_pixels,
                               perturb=perturb, provenance=provenance)
        # Files come back one at a time (the progress bar moves per image) and are scored in
        # batches; each worker keeps up to a batch of files ready while the models run.
        loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                            collate_fn=_keep_item,
                            worker_init_fn=_worker_init if workers else None,
                            multiprocessing_context=worker_start if workers else None,
                            prefetch_factor=batch_size if workers else None,
                            persistent_workers=False)

        # Each batch's rows are copied into the run's columns (allocated at the first batch,
        # after the workers fork) and streamed to the output.
        kept = output.kept if output is not None else empty_results()
        parts = ResultColumns(len(kept) + len(paths) * len(detectors), first=kept)
        n_done = 0
        started = time.perf_counter()
        stopped = interrupted = False
        bar = _progress_bar(len(paths), detectors, progress)

        def score(batch: list[_Item]) -> None:
            nonlocal n_done
            if cropper is not None and not detect_in_workers:
                _detect_in_main(batch, cropper, region.no_face, unique)
            rows = results_frame(_score_batch(batch, detectors, transform_index, policies,
                                              batch_size))
            parts.append(rows)
            n_done += len(batch)
            if output is not None:
                output.append(rows)
            if on_batch is not None:
                on_batch(rows)

        waiting: list[_Item] = []
        if workers:
            release_free_memory()
        try:
            with frozen_for_workers(workers):
                for item in loader:
                    waiting.append(item)
                    bar.update(1)
                    if len(waiting) == batch_size:
                        score(waiting)
                        waiting = []
                        if stop is not None and stop.is_set():
                            stopped = True
                            break
                else:
                    if waiting:
                        score(waiting)
        except KeyboardInterrupt:
            # Ctrl+C: keep (and write) every row scored so far, then let the caller see the
            # interrupt.
            stopped = interrupted = True
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        frame = parts.table()
        del parts
        frame.attrs.update(seconds=seconds, stopped=stopped,
                           images_per_second=n_done / seconds if seconds > 0 else math.nan)
        if stability and not stopped:
            from .stability import check_stability

            try:
                frame = check_stability(frame, paths[:n_done], detectors, policies,
                                        batch_size=batch_size, device=resolved,
                                        num_workers=num_workers, max_pixels=max_pixels,
                                        progress=progress, stop=stop)
            except KeyboardInterrupt:
                # Ctrl+C during the re-encoded runs: keep the scores, without stability.
                interrupted = True
        if output is not None:
            output.finish(frame, rewrite=stability)
    except BaseException:
        if output is not None:
            output.close()  # the partial stays, for resume=True
        raise
    if interrupted:
        raise ClassificationInterrupted(frame)
    return frame


def classify_directory(
    path: str | os.PathLike[str],
    model: ModelArg = "default",
    face_crop: bool | None = None,
    *,
    recursive: bool = True,
    **options: Any,
) -> pd.DataFrame:
    """Score every image in a folder; one row per file (and model).

    Args:
        path: Folder of images (searched recursively unless ``recursive=False``; hidden files
            skipped).
        model: Registry name, loaded detector, or a list of them.
        face_crop: Score face crops (True) or whole images (False); None: as the model does.
        recursive: Include sub-folders.
        **options: Everything :func:`classify_files` takes (threshold, no_face, batch_size,
            device, output_csv, ...).

    Returns:
        The result table (see :data:`deepfake_toolkit.results.COLUMNS`).

    Raises:
        NotADirectoryError: ``path`` is missing or not a folder.

    Example:
        >>> from deepfake_toolkit import classify_directory   # doctest: +SKIP
        >>> table = classify_directory("~/case-images", output_csv="scores.csv")  # doctest: +SKIP
    """
    # Streamed into classify_files, which holds the only list of the paths, and packs it before
    # scoring.
    return classify_files(iter_images(path, recursive=recursive), model=model,
                          face_crop=face_crop, **options)


def _progress_bar(total: int, detectors: list[Detector], enabled: bool):
    from tqdm.auto import tqdm

    names = ", ".join(d.name for d in detectors)
    return tqdm(total=total, desc=f"Classifying ({names})", unit="img", disable=not enabled,
                dynamic_ncols=True)


def _detects_in_batches(cropper: FaceCropper, device: torch.device) -> bool:
    """Whether faces are detected in batches in the main process: MTCNN on a GPU. On a CPU, and
    for RetinaFace (an onnxruntime CPU network), detection runs per image in the workers."""
    return device.type != "cpu" and cropper.config.detector == "mtcnn"


def _detect_in_main(batch: list[_Item], cropper: FaceCropper, no_face: NoFacePolicy,
                    transforms: list[ImageTransform]) -> None:
    decoded = [item for item in batch if item.image is not None]
    try:
        detections: list[list[Face]] | None = cropper.detect([item.image for item in decoded])
    except Exception:  # noqa: BLE001 - retried one image at a time, to find the one that fails
        detections = None
    for position, item in enumerate(decoded):
        stage = "face detection"
        try:
            faces = detections[position] if detections is not None \
                else cropper.detect([item.image])[0]
            stage = "preparing the image for the model"
            prepare_regions(item, item.image, faces, cropper, no_face, transforms)
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
            _fail(item, stage, exc)


def _score_batch(batch: list[_Item], detectors: list[Detector], transform_index: list[int],
                 policies: list[Scoring], batch_size: int) -> list[dict[str, Any]]:
    rows = []
    for detector, t_index, policy in zip(detectors, transform_index, policies):
        scores, errors = _predict(batch, detector, t_index, batch_size)
        for position, item in enumerate(batch):
            rows.append(_row(item, detector.name, scores.get(position, np.zeros(0)),
                             item.error or errors.get(position, ""), policy))
    return rows


def _predict(batch: list[_Item], detector: Detector, t_index: int,
             batch_size: int) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Scores of every scored region in ``batch`` by item position, and per-item scoring errors.

    The batch is scored together; if that fails, one item at a time, so that only the item that
    fails gets an error. An item with a score that is not a finite number gets an error too.
    """
    # Each item holds one transformed region per scored face (none for errors and skips).
    scored = [i for i, item in enumerate(batch) if item.scored_faces]
    scores: dict[int, np.ndarray] = {}
    errors: dict[int, str] = {}
    if not scored:
        return scores, errors
    try:
        flat = _predict_stack(detector, torch.cat([batch[i].tensors[t_index] for i in scored]),
                              batch_size)
        offset = 0
        for i in scored:
            count = len(batch[i].scored_faces)
            scores[i] = flat[offset:offset + count]
            offset += count
    except Exception:  # noqa: BLE001 - retried one item at a time, to find the one that fails
        for i in scored:
            try:
                scores[i] = _predict_stack(detector, batch[i].tensors[t_index], batch_size)
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop a run
                errors[i] = (f"scoring with {detector.name} failed ({type(exc).__name__}: "
                             f"{printable_path(str(exc))})")
    for i, values in scores.items():
        if len(values) != len(batch[i].scored_faces) or not np.isfinite(values).all():
            errors[i] = (f"model {detector.name} gave no valid score (got {values.tolist()}): "
                         "its weights may be damaged")
    return scores, errors


def _predict_stack(detector: Detector, stack: torch.Tensor, batch_size: int) -> np.ndarray:
    return np.concatenate([detector.predict(stack[i:i + batch_size])
                           for i in range(0, len(stack), batch_size)])


def _row(item: _Item, model_name: str, scores: np.ndarray, error: str,
         policy: Scoring) -> dict[str, Any]:
    faces = item.faces or []
    best_face: Face | None = None
    score = math.nan
    if len(scores) and not error:
        best = int(np.argmax(scores))
        score = float(scores[best])
        best_face = item.scored_faces[best]
    if error:
        label = "error"
    elif not len(scores):
        label = "no face"
    else:
        label = policy.labels(score)
    face_crop = policy.face_crop
    return {
        "path": item.path,
        "model": model_name,
        "fake_score": score,
        "label": label,
        "label_rule": policy.rule,
        "region": item.region if not error else "",
        "face_crop": face_crop,
        "no_face_policy": policy.no_face if face_crop else "",
        "face_found": bool(faces),
        "n_faces": len(faces) if face_crop and not item.error else 0,
        "face_box": tuple(round(v, 1) for v in best_face.box) if best_face else None,
        "face_prob": best_face.prob if best_face else math.nan,
        "width": item.width,
        "height": item.height,
        "file_size": item.file_size,
        "file_mtime": item.file_mtime,
        "error": error,
        **item.provenance,
    }
