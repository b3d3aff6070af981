"""Finding image files in folders and decoding them safely into RGB.

Every decoding failure is turned into an :class:`ImageReadError` whose message says what happened,
so a caller can record it next to the file and carry on with the rest of a folder.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)
"""File extensions (lower case) that :func:`find_images` picks up, whatever their case on disk."""

DECODED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
"""Pillow formats :func:`load_image` decodes, whatever a file's name says. Content of any other
format (PostScript, which Pillow would hand to Ghostscript; JPEG 2000, ICO, TGA, ...) is refused
without being parsed."""

DEFAULT_MAX_PIXELS = 100_000_000
"""Largest image (width x height) :func:`load_image` decodes; larger files are refused as
possible decompression bombs, before any pixel is decoded."""

# load_image checks every image against its own max_pixels before decoding, so Pillow's fixed
# limit (89.5 megapixels, a warning, then an error at twice that) is replaced by that check:
# otherwise the documented limit would really be Pillow's, and max_pixels could not raise it.
Image.MAX_IMAGE_PIXELS = None

VIRTUAL_FILE_SYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "debugfs", "tracefs", "securityfs", "cgroup",
    "cgroup2", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "binfmt_misc",
    "efivarfs", "selinuxfs", "autofs", "rpc_pipefs", "nsfs"})
"""File-system types that hold no images but kernel state (``/proc``, ``/sys``, ``/dev``):
:func:`find_images` never walks into them."""

_MOUNT_INFO = Path("/proc/self/mountinfo")

_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))
"""How :func:`load_image` opens files: read-only, never waiting for a FIFO's writer (POSIX),
not inherited by programs started later, binary (Windows)."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited onto (white, as most viewers show them)."""


class ImageReadError(Exception):
    """An image file could not be decoded; the message says why, in words a user can act on."""


class TooManyFilesError(ValueError):
    """A folder holds more image files than the caller allows."""


class VirtualFolderError(NotADirectoryError):
    """A folder lies on a virtual file system (``/proc``, ``/sys``, ``/dev``): no images there."""


# What pathlib would rewrite in a path's text: a doubled slash, a "." part, a trailing slash.
_NOT_AS_PATHLIB_WRITES = re.compile(r"//|(?:^|/)\.(?:/|$)|./$")


def path_text(path: str | os.PathLike[str]) -> str:
    """``str(Path(path).expanduser())``, without making a Path where the text is already that.

    pathlib interns every part of every path it parses (file names included) in a table that
    never shrinks: over 100,000 files that table alone holds megabytes. Most paths are already
    in pathlib's form and are returned as they are; the rest go through pathlib.
    """
    text = os.fspath(path)
    if (isinstance(text, str) and text and not text.startswith("~")
            and not _NOT_AS_PATHLIB_WRITES.search(text)):
        return text
    return str(Path(path).expanduser())


def printable_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can be shown and encoded anywhere: bytes of a file name that are not
    UTF-8 (kept by Python as surrogate escapes) are written as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def virtual_devices() -> frozenset[int]:
    """Device numbers (``st_dev``) of the mounted :data:`VIRTUAL_FILE_SYSTEMS` (Linux; elsewhere
    an empty set)."""
    try:
        lines = _MOUNT_INFO.read_text(errors="replace").splitlines()
    except OSError:
        return frozenset()
    devices = set()
    for line in lines:
        # Fields: id parent major:minor root mount-point options [optional...] - fstype source ...
        fields = line.split()
        if "-" not in fields:
            continue
        fs_type = fields[fields.index("-") + 1]
        if fs_type in VIRTUAL_FILE_SYSTEMS:
            major, _, minor = fields[2].partition(":")
            try:
                devices.add(os.makedev(int(major), int(minor)))
            except ValueError:
                continue
    return frozenset(devices)


def path_suffix(path: str | os.PathLike[str]) -> str:
    """``Path(path).suffix.lower()``, without making a Path: pathlib interns every file name it
    parses, in a table that never shrinks. pathlib's rule: from the name's last dot, unless that
    dot is its first or last character (".jpg" and "a." have none)."""
    text = os.fspath(path)
    if not isinstance(text, str) or _NOT_AS_PATHLIB_WRITES.search(text):
        return Path(path).suffix.lower()  # text pathlib rewrites first (rare)
    name = text.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return name[dot:].lower() if 0 < dot < len(name) - 1 else ""


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` has one of the :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path_suffix(path) in IMAGE_EXTENSIONS


def find_images(folder: str | os.PathLike[str], recursive: bool = True,
                max_files: int | None = None) -> list[Path]:
    """List the image files under ``folder`` in a stable order.

    Every entry with an image extension that is not a folder is listed, including broken links,
    FIFOs and device files, so that each gets a row saying why it cannot be read. Hidden files and
    folders (names starting with ".") are skipped. Symbolic links are followed, but a folder
    reached twice (a link loop, or two links to one place) is walked only once, and folders on
    virtual file systems (``/proc``, ``/sys``, ``/dev``) are never walked.

    Args:
        folder: Folder to search.
        recursive: Search sub-folders too; with False only the top level is listed.
        max_files: Stop and raise once more image files than this are found (None: no limit).

    Returns:
        Paths (as found under ``folder``, not resolved) sorted by their path relative to ``folder``.

    Raises:
        NotADirectoryError: ``folder`` does not exist or is not a folder.
        VirtualFolderError: ``folder`` lies on a virtual file system such as ``/proc``.
        TooManyFilesError: More than ``max_files`` image files were found.
    """
    return [Path(path) for path in iter_images(folder, recursive, max_files)]


def iter_images(folder: str | os.PathLike[str], recursive: bool = True,
                max_files: int | None = None) -> Iterator[str]:
    """The files :func:`find_images` lists, in the same order, as plain strings, one at a time.

    Only the entries of the folders being walked are held, never the whole listing, so a folder
    of any size costs little memory. The folder itself is checked at once (the same errors as
    :func:`find_images`); ``TooManyFilesError`` comes while iterating.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise NotADirectoryError(f"{printable_path(root)} {what}: give the path of a folder of "
                                 "images.")
    virtual = virtual_devices()
    if root.stat().st_dev in virtual:
        raise VirtualFolderError(
            f"{printable_path(root)} is on a virtual file system (like /proc, /sys or /dev) that "
            "holds kernel state, not images: give the path of a folder of images.")
    return _walk(root, recursive, max_files, virtual)


def _walk(root: Path, recursive: bool, max_files: int | None,
          virtual: frozenset[int]) -> Iterator[str]:
    # Entries in name order, each folder walked where its name falls: the same order as sorting
    # every path by its parts relative to root, without holding every path to sort.
    seen_dirs: set[tuple[int, int]] = set()
    found = 0

    def walk(directory: str) -> Iterator[str]:
        nonlocal found
        try:
            info = os.stat(directory)
        except OSError:
            return
        key = (info.st_dev, info.st_ino)
        if key in seen_dirs or info.st_dev in virtual:
            return
        seen_dirs.add(key)
        try:
            with os.scandir(directory) as listing:
                entries = sorted(((e.name, e) for e in listing if not e.name.startswith(".")),
                                 key=lambda pair: pair[0])
        except OSError:
            return
        for name, entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    yield from walk(entry.path)
            elif is_image_file(name):
                found += 1
                if max_files is not None and found > max_files:
                    raise TooManyFilesError(
                        f"{printable_path(root)} holds more than {max_files:,} image files: "
                        "choose a smaller folder, or raise the limit.")
                yield entry.path

    yield from walk(str(root))


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an 8-bit RGB PIL image, upright.

    Only the :data:`DECODED_FORMATS` are decoded, recognised by content, not by name. EXIF
    orientation is applied; palette, greyscale, CMYK, 16-bit and float images are turned into
    RGB; transparent pixels are composited onto :data:`ALPHA_BACKGROUND`; for animations the
    first frame is used. Anything but a regular file (a FIFO, a device, a broken link) is refused
    without being read.

    Args:
        path: Image file.
        max_pixels: Refuse images with more pixels than this (decompression-bomb guard), checked
            before any pixel is decoded.

    Returns:
        The decoded image, mode "RGB".

    Raises:
        ImageReadError: The file is missing, empty, not a regular file, of another format,
            truncated, or too large.
    """
    try:
        # Non-blocking, so that opening a FIFO returns at once instead of waiting for a writer.
        descriptor = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if os.path.islink(path) and not os.path.exists(path):
            raise ImageReadError("broken symbolic link: the file it points to does not exist") \
                from None
        raise ImageReadError(f"cannot open file: {exc.strerror or exc}") from None
    with os.fdopen(descriptor, "rb") as stream:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(f"not a regular file but a {_file_kind(info.st_mode)}")
        if info.st_size == 0:
            raise ImageReadError("empty file (0 bytes)")
        return _decode(stream, max_pixels)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))
    return next((name for test, name in kinds if test(mode)), "special file")


def _decode(stream, max_pixels: int) -> Image.Image:
    try:
        with Image.open(stream, formats=DECODED_FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageReadError(
                    f"image too large ({width}x{height} = {width * height:,} pixels, limit "
                    f"{max_pixels:,}); raise max_pixels if you trust this file")
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        formats = ", ".join(DECODED_FORMATS)
        raise ImageReadError(f"not a readable image (not one of {formats}, or corrupt)") \
            from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
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
        return Image.fromarray(_to_grey8(image), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


_ROWS_PIXELS = 1 << 20
"""Pixels converted at a time by :func:`_to_grey8`, so that converting a large 16-bit image costs
a few megabytes beyond the decoded image, not gigabytes."""


def _to_grey8(image: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float greyscale image to an 8-bit array, a block of
    rows at a time."""
    mode = image.mode
    if mode == "F":
        top = 1.0
    elif mode.startswith("I;16"):
        top = 65535.0
    else:
        top = 65535.0 if (image.getextrema()[1] or 0) > 255 else 255.0
    width, height = image.size
    grey = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _ROWS_PIXELS // max(1, width))
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        block = np.asarray(image.crop((0, start, width, stop))).astype(np.float32)
        np.nan_to_num(block, copy=False, nan=0.0, posinf=top, neginf=0.0)
        np.clip(block, 0.0, top, out=block)
        block *= 255.0 / top
        grey[start:stop] = np.rint(block)
    return grey
