"""Finding image files in folders and decoding them safely into RGB.

Every decoding failure is turned into an :class:`ImageReadError` whose message says what happened,
so a caller can record it next to the file and carry on with the rest of a folder.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File extensions (lower case) that :func:`find_images` picks up, whatever their case on disk."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (width x height) :func:`load_image` decodes; larger files are refused as
possible decompression bombs."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited onto (white, as most viewers show them)."""


class ImageReadError(Exception):
    """An image file could not be decoded; the message says why, in words a user can act on."""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of the :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List the image files under ``folder`` in a stable order.

    Hidden files and folders (names starting with ".") are skipped. Symbolic links are followed,
    but a folder reached twice (a link loop, or two links to one place) is walked only once.

    Args:
        folder: Folder to search.
        recursive: Search sub-folders too; with False only the top level is listed.

    Returns:
        Paths (as found under ``folder``, not resolved) sorted by their path relative to ``folder``.

    Raises:
        NotADirectoryError: ``folder`` does not exist or is not a folder.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise NotADirectoryError(f"{root} {what}: give the path of a folder of images.")
    found: list[Path] = []
    seen_dirs: set[tuple[int, int]] = set()

    def walk(directory: Path) -> None:
        try:
            stat = directory.stat()
        except OSError:
            return
        key = (stat.st_dev, stat.st_ino)
        if key in seen_dirs:
            return
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError:
                continue
            if is_dir:
                if recursive:
                    walk(Path(entry.path))
            elif is_file and is_image_file(entry.name):
                found.append(Path(entry.path))

    walk(root)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image, upright.

    EXIF orientation is applied; palette, greyscale, CMYK, 16-bit and float images are turned into
    RGB; transparent pixels are composited onto :data:`ALPHA_BACKGROUND`; for animations the
    first frame is used.

    Args:
        path: Image file.
        max_pixels: Refuse images with more pixels than this (decompression-bomb guard).

    Returns:
        The decoded image, mode "RGB".

    Raises:
        ImageReadError: The file is missing, empty, not an image, truncated, or too large.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageReadError(f"cannot open file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"image too large ({width}x{height} = {width * height:,} pixels, limit "
                        f"{max_pixels:,}); raise max_pixels if you trust this file"
                    )
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not a readable image (unknown or corrupt format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image refused as a possible decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(f"cannot decode image: {exc}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode into 8-bit RGB.

    16-bit and 32-bit integer images are scaled down by their bit depth (not clipped), float
    images are taken to lie in [0, 1], and transparency is composited onto
    :data:`ALPHA_BACKGROUND`.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image)
        if mode == "F":
            scaled = np.clip(array, 0.0, 1.0) * 255.0
        else:
            top = 65535.0 if mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
            scaled = np.clip(array.astype(np.float64), 0, top) * (255.0 / top)
        grey = Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")

