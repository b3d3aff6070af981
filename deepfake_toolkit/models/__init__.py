"""Model registry, specs and loading. Importing this package registers every built-in model."""

from . import bnext, clip, cnn, fusion, pair, vit  # noqa: F401  (register the built-in models)
from .install import import_weights
from .loading import (
    PRECISIONS,
    DeviceUnavailableError,
    Detector,
    PrecisionError,
    WeightsMismatchError,
    load_model,
    resolve_device,
    save_weights,
)
from .registry import (
    UnknownModelError,
    get_spec,
    list_models,
    register_model,
    unregister_model,
    weights_available,
)
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import (
    UnsafeCheckpointError,
    WeightsFileError,
    WeightsNotFoundError,
    load_pickled_checkpoint,
    weight_folders,
)

__all__ = [
    "Detector",
    "DeviceUnavailableError",
    "HeatmapLayer",
    "ModelSpec",
    "PRECISIONS",
    "PrecisionError",
    "Preprocess",
    "UnknownModelError",
    "WeightFile",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "UnsafeCheckpointError",
    "WeightsFileError",
    "get_spec",
    "import_weights",
    "list_models",
    "load_pickled_checkpoint",
    "load_model",
    "register_model",
    "resolve_device",
    "save_weights",
    "unregister_model",
    "weight_folders",
    "weights_available",
]
