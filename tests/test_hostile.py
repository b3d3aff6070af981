"""Issue 15's attacker's corpus, kept as tests: a hostile folder through the whole pipeline with
face crop on and off, NaN scores, the memory of a large 16-bit PNG, and names that are not text."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepfake_toolkit import classify_directory, classify_files, find_images, read_csv
from deepfake_toolkit.images import DECODED_FORMATS, ImageReadError, load_image
from deepfake_toolkit.models import load_model
from deepfake_toolkit.models.loading import Detector
from deepfake_toolkit.models.spec import ModelSpec, Preprocess, WeightFile
from deepfake_toolkit.results import Bands, Threshold, escape_cell, unescape_cell, write_csv

from .hostile import HostileFolder, write_hostile_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> HostileFolder:
    return write_hostile_folder(tmp_path_factory.mktemp("hostile") / "folder")


@pytest.fixture(scope="module")
def default_detector(random_cnn_weights: Path) -> Detector:
    return load_model("cnn", weights_dir=random_cnn_weights, device="cpu")


def test_find_images_lists_every_image_named_entry_once(hostile: HostileFolder) -> None:
    assert find_images(hostile.root) == hostile.entries


@pytest.mark.parametrize("face_crop,workers", [(False, 0), (True, 2)])
def test_hostile_folder_gives_one_row_per_file_and_a_csv_that_reads_back(
        hostile: HostileFolder, default_detector: Detector, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, one_torch_thread: None, face_crop: bool,
        workers: int) -> None:
    monkeypatch.setenv("PATH", f"{hostile.gs_bin}{os.pathsep}{os.environ['PATH']}")
    output = tmp_path / "scores.csv"
    frame = classify_directory(hostile.root, model=default_detector, face_crop=face_crop,
                               num_workers=workers, batch_size=8, output_csv=output,
                               progress=False)
    assert frame["path"].tolist() == [str(p) for p in hostile.entries]
    errors = frame[frame["label"] == "error"]
    assert set(errors["path"]) == hostile.must_fail
    assert errors["error"].str.len().gt(0).all() and errors["fake_score"].isna().all()
    scored = frame[frame["label"] != "error"]
    assert scored["fake_score"].between(0.0, 1.0).all()
    assert scored["error"].eq("").all()
    assert not hostile.gs_marker.exists(), "PostScript content was handed to Ghostscript"
    for name in ("postscript.jpg", "jpeg2000.png", "dds.png"):
        message = frame.loc[frame["path"] == str(hostile.root / name), "error"].item()
        assert "not one of JPEG, PNG" in message
    kinds = dict(zip(frame["path"], frame["error"]))
    assert "FIFO" in kinds[str(hostile.root / "fifo.png")]
    assert "broken symbolic link" in kinds[str(hostile.root / "dangling.jpg")]
    assert "character device" in kinds[str(hostile.root / "device.jpg")]

    text = output.read_bytes()
    assert text.decode("utf-8").count("\n") == len(frame) + 1
    assert b"\r" not in text and b"\t" not in text
    for line in text.decode("utf-8").splitlines()[1:]:
        assert not line.startswith(("=", "+", "-", "@"))
        assert ",=" not in line and ",+" not in line and ",@" not in line
    back = read_csv(output)
    assert len(back) == len(frame)
    assert back["path"].tolist() == frame["path"].tolist()
    assert [Path(p) for p in back["path"]] == hostile.entries
    assert all(Path(p).exists() or Path(p).is_symlink() for p in back["path"])
    assert back["label"].tolist() == frame["label"].tolist()
    assert back["error"].tolist() == frame["error"].tolist()


def test_tiny_images_are_scored_whole_when_no_face_can_be_found(
        hostile: HostileFolder, default_detector: Detector, one_torch_thread: None) -> None:
    names = ["pixel.png", "spacer.gif", "banner.png", "tower.png", "eleven.jpg"]
    frame = classify_files([hostile.root / n for n in names], model=default_detector,
                           face_crop=True, num_workers=0, progress=False)
    assert frame["error"].eq("").all()
    assert frame["region"].eq("image").all() and not frame["face_found"].any()


def test_large_16_bit_png_decodes_to_rgb_of_its_size(hostile: HostileFolder) -> None:
    image = load_image(hostile.root / "grey16-large.png")
    assert image.mode == "RGB" and image.size == (2048, 2048)


def test_pixel_limit_is_max_pixels_not_pillows(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (20_000, 5_000)).save(path)  # 100 MP, over Pillow's own 89.5 MP warning
    assert load_image(path, max_pixels=100_000_000).size == (20_000, 5_000)
    with pytest.raises(ImageReadError, match="image too large"):
        load_image(path, max_pixels=99_999_999)


MEMORY_SCRIPT = """
import importlib.util, resource, sys
spec = importlib.util.spec_from_file_location("images", sys.argv[1])
images = importlib.util.module_from_spec(spec)
spec.loader.exec_module(images)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = images.load_image(sys.argv[2])
assert image.mode == "RGB", image.mode
print(image.width * image.height, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
def test_89_megapixel_16_bit_png_costs_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "grey16-89mp.png"
    Image.new("I;16", (9459, 9459), 0).save(path)
    assert path.stat().st_size < 1_000_000
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(REPO_ROOT / "deepfake_toolkit" / "images.py"),
         str(path)], capture_output=True, text=True, timeout=300, check=True)
    pixels, before_kb, peak_kb = (int(v) for v in result.stdout.split())
    assert pixels == 9459 * 9459
    # The decoded 16-bit image (2 bytes a pixel), its 8-bit grey (1) and the RGB result (4 in
    # Pillow) are about 7 bytes a pixel, 630 MB; the float64 conversion this replaced cost 2 GB.
    added_mb = (peak_kb - before_kb) / 1024
    assert added_mb < 8.5 * pixels / 2**20, f"{added_mb:.0f} MB"


# --- scores that are not numbers --------------------------------------------------------------

class _NaNForBright(torch.nn.Module):
    """Gives a NaN logit for bright images and the mean pixel value for the others."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        mean = batch.mean(dim=(1, 2, 3)).unsqueeze(1)
        return torch.where(mean > 0, torch.full_like(mean, math.nan), mean)


def _nan_detector() -> Detector:
    spec = ModelSpec(name="nan_for_bright", description="test model", build=_NaNForBright,
                     load_state_dict=lambda path: {}, preprocess=Preprocess(
                         input_size=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                     output="sigmoid_fake", weights=(WeightFile("none.safetensors"),))
    return Detector(spec=spec, module=_NaNForBright().eval(), device=torch.device("cpu"),
                    weights_path=Path("none.safetensors"))


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_nan_score_labels_that_row_error_and_scores_the_rest(tmp_path: Path,
                                                             threshold: float | None) -> None:
    Image.new("RGB", (20, 20), (250, 250, 250)).save(tmp_path / "bright.png")
    Image.new("RGB", (20, 20), (5, 5, 5)).save(tmp_path / "dark.png")
    frame = classify_directory(tmp_path, model=_nan_detector(), face_crop=False,
                               threshold=threshold, num_workers=0, progress=False)
    bright, dark = frame.set_index(frame["path"].map(lambda p: Path(p).name)).loc[
        ["bright.png", "dark.png"]].to_dict("records")
    assert bright["label"] == "error" and math.isnan(bright["fake_score"])
    assert "gave no valid score" in bright["error"] and bright["region"] == ""
    assert dark["label"] != "error" and 0.0 < dark["fake_score"] < 0.5 and dark["error"] == ""


@pytest.mark.parametrize("workers", [0, 1])
def test_a_path_no_file_can_have_is_that_paths_error_row(tmp_path: Path,
                                                         default_detector: Detector,
                                                         workers: int) -> None:
    # A NUL byte, or a lone surrogate (not a surrogate escape): the operating system takes
    # neither; a list handed to the Python API can hold both.
    Image.new("RGB", (30, 30), (90, 0, 0)).save(tmp_path / "ok.png")
    ok = str(tmp_path / "ok.png")
    paths = [ok, str(tmp_path / "nul\x00.png"), str(tmp_path / "lone-\ud800.png"), ok]
    frame = classify_files(paths, model=default_detector, face_crop=False, num_workers=workers,
                           progress=False)
    assert frame["path"].tolist() == paths
    assert frame["label"].tolist()[1:3] == ["error", "error"]
    assert "null byte" in frame["error"][1] and "surrogates not allowed" in frame["error"][2]
    assert frame["fake_score"][[0, 3]].notna().all()


def test_label_schemes_call_nan_an_error() -> None:
    assert Bands()(math.nan) == "error" and Threshold(0.5)(math.nan) == "error"
    assert Bands()(0.9) == "likely fake" and Threshold(0.5)(0.5) == "fake"


# --- failures after decoding stay with their file ---------------------------------------------

class _FailingStage:
    """A perturbation that raises for one named file size, as a detector or transform might."""

    def __init__(self, failing_width: int) -> None:
        self.failing_width = failing_width

    def __call__(self, image: Image.Image) -> Image.Image:
        if image.width == self.failing_width:
            raise RuntimeError("stage broke on this image")
        return image


def test_a_failure_after_decoding_is_that_files_error_row(tmp_path: Path,
                                                          default_detector: Detector,
                                                          one_torch_thread: None) -> None:
    for width in (30, 31, 32):
        Image.new("RGB", (width, 30), (width, 0, 0)).save(tmp_path / f"w{width}.png")
    frame = classify_directory(tmp_path, model=default_detector, face_crop=False,
                               perturb=_FailingStage(31), num_workers=0, progress=False)
    assert frame["label"].tolist()[1] == "error"
    assert "stage broke on this image" in frame["error"].tolist()[1]
    assert frame.drop(index=1)["fake_score"].notna().all()


def test_detection_failure_in_the_main_process_is_one_files_error(
        tmp_path: Path, default_detector: Detector, monkeypatch: pytest.MonkeyPatch,
        one_torch_thread: None) -> None:
    from deepfake_toolkit import pipeline
    from deepfake_toolkit.faces import FaceCropper

    real_detect = FaceCropper.detect

    def detect(self: FaceCropper, images: list[Image.Image]):
        if any(image.width == 41 for image in images):
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        return real_detect(self, images)

    monkeypatch.setattr(FaceCropper, "detect", detect)
    images = []
    for width in (40, 41, 42):
        Image.new("RGB", (width, 40), (0, width, 0)).save(tmp_path / f"w{width}.png")
        images.append(tmp_path / f"w{width}.png")
    batch = [pipeline._FileDataset(images, [default_detector.transform],
                                   FaceCropper(), detect_here=False, no_face="whole",
                                   max_pixels=10**6, perturb=None)[i] for i in range(3)]
    pipeline._detect_in_main(batch, FaceCropper(), "whole", [default_detector.transform])
    assert [bool(item.error) for item in batch] == [False, True, False]
    assert "face detection failed (ValueError" in batch[1].error
    assert batch[0].region == "image" and batch[2].region == "image"


def test_scoring_failure_of_one_item_leaves_the_others_scored(tmp_path: Path,
                                                              default_detector: Detector,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              one_torch_thread: None) -> None:
    real_predict = Detector.predict

    def predict(self: Detector, batch: torch.Tensor) -> np.ndarray:
        if bool((batch[:, 0] > 0.9).all(dim=(1, 2)).any()):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return real_predict(self, batch)

    monkeypatch.setattr(Detector, "predict", predict)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "a-red.png")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "b-blue.png")
    frame = classify_directory(tmp_path, model=default_detector, face_crop=False,
                               num_workers=0, progress=False)
    assert frame["label"].tolist()[0] == "error"
    assert "scoring with cnn failed (RuntimeError" in frame["error"].tolist()[0]
    assert frame["fake_score"].notna().tolist() == [False, True]


# --- text cells -------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "/photos/caf\udce9.jpg", "x\r=1+2\r.jpg", "%41", "'=x", "'", "", "a\x00b", "\u2028",
    "C:\\case\\images\\ünï.png", "-1", "=", "%", "%uD800", "\ud800 lone surrogate"])
def test_every_text_cell_reads_back_exactly(tmp_path: Path, text: str) -> None:
    import pandas as pd

    escaped = escape_cell(text)
    assert unescape_cell(escaped) == text
    escaped.encode("utf-8")
    assert not any(c in escaped for c in "\r\n\t\x00\u2028")
    frame = pd.DataFrame({column: pd.Series([value], dtype=object) for column, value in
                          (("path", text), ("model", "m"), ("label", text), ("error", text))})
    path = write_csv(frame, tmp_path / "cells.csv")
    back = read_csv(path)
    assert back["path"].tolist() == [text] and back["error"].tolist() == [text]


def test_decoded_formats_are_named_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert all(name in readme for name in ("JPEG", "PNG", "WebP", "BMP", "TIFF", "GIF"))
    assert len(DECODED_FORMATS) == 6


def test_shorter_side_resize_of_a_very_long_image_resamples_only_the_crop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfake_toolkit.models import transforms
    from deepfake_toolkit.models.bnext import BNEXT_PREPROCESS

    transform = transforms.ImageTransform(BNEXT_PREPROCESS)
    rng = np.random.default_rng(3)
    banner = Image.fromarray(rng.integers(0, 256, (20, 10000, 3), dtype=np.uint8))
    cropped_only = transform(banner)
    monkeypatch.setattr(transforms, "_LONG_SIDE_LIMIT", 10**9)
    whole_resized = transform(banner)
    # Equal up to the rounding of one 8-bit level (the normalised range is 2 / 255 per level).
    assert float((cropped_only - whole_resized).abs().max()) <= 2.01 / 255
    monkeypatch.undo()
    assert transform(Image.new("RGB", (1, 1_000_000))).shape == (3, 224, 224)


# --- what decoding workers inherit ------------------------------------------------------------

class _SocketProbe:
    """A perturbation that fails when the process it runs in holds the socket ``inode``."""

    def __init__(self, inode: int) -> None:
        self.inode = inode

    def __call__(self, image: Image.Image) -> Image.Image:
        for descriptor in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{descriptor}")
            except OSError:
                continue
            if target == f"socket:[{self.inode}]":
                raise RuntimeError("this worker holds the server's listening socket")
        return image


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("worker_start,inherits", [("fork", True), ("forkserver", False)])
def test_forkserver_workers_do_not_hold_the_listening_socket(
        tmp_path: Path, worker_start: str, inherits: bool) -> None:
    import socket

    for index in range(2):
        Image.new("RGB", (20, 20), (index, 0, 0)).save(tmp_path / f"{index}.png")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        probe = _SocketProbe(os.fstat(listening.fileno()).st_ino)
        frame = classify_directory(tmp_path, model=_nan_detector(), face_crop=False,
                                   perturb=probe, num_workers=1, batch_size=1,
                                   worker_start=worker_start, progress=False)
    held = frame["error"].str.contains("holds the server's listening socket")
    assert held.all() if inherits else not held.any(), frame["error"].tolist()
