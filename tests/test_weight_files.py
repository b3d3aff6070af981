"""Crafted weight files: every malformed one is refused with a message and exit status 2, by
`classify` and by `weights import` alike; importing keeps a file's threshold and precision."""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from pathlib import Path
from typing import Callable

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from deepfake_toolkit.cli import EXIT_USAGE, main
from deepfake_toolkit.models import get_spec, import_weights, load_model, save_weights
from deepfake_toolkit.models.loading import SPEC_METADATA_KEY
from deepfake_toolkit.models.weights import PROJECT_WEIGHTS

FILENAME = get_spec("cnn").weights[0].filename


@pytest.fixture(scope="module")
def good_file(random_cnn_weights: Path) -> Path:
    return random_cnn_weights / FILENAME


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("one-image")
    Image.new("RGB", (40, 40), (120, 90, 60)).save(folder / "a.png")
    return folder


def _state(good: Path) -> dict[str, torch.Tensor]:
    return load_file(str(good))


def _metadata(good: Path) -> dict[str, str]:
    with safe_open(str(good), framework="pt") as handle:
        return dict(handle.metadata())


def _with_threshold(value: object) -> Callable[[Path, Path], None]:
    def write(good: Path, target: Path) -> None:
        record = json.loads(_metadata(good)[SPEC_METADATA_KEY])
        record["threshold"] = value
        save_file(_state(good), str(target), metadata={SPEC_METADATA_KEY: json.dumps(record)})
    return write


def _with_tensor(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path, Path], None]:
    def write(good: Path, target: Path) -> None:
        state = _state(good)
        change(state)
        save_file(state, str(target), metadata=_metadata(good))
    return write


def _header(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _set_nan(state: dict[str, torch.Tensor]) -> None:
    state["classifier.weight"][0, 0] = math.nan


def _to_bool(state: dict[str, torch.Tensor]) -> None:
    state["classifier.weight"] = state["classifier.weight"] > 0


def _to_int(state: dict[str, torch.Tensor]) -> None:
    state["classifier.bias"] = state["classifier.bias"].to(torch.int8)


def _wrong_shape(state: dict[str, torch.Tensor]) -> None:
    state["classifier.bias"] = torch.zeros(2)


def _drop_key(state: dict[str, torch.Tensor]) -> None:
    del state["classifier.bias"]


MALFORMED: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "empty": (lambda good, target: target.write_bytes(b""), "could not be read as a safetensors"),
    "truncated": (lambda good, target: target.write_bytes(good.read_bytes()[:50_000]),
                  "could not be read as a safetensors"),
    "header length past the end": (lambda good, target: target.write_bytes(
        struct.pack("<Q", 10**12) + b"{}"), "could not be read as a safetensors"),
    "header not JSON": (lambda good, target: target.write_bytes(_header(b"{not json")),
                        "could not be read as a safetensors"),
    "pickle under a safetensors name": (lambda good, target: torch.save(_state(good), target),
                                        "could not be read as a safetensors"),
    "web page": (lambda good, target: target.write_text("<!doctype html><html></html>"),
                 "could not be read as a safetensors"),
    "spec record not JSON": (lambda good, target: save_file(
        _state(good), str(target), metadata={SPEC_METADATA_KEY: "{oops"}), "not valid JSON"),
    "threshold abc": (_with_threshold("abc"), "records the threshold 'abc'"),
    "threshold 5": (_with_threshold(5), "records the threshold 5"),
    "threshold NaN": (_with_threshold(math.nan), "records the threshold nan"),
    "threshold true": (_with_threshold(True), "records the threshold True"),
    "NaN weights": (_with_tensor(_set_nan), "not numbers (NaN or infinity) in classifier.weight"),
    "bool weights": (_with_tensor(_to_bool), "wrong type keys: classifier.weight: file torch.bool"),
    "integer weights": (_with_tensor(_to_int), "wrong type keys: classifier.bias: file torch.int8"),
    "wrong shape": (_with_tensor(_wrong_shape), "wrong shape keys: classifier.bias"),
    "missing key": (_with_tensor(_drop_key), "missing keys: classifier.bias"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_weight_file_exits_2_with_a_message(
        case: str, good_file: Path, image_folder: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], no_project_weights: None) -> None:
    write, phrase = MALFORMED[case]
    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    bad = bad_folder / FILENAME
    write(good_file, bad)
    output = tmp_path / "scores.csv"
    status = main(["classify", str(image_folder), "-m", "cnn", "--weights-dir", str(bad_folder),
                   "--no-face-crop", "--quiet", "--device", "cpu", "-o", str(output)])
    classify_error = capsys.readouterr().err
    assert status == EXIT_USAGE, classify_error
    assert phrase in classify_error and "Traceback" not in classify_error
    assert not output.exists() and list(tmp_path.glob(".scores.csv.*")) == []

    status = main(["weights", "import", str(bad), "-m", "cnn", "--weights-dir",
                   str(tmp_path / "installed")])
    import_error = capsys.readouterr().err
    assert status == EXIT_USAGE, import_error
    assert phrase in import_error and "Traceback" not in import_error
    assert not (tmp_path / "installed" / FILENAME).exists()


def test_import_keeps_the_recorded_threshold_facts_and_float16(good_file: Path,
                                                               tmp_path: Path) -> None:
    spec = dataclasses.replace(get_spec("cnn"), threshold=0.4321,
                               extra={"architecture": "tf_efficientnet_lite0", "note": "kept"})
    source = save_weights(spec, _state(good_file), tmp_path / "downloaded.safetensors",
                          dtype=torch.float16)
    installed = import_weights(source, "cnn", weights_dir=tmp_path / "installed")
    recorded = json.loads(_metadata(installed)[SPEC_METADATA_KEY])
    assert recorded["threshold"] == 0.4321 and recorded["extra"]["note"] == "kept"
    assert {t.dtype for t in _state(installed).values() if t.is_floating_point()} == {
        torch.float16}
    assert installed.stat().st_size < 1.05 * source.stat().st_size
    detector = load_model("cnn", weights_dir=tmp_path / "installed", device="cpu")
    assert detector.spec.threshold == 0.4321


@pytest.mark.slow
def test_import_of_the_shipped_weights_keeps_their_threshold(tmp_path: Path) -> None:
    shipped = PROJECT_WEIGHTS / FILENAME
    if not shipped.is_file():
        pytest.skip(f"the shipped default weights are not at {shipped}")
    threshold = json.loads(_metadata(shipped)[SPEC_METADATA_KEY])["threshold"]
    installed = import_weights(shipped, "cnn", weights_dir=tmp_path)
    assert json.loads(_metadata(installed)[SPEC_METADATA_KEY])["threshold"] == threshold
    assert installed.stat().st_size < 1.05 * shipped.stat().st_size
