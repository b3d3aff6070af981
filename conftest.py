"""Test environment for code that runs the default model in Jupyter kernels.

Here at the project root (not in tests/) so that it also applies to the tutorial notebooks that
nbval collects from notebooks/. Without the default model's weights (its CLIP tower is fetched by
``make tower``), those tests skip and say why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent
"""The checkout under test; kernels started by tests import the package from here."""


def project_weights_present(model: str = "default") -> bool:
    """Whether every weight file of ``model`` is in the project's weights/ folder (the default
    model's include the CLIP tower, which ``make tower`` fetches)."""
    from deepfake_toolkit.models import get_spec
    from deepfake_toolkit.models.weights import PROJECT_WEIGHTS

    return all(any((PROJECT_WEIGHTS / name).is_file() for name in weight.accepted_names)
               for weight in get_spec(model).weights)


MISSING_DEFAULT = ("the default model's weights are not all in weights/: its CLIP tower comes "
                   "with 'make tower' (make test fetches it)")


def set_kernel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment for code that runs the default model, here or in a Jupyter kernel: kernels
    import the package from the checkout under test (PYTHONPATH), offline."""
    python_path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH",
                       os.pathsep.join(filter(None, [str(PROJECT_ROOT), python_path])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toolkit's sample folder, written once per session through the CLI (one GAN face
    when gan-face-generate is installed)."""
    from deepfake_toolkit.cli import main

    folder = tmp_path_factory.mktemp("samples")
    assert main(["samples", str(folder), "--gan-faces", "1", "--overwrite"]) == 0
    return folder


@pytest.fixture()
def notebook_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the environment of :func:`set_kernel_environment` for one test; skip it without the
    default model's weights."""
    if not project_weights_present():
        pytest.skip(MISSING_DEFAULT)
    set_kernel_environment(monkeypatch)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tutorial notebooks run the default model: skip their cells without its weights."""
    if project_weights_present():
        return
    for item in items:
        if type(item).__name__ == "IPyNbCell":
            item.add_marker(pytest.mark.skip(reason=MISSING_DEFAULT))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    """Give nbval's kernels the environment of :func:`set_kernel_environment`: nbval starts a
    notebook's kernel while setting up its first cell, before any fixture runs."""
    if type(item).__name__ != "IPyNbCell":
        yield
        return
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_kernel_environment(monkeypatch)
        yield
