"""Heatmaps: where in the scored crop the model found evidence of a fake (Grad-CAM).

For a chosen few images (a gallery, the top N by score, files named explicitly), never a whole
folder: :func:`explain_image` scores the same crop the pipeline scores and computes captum's
``LayerGradCam`` on the layers the model's spec names (``ModelSpec.explain_layers``: the last
convolutional stage of a CNN, the last block's norm of a ViT with its patch tokens laid out as a
grid; for a fused model, one such layer per branch, each map as evidence per pixel, summed). The
map is upsampled to the model input, placed over the crop as the model's resize and centre crop
saw it, and mapped back onto the whole image through the crop window.

Grad-CAM shows which regions raised the fake score at a coarse layer (7 x 7 for the models here):
a hint of what the model looked at, not proof of what is fake. Needs the ``explain`` extra
(``pip install "deepfake-toolkit[explain]"``: captum, matplotlib).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch import nn

from .faces import FaceCropper, crop_window
from .images import DEFAULT_MAX_PIXELS, load_image
from .models import Detector, resolve_device
from .models.spec import ModelSpec
from .pipeline import load_detectors
from .scoring import FaceSettings, run_policies

EXPLAIN_EXTRA = 'pip install "deepfake-toolkit[explain]"'

EXPLAIN_COLUMNS = ("path", "model", "fake_score", "region", "face_box", "window", "crop_file",
                   "image_file", "milliseconds", "error")
"""Columns of the table :func:`explain_files` returns and ``explain.csv`` holds."""


class ExplainUnavailableError(ImportError):
    """captum (the ``explain`` extra) is not installed, or the model names no heatmap layer."""


@dataclass
class Explanation:
    """A heatmap of one image for one model.

    Attributes:
        path: The image file ("" for an image given directly).
        model: The model's registry name.
        fake_score: The model's P(fake) for the crop.
        region: "face" or "image" (whole image, when face crop is off or no face was found).
        face_box: The scored face's box (x1, y1, x2, y2) in image pixels, or None.
        window: The crop rectangle (left, top, right, bottom) in image pixels.
        crop: The scored crop (RGB).
        heatmap: Float array of the crop's height x width, values in [0, 1] (1 = strongest
            evidence of a fake; 0 where the model did not look, e.g. outside a centre crop).
    """

    path: str
    model: str
    fake_score: float
    region: str
    face_box: tuple[float, float, float, float] | None
    window: tuple[int, int, int, int]
    crop: Image.Image
    heatmap: np.ndarray

    def crop_overlay(self, alpha: float = 0.5, colormap: str = "inferno") -> Image.Image:
        """The crop with the heatmap blended over it."""
        return blend(self.crop, self.heatmap, alpha, colormap)

    def image_overlay(self, image: Image.Image, alpha: float = 0.5,
                      colormap: str = "inferno") -> Image.Image:
        """The whole image with the heatmap blended over the crop window and the face box drawn.

        Args:
            image: The upright image the crop was cut from.
        """
        image = image.convert("RGB")
        full = np.zeros((image.height, image.width), dtype=np.float32)
        left, top, right, bottom = self.window
        # Windows padded past the image edge ("pad" edge policy) are cut back to the image.
        src_left, src_top = max(0, -left), max(0, -top)
        dst_left, dst_top = max(0, left), max(0, top)
        dst_right, dst_bottom = min(image.width, right), min(image.height, bottom)
        if dst_right > dst_left and dst_bottom > dst_top:
            full[dst_top:dst_bottom, dst_left:dst_right] = self.heatmap[
                src_top:src_top + dst_bottom - dst_top, src_left:src_left + dst_right - dst_left]
        overlay = image.copy()
        inside = (dst_left, dst_top, dst_right, dst_bottom)
        blended = blend(image.crop(inside), full[dst_top:dst_bottom, dst_left:dst_right],
                        alpha, colormap)
        overlay.paste(blended, inside[:2])
        draw = ImageDraw.Draw(overlay)
        width = max(1, round(max(image.size) / 300))
        draw.rectangle(inside, outline=(255, 255, 255), width=width)
        if self.face_box is not None:
            draw.rectangle(self.face_box, outline=(0, 255, 0), width=width)
        return overlay


def blend(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5,
          colormap: str = "inferno") -> Image.Image:
    """``image`` with ``heatmap`` (same height x width, values in [0, 1]) coloured over it."""
    try:
        from matplotlib import colormaps
    except ImportError:
        raise ExplainUnavailableError(f"heatmap images need matplotlib: {EXPLAIN_EXTRA}") from None
    colours = colormaps[colormap](np.clip(heatmap, 0.0, 1.0))[..., :3]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    # Weight the colour by the heat, so that cold regions keep the photo visible.
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    mixed = base * (1.0 - weight) + colours * weight
    return Image.fromarray((mixed * 255.0 + 0.5).astype(np.uint8))


class _TokenGrid(nn.Module):
    """Identity on (N, C, H, W): the layer Grad-CAM hooks for a transformer's patch tokens."""

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return grid


class _FakeEvidence(nn.Module):
    """The model's output turned into one number per image that rises with P(fake)."""

    def __init__(self, module: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.module, self.spec = module, spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        output = self.module(images).float()
        if self.spec.output == "softmax":
            return torch.log_softmax(output, dim=-1)[:, self.spec.fake_index]
        logit = output.reshape(output.shape[0], -1)[:, 0]
        return logit if self.spec.output == "sigmoid_fake" else -logit


def gradcam(detector: Detector, crop: Image.Image) -> np.ndarray:
    """Grad-CAM of ``detector`` on ``crop``, mapped onto the crop's pixels.

    Args:
        detector: A loaded model whose spec names its ``explain_layers``.
        crop: The RGB region the model scores (a face crop or a whole image).

    Returns:
        Float32 array of shape (crop height, crop width), values in [0, 1]; all zeros when
        nothing in the crop raised the fake score.

    Raises:
        ExplainUnavailableError: captum is missing, or the model has no heatmap layer.
    """
    heat = evidence_map(detector, crop)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 and math.isfinite(peak) else np.zeros_like(heat)
    return _onto_crop(heat.astype(np.float32), crop.size, detector.spec)


def evidence_map(detector: Detector, crop: Image.Image) -> np.ndarray:
    """The unnormalised heatmap over the model input (input_size x input_size, >= 0).

    For each of the spec's ``explain_layers``, captum's ``LayerGradCam`` of the fake evidence
    (ReLU'd), upsampled to the input; a cell's value is its share of the score, so per pixel it
    is weighted by the layer's number of cells, and the layers' maps add up (a fused model's
    branches). :func:`gradcam` scales it to [0, 1] and maps it onto the crop.
    """
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError:
        raise ExplainUnavailableError(f"heatmaps need captum: {EXPLAIN_EXTRA}") from None
    spec = detector.spec
    if spec.explain_layers is None:
        raise ExplainUnavailableError(f"model '{spec.name}' names no layer for heatmaps")
    inputs = detector.transform(crop)[None].to(detector.device,
                                               memory_format=spec.memory_format)
    size = spec.preprocess.input_size
    heat = torch.zeros(size, size)
    for layer in spec.explain_layers(detector.module):
        target_layer, handle = layer.module, None
        if layer.prefix_tokens is not None:
            target_layer = _TokenGrid()
            handle = layer.module.register_forward_hook(
                _token_grid_hook(target_layer, layer.prefix_tokens))
        try:
            # Gradients are needed even when the caller runs under inference_mode or no_grad.
            with torch.inference_mode(False), torch.enable_grad():
                cam = LayerGradCam(_FakeEvidence(detector.module, spec), target_layer)
                attribution = cam.attribute(inputs.clone().requires_grad_(True),
                                            relu_attributions=True).detach().float()
        finally:
            if handle is not None:
                handle.remove()
        cells = attribution.shape[-2] * attribution.shape[-1]
        heat += cells * LayerAttribution.interpolate(attribution, (size, size),
                                                     interpolate_mode="bilinear")[0, 0].cpu()
    return heat.clamp(min=0).numpy()


def _token_grid_hook(grid: _TokenGrid, prefix: int):
    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = output.shape
        side = math.isqrt(tokens - prefix)
        patches = output[:, prefix:].transpose(1, 2).reshape(batch, channels, side, side)
        patches = grid(patches)
        return torch.cat([output[:, :prefix], patches.flatten(2).transpose(1, 2)], dim=1)

    return hook


def _onto_crop(heat: np.ndarray, crop_size: tuple[int, int], spec: ModelSpec) -> np.ndarray:
    """Place a heatmap over the model input back onto the crop it was made from."""
    width, height = crop_size
    p = spec.preprocess
    picture = Image.fromarray(heat)  # float32: a mode "F" image
    if p.resize == "exact":
        return np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR),
                          dtype=np.float32).clip(0.0, 1.0)
    # "shorter": the input is the centre input_size square of the crop resized so that its
    # shorter side is resize_size; the rest of the crop was never seen.
    scale = p.resize_size / min(width, height)
    side = p.input_size / scale
    left, top = (width - side) / 2.0, (height - side) / 2.0
    box = (int(round(left)), int(round(top)), int(round(left + side)), int(round(top + side)))
    seen = picture.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BILINEAR)
    full = np.zeros((height, width), dtype=np.float32)
    full[box[1]:box[3], box[0]:box[2]] = np.asarray(seen, dtype=np.float32)
    return full.clip(0.0, 1.0)


def explain_image(image: Image.Image, detector: Detector, face_crop: bool | None = None,
                  cropper: FaceCropper | None = None, path: str = "") -> Explanation:
    """Score ``image`` as the pipeline does and compute its heatmap.

    Args:
        image: An upright RGB image.
        detector: The loaded model.
        face_crop: Explain the crop of the best face (as the pipeline scores it); the whole image
            when False or when no face is found; None: as the model scores (its policy).
        cropper: The face cropper to use (its config decides margin, selection, edges; None:
            the model's own face-crop settings).
        path: The file, recorded in the result.
    """
    image = image.convert("RGB")
    face = None
    if face_crop is None:
        face_crop = detector.scoring.face_crop
    if face_crop:
        cropper = cropper or FaceCropper(detector.scoring.face)
        faces = cropper.faces_to_score(cropper.detect([image])[0])
        face = faces[0] if faces else None
    if face is not None:
        window = crop_window(face.box, image.size, cropper.config)
        crop = image.crop(window)
    else:
        window = (0, 0, image.width, image.height)
        crop = image
    score = float(detector.predict_images([crop])[0])
    return Explanation(path=path, model=detector.name, fake_score=score,
                       region="face" if face is not None else "image",
                       face_box=tuple(round(v, 1) for v in face.box) if face else None,
                       window=window, crop=crop, heatmap=gradcam(detector, crop))


def explain_files(
    files: Sequence[str | os.PathLike[str]],
    model: str | Detector | Sequence[str | Detector] = "default",
    output_dir: str | os.PathLike[str] | None = None,
    face_crop: bool | None = None,
    *,
    face_config: FaceSettings | None = None,
    device: str | torch.device = "cpu",
    weights_dir: str | os.PathLike[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> pd.DataFrame:
    """Heatmaps of a few files: one row per file and model, images written to ``output_dir``.

    For each file and model this writes ``NNN_<name>__<model>_crop.png`` (the scored crop with
    its heatmap) and ``NNN_<name>__<model>_image.png`` (the whole image with the heatmap over the
    crop window, the window in white and the face box in green), and ``explain.csv`` listing them.

    Args:
        files: The image files (a chosen few: each costs a forward and a backward pass).
        model: Registry name(s) or loaded detector(s).
        output_dir: Folder for the images and ``explain.csv``; None writes nothing.
        face_crop: Explain the face crop the pipeline scores (else the whole image); None: as
            the model scores.
        face_config: Face-crop settings replacing the model's, as for classification.
        device: Where the models run: "auto", "cpu" or "cuda".
        weights_dir: Folder searched first for weight files.
        max_pixels: Refuse images larger than this.

    Returns:
        A table with :data:`EXPLAIN_COLUMNS`; unreadable files get a row with their ``error``.
    """
    resolved = resolve_device(device)
    detectors = load_detectors(model, weights_dir, resolved)
    region = run_policies([(d.name, d.scoring) for d in detectors], face_crop=face_crop,
                          face_config=face_config)[0]
    cropper = FaceCropper(region.face, device=resolved) if region.face_crop else None
    folder = Path(output_dir).expanduser() if output_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, file in enumerate(files):
        path = Path(file).expanduser()
        try:
            image = load_image(path, max_pixels=max_pixels)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            rows.extend(_error_row(path, d.name, str(exc)) for d in detectors)
            continue
        for detector in detectors:
            started = time.perf_counter()
            explanation = explain_image(image, detector, region.face_crop, cropper,
                                        path=str(path))
            milliseconds = (time.perf_counter() - started) * 1e3
            crop_file = image_file = ""
            if folder is not None:
                stem = f"{index:03d}_{path.stem}__{detector.name}"
                crop_file = str(folder / f"{stem}_crop.png")
                image_file = str(folder / f"{stem}_image.png")
                explanation.crop_overlay().save(crop_file)
                explanation.image_overlay(image).save(image_file)
            rows.append({"path": str(path), "model": detector.name,
                         "fake_score": explanation.fake_score, "region": explanation.region,
                         "face_box": explanation.face_box, "window": explanation.window,
                         "crop_file": crop_file, "image_file": image_file,
                         "milliseconds": milliseconds, "error": ""})
    table = pd.DataFrame(rows, columns=list(EXPLAIN_COLUMNS))
    if folder is not None:
        from .results import write_csv

        write_csv(table, folder / "explain.csv")
    return table


def _error_row(path: Path, model: str, error: str) -> dict:
    return {"path": str(path), "model": model, "fake_score": math.nan, "region": "",
            "face_box": None, "window": None, "crop_file": "", "image_file": "",
            "milliseconds": math.nan, "error": error}


def top_heatmaps(per_image: pd.DataFrame, n: int, output_dir: str | os.PathLike[str],
                 face_crop: bool | None = None, *, by: str = "true_label",
                 face_config: FaceSettings | None = None,
                 device: str | torch.device = "cpu",
                 weights_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Heatmaps of the ``n`` highest-scored images of each group, per model (for reports).

    Args:
        per_image: A result or per-image table (rows of perturbed copies are left out).
        n: Images per model and group.
        output_dir: Folder for the heatmap images (see :func:`explain_files`).
        face_crop: As the table was scored (None: as the model scores).
        by: The grouping column (e.g. ``true_label``: the most fake-looking reals are the false
            alarms worth seeing).
        face_config, device, weights_dir: As for :func:`explain_files` (``face_config`` should
            be the one the table was scored with).

    Returns:
        :data:`EXPLAIN_COLUMNS` plus ``by``, one row per image and model.
    """
    clean = per_image[per_image["fake_score"].notna()]
    if "perturbation" in clean:
        clean = clean[clean["perturbation"].isin(["none", ""])]
    tables = []
    for model, rows in clean.groupby("model", sort=False):
        chosen = (rows.sort_values("fake_score", ascending=False)
                  .groupby(by, sort=True).head(n) if by in rows else rows.nlargest(n, "fake_score"))
        table = explain_files(chosen["path"].tolist(), str(model), output_dir, face_crop,
                              face_config=face_config, device=device, weights_dir=weights_dir)
        if by in chosen:
            table[by] = chosen[by].to_numpy()
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=[*EXPLAIN_COLUMNS, by])
    table = pd.concat(tables, ignore_index=True)
    from .results import write_csv

    write_csv(table, Path(output_dir).expanduser() / "explain.csv")  # all models together
    return table
