"""Finding weight files, and reading them without executing pickled code."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .spec import WeightFile

WEIGHTS_ENV = "DEEPFAKE_TOOLKIT_WEIGHTS"
"""Environment variable naming an extra folder of weight files."""

PROJECT_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
"""The project's own weights/ folder (beside the package in a source checkout)."""


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
        candidate = folder / weight.filename
        if candidate.is_file():
            return candidate
    raise WeightsNotFoundError(missing_weights_message(weight, model_name, folders))


def missing_weights_message(weight: WeightFile, model_name: str, folders: list[Path]) -> str:
    """Explain which file is missing for ``model_name``, where it was looked for and how to get it."""
    lines = [
        f"Weights for model '{model_name}' not found: no file named '{weight.filename}' in",
        *[f"  - {folder}" for folder in folders],
    ]
    if weight.url:
        lines.append(f"Download it from {weight.url}")
        lines.append(
            f"and put it in one of those folders (or point ${WEIGHTS_ENV} at its folder)."
        )
    else:
        lines.append("This file ships with the toolkit: reinstall it from a complete checkout.")
    if weight.instructions:
        lines.append(weight.instructions)
    if weight.license and weight.license != "unknown":
        lines.append(f"Licence of these weights: {weight.license}.")
    return "\n".join(lines)


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a safetensors file into a state dict (safetensors cannot hold executable code)."""
    from safetensors.torch import load_file

    return load_file(str(path))
