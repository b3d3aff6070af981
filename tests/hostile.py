"""A hostile folder, generated on the fly: the files an attacker (or an old ZIP) puts in front of
the toolkit. Every case of issue 15 that a folder can hold is here."""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

FAKE_GS = """#!/bin/sh
# Stands in for Ghostscript: if the toolkit ever hands PostScript to gs, this leaves a mark.
touch "{marker}"
exit 1
"""

EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 10 10
newpath 0 0 moveto 10 10 lineto stroke
showpage
"""


@dataclass
class HostileFolder:
    """What was written: the folder, every image-named entry (one row each is expected), the
    names that must become error rows, and the file the fake ``gs`` touches if it ever runs."""

    root: Path
    gs_bin: Path
    gs_marker: Path
    entries: list[Path] = field(default_factory=list)
    must_fail: set[str] = field(default_factory=set)


def _bytes_of(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def write_hostile_folder(root: Path, large_side: int = 2048) -> HostileFolder:
    """Write the hostile folder under ``root`` (plus a fake ``gs`` beside it).

    Args:
        root: Folder to create.
        large_side: Side of the 16-bit greyscale PNG (a 9459 px side gives 89 megapixels).
    """
    root.mkdir(parents=True)
    gs_bin = root.parent / f"{root.name}-bin"
    gs_bin.mkdir()
    marker = root.parent / f"{root.name}-gs-ran"
    (gs_bin / "gs").write_text(FAKE_GS.format(marker=marker))
    (gs_bin / "gs").chmod(0o755)
    folder = HostileFolder(root=root, gs_bin=gs_bin, gs_marker=marker)
    rng = np.random.default_rng(15)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))

    def put(name: str | bytes, data: bytes, fails: bool = False) -> None:
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        folder.entries.append(path)
        if fails:
            folder.must_fail.add(str(path))

    # Tiny and extreme-aspect images: below MTCNN's 12 px window, before or after its downscale.
    put("pixel.png", _bytes_of(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"))
    put("spacer.gif", _bytes_of(Image.new("P", (2, 2)), "GIF"))
    put("banner.png", _bytes_of(Image.new("RGB", (10000, 20), (0, 90, 200)), "PNG"))
    put("tower.png", _bytes_of(Image.new("RGB", (11, 4000), (20, 90, 20)), "PNG"))
    put("eleven.jpg", _bytes_of(Image.new("RGB", (11, 11), (9, 9, 9)), "JPEG"))
    put("ordinary.jpg", _bytes_of(photo, "JPEG"))
    # Names: bytes that are not UTF-8, line breaks, formulas, quotes, percent signs.
    put(b"caf\xe9.jpg", _bytes_of(photo, "JPEG"))
    put(b"\xff\xfe-latin1 \xe0 \xe8.png", _bytes_of(photo, "PNG"))
    put("x\r=1+2\r.jpg", _bytes_of(photo, "JPEG"))
    put("line\nbreak=HYPERLINK(1).png", _bytes_of(photo, "PNG"))
    put("tab\t@SUM(A1).png", _bytes_of(photo, "PNG"))
    put("=cmd|' /C calc'!A0.jpg", _bytes_of(photo, "JPEG"))
    put("'quoted, \"comma\".png", _bytes_of(photo, "PNG"))
    put("%41 percent.png", _bytes_of(photo, "PNG"))
    put("sub/\u2028separator.png", _bytes_of(photo, "PNG"))
    # Content of formats the toolkit does not claim, under image names.
    put("postscript.jpg", EPS, fails=True)
    put("postscript.png", EPS, fails=True)
    put("jpeg2000.png", _bytes_of(photo, "JPEG2000"), fails=True)
    put("icon.png", _bytes_of(photo, "ICO"), fails=True)
    put("targa.png", _bytes_of(photo, "TGA"), fails=True)
    put("pcx.png", _bytes_of(photo, "PCX"), fails=True)
    put("sgi.png", _bytes_of(photo, "SGI"), fails=True)
    put("ppm.png", _bytes_of(photo, "PPM"), fails=True)
    put("dds.png", _bytes_of(photo.convert("RGBA"), "DDS"), fails=True)
    put("empty.jpg", b"", fails=True)
    put("text.webp", b"not an image at all\n", fails=True)
    # A large 16-bit greyscale PNG: small on disk, large once decoded.
    grey16 = Image.new("I;16", (large_side, large_side), 0)
    put("grey16-large.png", _bytes_of(grey16, "PNG"))
    # Entries that are not regular files: opening a FIFO would block, a device could stream.
    dangling = root / "dangling.jpg"
    dangling.symlink_to(root / "no-such-target.jpg")
    fifo = root / "fifo.png"
    os.mkfifo(fifo)
    device = root / "device.jpg"
    device.symlink_to("/dev/zero")
    for path in (dangling, fifo, device):
        folder.entries.append(path)
        folder.must_fail.add(str(path))
    # Not image-named, or hidden: no row.
    (root / "notes.txt").write_text("not an image name\n")
    (root / ".hidden.jpg").write_bytes(_bytes_of(photo, "JPEG"))
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    folder.entries.sort()
    return folder
