from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_toolkit.images import ImageReadError, find_images, load_image, to_rgb

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
