"""A corpus of awkward image files, generated on the fly (nothing is downloaded or committed)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

GOOD = "good"
BAD = "bad"


def _photo(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(array)


def write_corpus(folder: Path) -> dict[str, str]:
    """Write one file of every awkward kind into ``folder``.

    Returns:
        Map from each file's path relative to ``folder`` to GOOD (must decode) or BAD (must
        become an error row).
    """
    folder.mkdir(parents=True, exist_ok=True)
    kinds: dict[str, str] = {}

    def save(name: str, kind: str, writer) -> None:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path)
        kinds[name] = kind

    photo = _photo()
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    save("truncated.jpg", BAD, lambda p: p.write_bytes(jpeg[: len(jpeg) // 2]))
    save("zero_bytes.jpg", BAD, lambda p: p.write_bytes(b""))
    save("text_named.jpg", BAD, lambda p: p.write_text("this is not an image\n"))
    save("cmyk.jpg", GOOD, lambda p: photo.convert("CMYK").save(p, format="JPEG"))
    sixteen = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    save("grey16.png", GOOD, lambda p: Image.fromarray(sixteen).save(p))
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette_alpha.png", GOOD, lambda p: palette.save(p, transparency=0))
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    save("rgba.webp", GOOD, lambda p: rgba.save(p, format="WEBP"))
    save("grey.bmp", GOOD, lambda p: photo.convert("L").save(p))
    save("float.tiff", GOOD, lambda p: Image.fromarray(
        np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64), mode="F").save(p))

    def animated(path: Path) -> None:
        frames = [_photo(seed=i).convert("P") for i in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)

    save("animated.gif", GOOD, animated)

    def rotated(path: Path) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        _photo((120, 40)).save(path, format="JPEG", exif=exif.tobytes())

    save("exif_rotated.JPG", GOOD, rotated)
    save("over_limit.png", BAD, lambda p: Image.new("RGB", (3000, 2000), (10, 20, 30)).save(p))
    save("ünïcode naïve  name.Png", GOOD, lambda p: photo.save(p))
    save("sub dir/=formula,name.jpeg", GOOD, lambda p: photo.save(p, format="JPEG"))
    save(".hidden.jpg", GOOD, lambda p: photo.save(p, format="JPEG"))
    kinds.pop(".hidden.jpg")
    (folder / "notes.txt").write_text("not an image extension\n")
    os.symlink(folder, folder / "sub dir" / "loop")
    return kinds


CORPUS_MAX_PIXELS = 4_000_000
"""Pixel limit the tests use, so that over_limit.png (6 MP) is refused."""
