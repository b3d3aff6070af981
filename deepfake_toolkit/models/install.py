"""Installing a downloaded weight file: check it against its model, convert it, save safetensors."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .loading import WeightsMismatchError, build_loaded, read_weights, save_weights
from .registry import get_spec
from .weights import weight_folders


def import_weights(
    source: str | os.PathLike[str],
    model: str,
    weights_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Check a downloaded weight file for model ``model`` and install it as safetensors.

    The file is read the way the model reads it (pickled checkpoints without running their code,
    transformers layouts converted), loaded strictly into a freshly built module, run once on a
    grey image to check that the output is finite, and saved under the model's weight file name
    with the spec recorded in the metadata. A threshold and facts recorded in the source file are
    kept, and so is its precision (float16 weights stay float16). The source file is left in
    place.

    Args:
        source: The downloaded file (e.g. ``dffd_M_unfrozen.ckpt`` or ``model.safetensors``).
        model: Registry name of the model the file is for.
        weights_dir: Folder to install into; default ``$DEEPFAKE_TOOLKIT_WEIGHTS`` if set, else the
            project's weights/ folder.
        overwrite: Replace an installed file of the same name.

    Returns:
        Path of the installed safetensors file.

    Raises:
        UnknownModelError: No such model.
        FileNotFoundError: ``source`` does not exist.
        FileExistsError: The target exists and ``overwrite`` is False.
        WeightsFileError: The file cannot be read, or was refused as unsafe.
        WeightsMismatchError: The file does not fit the model.
    """
    spec = get_spec(model)
    source = Path(source).expanduser()
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist or is not a file")
    target = weight_folders(weights_dir)[0] / spec.weights[0].filename
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists: pass overwrite=True (--force) to "
                              "replace it")
    if source.resolve() == target.resolve():
        raise FileExistsError(f"{source} is already the installed file of model '{model}'")
    spec, state_dict = read_weights(spec, source)
    module = build_loaded(spec.build, state_dict, f"{source} for model '{model}'")
    module.eval()
    size = spec.preprocess.input_size
    with torch.inference_mode():
        output = module(torch.full((1, 3, size, size), 0.5))
    if not torch.isfinite(output).all():
        raise WeightsMismatchError(f"{source} loads into model '{model}' but gives non-finite "
                                   "outputs: the file is damaged; download it again")
    return save_weights(spec, module.state_dict(), target, dtype=_common_float_type(state_dict))


def _common_float_type(state_dict: dict[str, torch.Tensor]) -> torch.dtype | None:
    """The floating-point type of every floating-point tensor, when they share one."""
    kinds = {value.dtype for value in state_dict.values() if value.is_floating_point()}
    return kinds.pop() if len(kinds) == 1 else None
