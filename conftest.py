"""Test environment for code that runs the default model in Jupyter kernels.

Here at the project root (not in tests/) so that it also applies to the tutorial notebooks that
nbval collects from notebooks/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent
"""The checkout under test; kernels started by tests import the package from here."""

_RANDOM_WEIGHTS: list[Path] = []


def project_default_weights_present() -> bool:
    """Whether the trained default weights ship in the project's weights/ folder."""
    from deepfake_toolkit.models.default import DEFAULT_WEIGHTS
    from deepfake_toolkit.models.weights import PROJECT_WEIGHTS

    return (PROJECT_WEIGHTS / DEFAULT_WEIGHTS).is_file()


def random_weights_folder(config: pytest.Config) -> Path:
    """A folder, made once per session, holding a randomly initialised (seeded) default-model
    checkpoint written by the toolkit's own writer.

    The random classifier head is scaled down 100-fold: at full scale the random features push
    every score to 1.0, while scaled down they spread around 0.6, so that thresholds, filters
    and histogram ranges in the notebook and widget tests select something.
    """
    if not _RANDOM_WEIGHTS:
        import torch

        from deepfake_toolkit.models import get_spec, save_weights

        folder = Path(tempfile.mkdtemp(prefix="deepfake_toolkit_weights_"))
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))
        spec = get_spec("default")
        torch.manual_seed(0)
        state = spec.build().state_dict()
        state["classifier.weight"] = state["classifier.weight"] * 0.01
        save_weights(spec, state, folder / spec.weights[0].filename)
        _RANDOM_WEIGHTS.append(folder)
    return _RANDOM_WEIGHTS[0]


def set_kernel_environment(monkeypatch: pytest.MonkeyPatch, config: pytest.Config) -> None:
    """Environment for code that runs the default model, here or in a Jupyter kernel.

    Kernels import the package from the checkout under test (PYTHONPATH). Until the trained
    default weights are in weights/, ``$DEEPFAKE_TOOLKIT_WEIGHTS`` points at a randomly
    initialised checkpoint, so notebooks run end to end; once weights/ has them, they are used.
    """
    from deepfake_toolkit.models.weights import WEIGHTS_ENV

    python_path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH",
                       os.pathsep.join(filter(None, [str(PROJECT_ROOT), python_path])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not project_default_weights_present():
        monkeypatch.setenv(WEIGHTS_ENV, str(random_weights_folder(config)))


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toolkit's sample folder, written once per session through the CLI (one GAN face
    when gan-face-generate is installed)."""
    from deepfake_toolkit.cli import main

    folder = tmp_path_factory.mktemp("samples")
    assert main(["samples", str(folder), "--gan-faces", "1", "--overwrite"]) == 0
    return folder


@pytest.fixture()
def notebook_env(monkeypatch: pytest.MonkeyPatch, pytestconfig: pytest.Config) -> None:
    """Set the environment of :func:`set_kernel_environment` for one test."""
    set_kernel_environment(monkeypatch, pytestconfig)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    """Give nbval's kernels the environment of :func:`set_kernel_environment`: nbval starts a
    notebook's kernel while setting up its first cell, before any fixture runs."""
    if type(item).__name__ != "IPyNbCell":
        yield
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_kernel_environment(monkeypatch, item.config)
        yield
