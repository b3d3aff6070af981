"""Image perturbations for robustness tests: re-compression, blur and downscaling.

Each perturbation is a small frozen dataclass that is called with a PIL image and returns a new
one, so it can be handed to :func:`deepfake_toolkit.pipeline.classify_files` as ``perturb`` and
pickled into its decoding worker processes. The same perturbation is applied to real and fake
images alike, so a drop in AUC measures the detector, not a change in the data set.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Protocol

from PIL import Image, ImageFilter

CLEAN = "none"
"""Name of the unperturbed condition in result tables."""


class Perturbation(Protocol):
    """A named, picklable image-to-image function."""

    @property
    def name(self) -> str: ...

    def __call__(self, image: Image.Image) -> Image.Image: ...


@dataclass(frozen=True)
class JpegCompression:
    """Re-encode as baseline JPEG (4:2:0 chroma subsampling, Pillow's default) at ``quality``.

    Args:
        quality: JPEG quality, 1 (worst) to 100 (best), on the IJG/libjpeg scale.
    """

    quality: int

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must lie in 1..100, got {self.quality}")

    @property
    def name(self) -> str:
        return f"jpeg_q{self.quality}"

    def __call__(self, image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=self.quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")


@dataclass(frozen=True)
class GaussianBlur:
    """Blur with a Gaussian kernel.

    Args:
        sigma: Standard deviation of the kernel, in pixels of the image as decoded.
    """

    sigma: float

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError(f"blur sigma must be positive, got {self.sigma}")

    @property
    def name(self) -> str:
        return f"blur_s{self.sigma:g}"

    def __call__(self, image: Image.Image) -> Image.Image:
        # Pillow's GaussianBlur radius is the kernel's standard deviation.
        return image.filter(ImageFilter.GaussianBlur(radius=self.sigma))


@dataclass(frozen=True)
class Downscale:
    """Shrink the image by ``factor`` (antialiased Lanczos); it is not scaled back up.

    Faces shrink too, so with face cropping on, small faces may no longer be found.

    Args:
        factor: New size as a fraction of the old, in (0, 1].
    """

    factor: float

    def __post_init__(self) -> None:
        if not 0.0 < self.factor <= 1.0:
            raise ValueError(f"downscale factor must lie in (0, 1], got {self.factor}")

    @property
    def name(self) -> str:
        return f"downscale_{self.factor:g}"

    def __call__(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        size = (max(1, round(width * self.factor)), max(1, round(height * self.factor)))
        return image.resize(size, Image.Resampling.LANCZOS)


ROBUSTNESS_SUITE: tuple[Perturbation, ...] = (
    JpegCompression(95),
    JpegCompression(75),
    JpegCompression(50),
    JpegCompression(30),
    GaussianBlur(1.0),
    GaussianBlur(2.0),
    GaussianBlur(3.0),
    Downscale(0.5),
    Downscale(0.25),
)
"""The default robustness grid: JPEG quality 95/75/50/30, blur sigma 1/2/3, downscale 1/2, 1/4."""


def perturbation_name(perturbation: Callable[[Image.Image], Image.Image] | None) -> str:
    """The name a perturbation is recorded under (:data:`CLEAN` for None)."""
    if perturbation is None:
        return CLEAN
    return str(getattr(perturbation, "name", None) or repr(perturbation))
