"""Shared fixtures: offline settings, generated images and checkpoints the tests build themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"
torch.manual_seed(0)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces-train"
"""The labelled training images beside the project (absent on a user's machine)."""


REQUIRE_ENV = "DEEPFAKE_TOOLKIT_REQUIRE_TESTS"
"""Comma-separated markers (e.g. "browser,train") whose tests must run: CI sets it, so that a
test skipped for a missing install fails the run instead of passing unseen."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    required = {m.strip() for m in os.environ.get(REQUIRE_ENV, "").split(",") if m.strip()}
    marked = sorted(m for m in required if item.get_closest_marker(m))
    if report.skipped and marked:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is required ({REQUIRE_ENV} names "
                           f"{', '.join(marked)}) but was skipped: {reason}")


def needs_shared_data() -> pytest.MarkDecorator:
    """Skip marker for tests that read ../shared/data/faces-train."""
    return pytest.mark.skipif(not SHARED_DATA.is_dir(),
                              reason=f"labelled face data not found at {SHARED_DATA}")


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """A real, public-domain photo with one face (scikit-image's astronaut, NASA)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def no_face_image() -> Image.Image:
    """A real photo with no face in it (scikit-image's coffee cup)."""
    from skimage import data

    return Image.fromarray(data.coffee())


def rows_written(path: Path) -> int:
    """Rows a CSV holds so far, its header not counted (0 while it does not exist)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except OSError:
        return 0


@pytest.fixture(scope="session")
def random_cnn_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a randomly initialised checkpoint of the CNN (``cnn``), saved by the
    toolkit's own writer (so the real loading code is exercised)."""
    from deepfake_toolkit.models import get_spec, save_weights

    folder = tmp_path_factory.mktemp("weights")
    spec = get_spec("cnn")
    torch.manual_seed(0)
    state = spec.build().state_dict()
    # A small head keeps random scores away from 0 and 1, so labels and thresholds vary.
    state["classifier.weight"] = state["classifier.weight"] * 0.05
    save_weights(spec, state, folder / spec.weights[0].filename)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on a small shared machine, more threads oversubscribe the cores and
    make the convolutions many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def no_project_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep real weight files (the shipped ones, or a developer's) out of a test."""
    from deepfake_toolkit.models import weights

    monkeypatch.setattr(weights, "PROJECT_WEIGHTS", tmp_path / "project-weights")
    monkeypatch.delenv(weights.WEIGHTS_ENV, raising=False)


@pytest.fixture()
def rgb_noise() -> Image.Image:
    """A small random RGB image."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8))


@pytest.fixture(scope="session")
def graded_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Labelled images for the toy model with a recorded threshold (see
    :func:`tests.toy_models.write_graded_images`)."""
    from .toy_models import write_graded_images

    root = tmp_path_factory.mktemp("graded")
    write_graded_images(root)
    return root


@pytest.fixture(scope="session")
def thresholded_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Registers the toy model whose weight file records an operating threshold its registered
    spec lacks (:data:`tests.toy_models.THRESHOLDED_MODEL`); yields its weights folder."""
    from deepfake_toolkit.models import register_model, unregister_model

    from .toy_models import THRESHOLDED_MODEL, save_thresholded_weights, thresholded_spec

    folder = tmp_path_factory.mktemp("toy-weights")
    save_thresholded_weights(folder)
    register_model(thresholded_spec())
    yield folder
    unregister_model(THRESHOLDED_MODEL)
