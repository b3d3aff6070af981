"""Model registry, specs and loading. Importing this package registers every built-in model."""

from . import default  # noqa: F401  (registers the default model)
from .registry import (
    Detector,
    UnknownModelError,
    WeightsMismatchError,
    get_spec,
    list_models,
    load_model,
    register_model,
    resolve_device,
    save_weights,
    unregister_model,
    weights_available,
)
from .spec import ModelSpec, Preprocess, WeightFile
from .weights import WeightsNotFoundError, weight_folders

__all__ = [
    "Detector",
    "ModelSpec",
    "Preprocess",
    "UnknownModelError",
    "WeightFile",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "get_spec",
    "list_models",
    "load_model",
    "register_model",
    "resolve_device",
    "save_weights",
    "unregister_model",
    "weight_folders",
    "weights_available",
]
