from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_toolkit.images import IMAGE_EXTENSIONS, ImageReadError, find_images, is_image_file, \
    load_image, path_suffix, path_text, to_rgb

from .corpus import CORPUS_MAX_PIXELS, GOOD, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, write_corpus(folder)


def test_find_images_lists_every_image_once_in_stable_order(corpus):
    folder, kinds = corpus
    found = find_images(folder)
    relative = [p.relative_to(folder).as_posix() for p in found]
    assert sorted(relative) == sorted(kinds)
    assert relative == sorted(relative, key=lambda r: Path(r).parts)
    assert not any(r.startswith(".") or "/." in r for r in relative)
    assert find_images(folder) == found


def test_find_images_top_level_only(corpus):
    folder, kinds = corpus
    found = find_images(folder, recursive=False)
    assert {p.name for p in found} == {k for k in kinds if "/" not in k}


def test_find_images_follows_links_without_looping(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "back").symlink_to(tmp_path)
    (tmp_path / "b").symlink_to(tmp_path / "a")
    found = find_images(tmp_path)
    assert len(found) == 1


def test_find_images_rejects_missing_folder(tmp_path):
    with pytest.raises(NotADirectoryError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        find_images(tmp_path / "file.jpg")


def test_load_image_decodes_good_files_and_explains_bad_ones(corpus):
    folder, kinds = corpus
    for name, kind in kinds.items():
        if kind == GOOD:
            image = load_image(folder / name, max_pixels=CORPUS_MAX_PIXELS)
            assert image.mode == "RGB" and image.width > 0, name
        else:
            with pytest.raises(ImageReadError) as caught:
                load_image(folder / name, max_pixels=CORPUS_MAX_PIXELS)
            assert str(caught.value), name


def test_bad_file_messages_say_what_happened(corpus):
    folder, _ = corpus
    messages = {}
    for name in ("truncated.jpg", "zero_bytes.jpg", "text_named.jpg", "over_limit.png"):
        with pytest.raises(ImageReadError) as caught:
            load_image(folder / name, max_pixels=CORPUS_MAX_PIXELS)
        messages[name] = str(caught.value)
    assert "empty" in messages["zero_bytes.jpg"]
    assert "not a readable image" in messages["text_named.jpg"]
    assert "too large" in messages["over_limit.png"]
    assert "truncated" in messages["truncated.jpg"] or "decode" in messages["truncated.jpg"]


def test_exif_orientation_is_applied(corpus):
    folder, _ = corpus
    assert load_image(folder / "exif_rotated.JPG").size == (40, 120)


def test_sixteen_bit_is_scaled_not_clipped(corpus):
    folder, _ = corpus
    array = np.asarray(load_image(folder / "grey16.png"))
    assert array.min() == 0 and array.max() == 255
    assert len(np.unique(array[..., 0])) > 200


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0))[0] in range(125, 130)


def test_gif_uses_first_frame(corpus):
    folder, _ = corpus
    with Image.open(folder / "animated.gif") as gif:
        first = np.asarray(gif.convert("RGB"))
    assert np.array_equal(np.asarray(load_image(folder / "animated.gif")), first)


# Paths pathlib rewrites (doubled slashes, "." parts, trailing slashes, "~"), names that are only
# an extension, several dots, and a name that is not UTF-8.
_TRICKY_PATHS = ["a.jpg", "/data/x/IMG_1.JPG", "dir//b.png", "./c.webp", "a/./b.jpeg", "a/.",
                 ".", "..", "../x.jpg", "/", "//net/x.jpg", "///x.png", "d/", "x.jpg/", "~",
                 "~/case/1.png", "a/../b.jpg", ".jpg", "dir/.png", "x.tar.png", "a.", "a..png", "..png", "...",
                 ".hidden.jpg", "a b/ c .PNG", "f\udcff.png", "dir.jpg/b"]


@pytest.mark.parametrize("text", _TRICKY_PATHS)
def test_path_text_and_image_extensions_read_paths_as_pathlib_does(text):
    # Both avoid pathlib for memory (it interns every file name it parses); their answers are
    # pathlib's own.
    assert path_text(text) == str(Path(text).expanduser())
    assert path_text(Path(text)) == str(Path(text).expanduser())
    assert path_suffix(text) == Path(text).suffix.lower()
    assert is_image_file(text) == (Path(text).suffix.lower() in IMAGE_EXTENSIONS)


def test_path_text_makes_no_path_for_a_path_already_in_pathlibs_form(monkeypatch):
    import deepfake_toolkit.images as images

    made = []
    monkeypatch.setattr(images, "Path", lambda *args: made.append(args) or Path(*args))
    assert path_text("/data/case/IMG_0001.jpg") == "/data/case/IMG_0001.jpg"
    assert not made
    assert path_text("/data//case/") == "/data/case" and made
