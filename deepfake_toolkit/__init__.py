"""deepfake_toolkit: score images for signs of being deepfakes, from Python, the CLI or Jupyter.

A score is evidence to weigh, not forensic proof: see the README for what the models can and
cannot tell.

The public names below are imported on first use, so that ``import deepfake_toolkit`` (and the
command line's start, which re-runs itself once with a faster memory allocator) does not pay for
PyTorch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "FaceCropConfig": ".faces",
    "FaceCropper": ".faces",
    "Scoring": ".scoring",
    "ScoringMismatchWarning": ".scoring",
    "ImageReadError": ".images",
    "find_images": ".images",
    "load_image": ".images",
    "Detector": ".models",
    "ModelSpec": ".models",
    "UnknownModelError": ".models",
    "WeightsNotFoundError": ".models",
    "get_spec": ".models",
    "list_models": ".models",
    "load_model": ".models",
    "classify_directory": ".pipeline",
    "classify_files": ".pipeline",
    "COLUMNS": ".results",
    "read_csv": ".results",
    "read_table": ".results",
    "write_csv": ".results",
    "write_table": ".results",
}
"""Each public name and the module that defines it."""

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what static tools and IDEs read; at run time, __getattr__ above
    from .faces import FaceCropConfig, FaceCropper
    from .images import ImageReadError, find_images, load_image
    from .models import (Detector, ModelSpec, UnknownModelError, WeightsNotFoundError, get_spec,
                         list_models, load_model)
    from .pipeline import classify_directory, classify_files
    from .results import COLUMNS, read_csv, read_table, write_csv, write_table
    from .scoring import Scoring, ScoringMismatchWarning
