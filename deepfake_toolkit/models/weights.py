"""Finding weight files, and reading them without executing pickled code."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .spec import WeightFile

WEIGHTS_ENV = "DEEPFAKE_TOOLKIT_WEIGHTS"
"""Environment variable naming an extra folder of weight files."""

_PACKAGED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
PROJECT_WEIGHTS = (_PACKAGED_WEIGHTS if _PACKAGED_WEIGHTS.is_dir()
                   else Path(__file__).resolve().parents[2] / "weights")
"""The weights that ship with the toolkit: the project's weights/ folder beside the package in a
source checkout, or its copy inside the installed package (``deepfake_toolkit/weights``) after a
plain ``pip install``."""


class WeightsNotFoundError(FileNotFoundError):
    """A model's weight file is in none of the weight folders; the message says where to get it."""


def weight_folders(weights_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The folders searched for weight files, in order.

    Args:
        weights_dir: An explicit folder, searched first.

    Returns:
        ``weights_dir`` (if given), then ``$DEEPFAKE_TOOLKIT_WEIGHTS`` (if set), then the project's
        weights/ folder.
    """
    folders = []
    if weights_dir is not None:
        folders.append(Path(weights_dir).expanduser())
    if os.environ.get(WEIGHTS_ENV):
        folders.append(Path(os.environ[WEIGHTS_ENV]).expanduser())
    folders.append(PROJECT_WEIGHTS)
    return folders


def find_weight_file(
    weight: WeightFile, model_name: str, weights_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Locate ``weight`` in the weight folders.

    Raises:
        WeightsNotFoundError: Not found; the message names the file, the folders searched and
            where to download it.
    """
    folders = weight_folders(weights_dir)
    for folder in folders:
        for name in weight.accepted_names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    raise WeightsNotFoundError(missing_weights_message(weight, model_name, folders))


def missing_weights_message(weight: WeightFile, model_name: str, folders: list[Path]) -> str:
    """Explain which file is missing for ``model_name``, where it was looked for and how to get it."""
    names = " or ".join(f"'{name}'" for name in weight.accepted_names)
    lines = [
        f"Weights for model '{model_name}' not found: no file named {names} in",
        *[f"  - {folder}" for folder in folders],
        *download_instructions(weight),
    ]
    return "\n".join(lines)


def download_instructions(weight: WeightFile) -> list[str]:
    """Lines telling where to download ``weight``, what to do with it, and its licence."""
    lines = []
    if weight.url:
        lines.append(f"Download it from {weight.url}")
        lines.append(weight.instructions or "and put it in one of those folders.")
        lines.append(f"(Or point ${WEIGHTS_ENV} at the folder that holds it.)")
    else:
        lines.append("This file ships with the toolkit: reinstall it from a complete checkout or "
                     "wheel.")
        if weight.instructions:
            lines.append(weight.instructions)
    if weight.license and weight.license != "unknown":
        lines.append(f"Licence of these weights: {weight.license}.")
    return lines


class WeightsFileError(ValueError):
    """A weight file cannot be read: damaged, of another format, or refused as unsafe."""


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state dict (safetensors cannot hold executable code).

    Raises:
        WeightsFileError: The file is truncated, damaged or not safetensors.
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the reader's errors are of several kinds
        raise WeightsFileError(not_safetensors_message(path, exc)) from None


def safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The metadata (text key-value pairs) of a safetensors file.

    Raises:
        WeightsFileError: The file is truncated, damaged or not safetensors.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # noqa: BLE001 - the reader's errors are of several kinds
        raise WeightsFileError(not_safetensors_message(path, exc)) from None


def not_safetensors_message(path: str | os.PathLike[str], error: BaseException) -> str:
    """Say that ``path`` could not be read as safetensors, why, and what to do."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (f"{path} could not be read as a safetensors file ({reason}): it is incomplete, "
            "damaged or of another format. Download it again, or import the original file with "
            "'deepfake-toolkit weights import'.")


class UnsafeCheckpointError(WeightsFileError):
    """A pickled checkpoint holds Python objects that loading would have to execute code for."""


LIGHTNING_HYPERPARAMETER_TYPES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)
"""Where PyTorch Lightning (2.x, and 1.x as ``pytorch_lightning``) defines the dict subclass that
holds a checkpoint's ``hyper_parameters``; it is read as a plain dict."""


def load_pickled_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a ``torch.save`` file (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) without running its code.

    Uses ``torch.load(weights_only=True)``, which rebuilds only tensors and plain Python data, with
    one addition: PyTorch Lightning's ``AttributeDict`` is rebuilt as a plain ``dict``, so that
    Lightning checkpoints load. Anything else that is not plain data is refused. Tensors are mapped
    to the CPU, and memory-mapped where the format allows, so large optimizer states cost little.

    Args:
        path: The checkpoint file.

    Returns:
        The unpickled object (for Lightning, a dict with "state_dict", "hyper_parameters", ...).

    Raises:
        UnsafeCheckpointError: The file holds other Python objects; the message names them.
        WeightsFileError: The file is not a PyTorch checkpoint or is damaged.
    """
    path = Path(path)
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise WeightsFileError(
            f"{path} is a web page, not a checkpoint: the download saved the site's page (Google "
            "Drive shows one for large files) instead of the file. Download it again, confirming "
            "'Download anyway' if asked.")
    allowed = [(dict, name) for name in LIGHTNING_HYPERPARAMETER_TYPES]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(_refusal_message(path, allowed, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsFileError(
            f"{path} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}). "
            "The download may be incomplete: download it again.") from None


def _refusal_message(path: Path, allowed: list[tuple[type, str]],
                     error: pickle.UnpicklingError) -> str:
    """Why ``path`` was refused, naming the objects that are not plain data where possible."""
    try:
        with torch.serialization.safe_globals(allowed):
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - the names only improve the message
        unsafe = []
    found = ", ".join(unsafe) if unsafe else str(error).splitlines()[0]
    return (
        f"Refused to load {path}: besides weights it holds Python objects ({found}) that "
        "would have to run code from the file to be rebuilt, and the toolkit never does that. "
        "Make sure the file is the one the download instructions name "
        "(see 'deepfake-toolkit weights'); if it is, report this so the object can be reviewed "
        "and allowed.")
