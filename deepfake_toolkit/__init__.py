"""deepfake_toolkit: score images for signs of being deepfakes, from Python, the CLI or Jupyter.

A score is evidence to weigh, not forensic proof: see the README for what the models can and
cannot tell.
"""

from .faces import FaceCropConfig, FaceCropper
from .scoring import Scoring, ScoringMismatchWarning
from .images import ImageReadError, find_images, load_image
from .models import (
    Detector,
    ModelSpec,
    UnknownModelError,
    WeightsNotFoundError,
    get_spec,
    list_models,
    load_model,
)
from .pipeline import classify_directory, classify_files
from .results import COLUMNS, read_csv, read_table, write_csv, write_table

__version__ = "0.1.0"

__all__ = [
    "COLUMNS",
    "Detector",
    "FaceCropConfig",
    "FaceCropper",
    "ImageReadError",
    "ModelSpec",
    "Scoring",
    "ScoringMismatchWarning",
    "UnknownModelError",
    "WeightsNotFoundError",
    "__version__",
    "classify_directory",
    "classify_files",
    "find_images",
    "get_spec",
    "list_models",
    "load_model",
    "read_csv",
    "read_table",
    "write_csv",
    "write_table",
]
