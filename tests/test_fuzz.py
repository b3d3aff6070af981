"""Fuzzing the whole per-file path (decode, face detection, crop, transform, score) with mutated
JPEG, PNG, WebP, GIF, BMP and TIFF files: every file must give exactly one row, either scored or
an error with a message, with no exception and no hang.

The default run mutates a few thousand small files; ``-m fuzz`` selects a longer run.
"""

from __future__ import annotations

import io
import math
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from deepfake_toolkit import classify_files, read_csv
from deepfake_toolkit.models.loading import Detector
from deepfake_toolkit.models.spec import ModelSpec, Preprocess, WeightFile

# Pillow warns about damaged metadata in the mutated files; those are what is being tested.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:PIL")

FORMATS = (("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"), ("GIF", ".gif"),
           ("BMP", ".bmp"), ("TIFF", ".tif"))


def _tiny_module() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 1))


def tiny_detector() -> Detector:
    """A small real network behind the same Detector interface as the registry's models, so that
    scoring thousands of files takes seconds."""
    spec = ModelSpec(name="fuzz_tiny", description="tiny test network", build=_tiny_module,
                     load_state_dict=lambda path: {}, preprocess=Preprocess(
                         input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
                     output="sigmoid_fake", weights=(WeightFile("none.safetensors"),))
    torch.manual_seed(0)
    return Detector(spec=spec, module=_tiny_module().eval(), device=torch.device("cpu"),
                    weights_path=Path("none.safetensors"))


def _seeds(face: Image.Image) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                for w, h in ((32, 32), (96, 48), (40, 90))]
    pictures.append(face.resize((96, 96)))
    seeds = []
    for picture in pictures:
        for format, suffix in FORMATS:
            buffer = io.BytesIO()
            picture.save(buffer, format=format)
            seeds.append((suffix, buffer.getvalue()))
    return seeds


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: flip a few bytes, truncate, insert random bytes, repeat a chunk, or overwrite a
    size-like field with a large value. Mutations near the start hit headers more often."""
    array = bytearray(data)
    kind = int(rng.integers(0, 5))
    near_header = int(rng.integers(0, min(len(array), 64)))
    anywhere = int(rng.integers(0, len(array)))
    position = near_header if rng.random() < 0.5 else anywhere
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            array[int(rng.integers(0, len(array)))] = int(rng.integers(0, 256))
    elif kind == 1:
        del array[max(1, anywhere):]
    elif kind == 2:
        array[position:position] = rng.integers(0, 256, int(rng.integers(1, 64)),
                                                dtype=np.uint8).tobytes()
    elif kind == 3:
        chunk = array[position:position + int(rng.integers(1, 200))]
        array[position:position] = chunk * int(rng.integers(1, 20))
    else:
        array[position:position + 4] = bytes([0x7F, 0xFF, 0xFF, int(rng.integers(0, 256))])
    return bytes(array)


def write_fuzzed(folder: Path, count: int, face: Image.Image, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    seeds = _seeds(face)
    paths = []
    for index in range(count):
        suffix, data = seeds[int(rng.integers(0, len(seeds)))]
        path = folder / f"f{index:05d}{suffix}"
        path.write_bytes(_mutate(data, rng))
        paths.append(path)
    return paths


def _classify_within(seconds: float, **options) -> pd.DataFrame:
    """classify_files, failing the test if it does not finish in ``seconds`` (a hang)."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["frame"] = classify_files(**options)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"classification did not finish within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["frame"]  # type: ignore[return-value]


def _check(frame: pd.DataFrame, paths: list[Path]) -> None:
    assert frame["path"].tolist() == [str(p) for p in paths]
    errors = frame["label"] == "error"
    assert (frame.loc[errors, "error"].str.len() > 0).all()
    assert frame.loc[errors, "fake_score"].isna().all()
    scored = frame[~errors]
    assert scored["error"].eq("").all()
    assert scored["fake_score"].map(math.isfinite).all()
    assert scored["fake_score"].between(0.0, 1.0).all()
    assert (scored["width"] > 0).all() and (scored["height"] > 0).all()


def _fuzz(tmp_path: Path, face: Image.Image, count: int, seed: int, seconds: float) -> None:
    paths = write_fuzzed(tmp_path, count, face, seed)
    detector = tiny_detector()
    output = tmp_path / "fuzz.csv"
    frame = _classify_within(seconds, files=paths, model=detector, face_crop=False,
                             batch_size=64, num_workers=0, output_csv=output, progress=False)
    _check(frame, paths)
    assert read_csv(output)["path"].tolist() == frame["path"].tolist()
    # Face cropping on a tenth of the files: the detector and crop stages meet the same damage.
    subset = paths[::10]
    cropped = _classify_within(seconds, files=subset, model=detector, face_crop=True,
                               batch_size=64, num_workers=0, progress=False)
    _check(cropped, subset)
    assert frame["label"].eq("error").any() and frame["label"].ne("error").any()


def test_fuzzed_files_each_give_one_row(tmp_path: Path, astronaut: Image.Image,
                                        one_torch_thread: None) -> None:
    _fuzz(tmp_path, astronaut, count=2000, seed=1, seconds=240)


@pytest.mark.fuzz
def test_fuzzed_files_each_give_one_row_long(tmp_path: Path, astronaut: Image.Image,
                                             one_torch_thread: None) -> None:
    _fuzz(tmp_path, astronaut, count=20000, seed=2, seconds=1800)
