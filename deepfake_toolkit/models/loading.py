"""Loading a registered model for inference: weight files read without running code, strict
key checks, and the spec recorded with the weights (preprocessing, output convention, operating
threshold and face-crop settings) checked against the registered one."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..files import make_readable
from ..scoring import Scoring, face_config_from_record
from .registry import get_spec
from .spec import ModelSpec
from .transforms import ImageTransform
from .weights import WeightsFileError, find_weight_file, safetensors_metadata

SPEC_METADATA_KEY = "deepfake_toolkit.spec"
"""Key of the safetensors metadata entry that records the spec a weight file was made for."""


class WeightsMismatchError(ValueError):
    """A weight file does not fit its model (keys, shapes, or recorded preprocessing)."""


class DeviceUnavailableError(ValueError):
    """The device asked for does not exist here (CUDA without a usable GPU, or no such name)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a :class:`torch.device`.

    Raises:
        DeviceUnavailableError: CUDA was asked for but is not available, or the name is not a
            device.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceUnavailableError(f"unknown device '{device}': use auto, cpu or cuda") \
            from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("device 'cuda' was asked for but this machine has no "
                                     "usable CUDA GPU: use --device cpu (or auto)")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"device '{device}' was asked for but this machine has "
                                     f"{torch.cuda.device_count()} CUDA GPU(s)")
    return resolved


CPU_FORWARD_PIXELS = 4 * 224 * 224
"""Input pixels per forward pass on a CPU: 4 images of 224 px (see :func:`cpu_pass_images`).
Measured on 2 cores (2026-12-03), 32 images of 224 px, medians of 4 alternating rounds: the
`default` model took 6.2 s in passes of 4, 6.7 s in passes of 8 and 7.2 s in passes of 16
(bfloat16: 2.3, 2.4, 2.7 s); `cnn` 0.21 and 0.22 s in passes of 4 and 8, 0.52 s in passes of
16. Each pass's activations are freed before the next, so smaller passes also keep the process
smaller: a face-crop run of the `default` model on 150 photos peaked at 1,810 MiB PSS (process
and workers) in passes of 4 against 1,989 MiB in passes of 8. A small input gets more images per
pass, as each call has a fixed cost: `cnn` at 32 px took 50, 26 and 13 ms per 32 images in passes
of 4, 8 and 32. A GPU takes the whole batch at once."""


def cpu_pass_images(batch: torch.Tensor) -> int:
    """Images of ``batch`` (N, C, H, W) per forward pass on a CPU: as many as hold
    :data:`CPU_FORWARD_PIXELS` input pixels, at least one."""
    return max(1, CPU_FORWARD_PIXELS // (batch.shape[-2] * batch.shape[-1]))


@dataclass
class Detector:
    """A model ready for inference: its spec, its module in eval mode, and its device.

    Get one with :func:`load_model`.
    """

    spec: ModelSpec
    module: torch.nn.Module
    device: torch.device
    weights_path: Path
    precision: str = "float32"
    """What the module computes in: "float32", or "bfloat16" where it has parts that run in
    reduced precision (the CLIP tower) and they do (see :func:`resolve_precision`)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def scoring(self) -> Scoring:
        """The model's own scoring policy: the region it was trained and validated on (face crop
        settings, or the whole image) and its operating threshold. Entry points start from this
        and apply the user's overrides (:meth:`Scoring.override`)."""
        return Scoring(face=self.spec.face_crop, threshold=self.spec.threshold)

    @property
    def transform(self) -> ImageTransform:
        """The spec's image-to-tensor transform (picklable, for DataLoader workers)."""
        return ImageTransform(self.spec.preprocess)

    @torch.inference_mode()
    def predict(self, batch: torch.Tensor) -> np.ndarray:
        """fake_score = P(fake) for a batch of transformed images, shape (N,).

        On a CPU the module sees :func:`cpu_pass_images` images at a time (4 of 224 px): the
        scores are the same, and the activations held at once (and kept by the allocator
        afterwards) are an eighth of a 32-image pass's.
        """
        batch = batch.to(self.device, non_blocking=True, memory_format=self.spec.memory_format)
        per_pass = cpu_pass_images(batch)
        if self.device.type == "cpu" and len(batch) > per_pass:
            output = torch.cat([self.module(part) for part in batch.split(per_pass)])
        else:
            output = self.module(batch)
        return self.spec.scores_from_output(output).cpu().numpy().astype(np.float64)

    def predict_images(self, images: list) -> np.ndarray:
        """fake_score for a list of RGB PIL images (no face crop; see the pipeline for that)."""
        if not images:
            return np.zeros(0)
        transform = self.transform
        return self.predict(torch.stack([transform(image) for image in images]))


PRECISIONS = ("auto", "float32", "bfloat16")
PRECISION_ENV = "DEEPFAKE_TOOLKIT_PRECISION"
"""Environment variable that sets :func:`load_model`'s default precision (one of
:data:`PRECISIONS`), for every entry point and worker process at once."""


class PrecisionError(ValueError):
    """A precision that is not one of :data:`PRECISIONS`."""


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products in hardware: a CUDA GPU that
    supports it, or an x86 CPU with AVX512-BF16 or AMX (where oneDNN runs them about 3x faster
    than float32; without them bfloat16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info
                          if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str | None, device: torch.device) -> str:
    """The precision a model's reduced-precision parts run in.

    float32 is the default: it gives the same scores on every machine, to about 1e-6. bfloat16
    runs the CLIP tower about 2-3x faster on hardware that computes it natively, and moves
    scores a little (measured on 517 validation faces with ``default``: median 0.001, 99th
    percentile 0.06, largest 0.15; 7 labels of 517 changed, AUC 0.956 against 0.957).

    Args:
        requested: "float32", "bfloat16", "auto" (bfloat16 where :func:`native_bfloat16`, else
            float32), or None for ``$DEEPFAKE_TOOLKIT_PRECISION`` (default float32).

    Raises:
        PrecisionError: Not one of :data:`PRECISIONS`.
    """
    if requested is None:
        requested = os.environ.get(PRECISION_ENV, "").strip().lower() or "float32"
    if requested not in PRECISIONS:
        raise PrecisionError(f"unknown precision {requested!r} (from ${PRECISION_ENV} or "
                             f"precision=): use one of {', '.join(PRECISIONS)}")
    if requested == "auto":
        return "bfloat16" if native_bfloat16(device) else "float32"
    return requested


def set_precision(module: torch.nn.Module, precision: str) -> str:
    """Make the parts of ``module`` that can run in reduced precision (those with a
    ``compute_dtype``: the CLIP tower) run in ``precision``.

    Returns:
        The precision the module now computes in: ``precision``, or "float32" when no part of it
        has a reduced-precision mode (the CNN, BNext and ViT always compute in float32).
    """
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]
    parts = [m for m in module.modules() if hasattr(m, "compute_dtype")]
    for part in parts:
        part.compute_dtype = dtype
    return precision if parts else "float32"


def load_model(
    name: str = "default",
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    precision: str | None = None,
) -> Detector:
    """Build model ``name`` and load its weights for inference.

    Args:
        name: Registry name (see :func:`list_models`).
        weights_dir: Folder searched first for weight files (then $DEEPFAKE_TOOLKIT_WEIGHTS, then
            the project's weights/).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        precision: What the CLIP tower of the models that have one computes in: "float32",
            "bfloat16" (faster, scores move a little: see :func:`resolve_precision`) or "auto"
            (bfloat16 where the device computes it natively, see :func:`native_bfloat16`);
            None reads ``$DEEPFAKE_TOOLKIT_PRECISION`` (default float32).

    Returns:
        A :class:`Detector` in eval mode on ``device``.

    Raises:
        UnknownModelError: No such model.
        WeightsNotFoundError: A weight file is missing (the message says where to get it).
        WeightsMismatchError: The weight file does not fit the model (missing or unexpected keys,
            wrong shapes or types, or it records a different preprocessing than the spec).
        WeightsFileError: The weight file cannot be read, is damaged (values that are not
            numbers, bad recorded metadata) or was refused as unsafe.
        PrecisionError: ``precision`` (or the environment variable) is not one of
            :data:`PRECISIONS`.
    """
    spec = get_spec(name)
    resolved = resolve_device(device)
    computes = resolve_precision(precision, resolved)
    path = find_weight_file(spec.weights[0], spec.name, weights_dir)
    spec, state_dict = read_weights(spec, path)
    module = build_loaded(spec.build, state_dict, f"{path} for model '{spec.name}'")
    del state_dict
    module.to(resolved, memory_format=spec.memory_format).eval()
    return Detector(spec=spec, module=module, device=resolved, weights_path=path,
                    precision=set_precision(module, computes))


def read_weights(spec: ModelSpec, path: str | os.PathLike[str]
                 ) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Read a weight file for ``spec``, checking everything that can be checked without the
    module: the recorded spec (preprocessing, output convention, threshold, face-crop settings)
    and that the file
    reads as a state dict of tensors. Every entry point (loading a model, importing weights)
    reads weight files through here and :func:`load_strict`.

    Returns:
        ``spec`` with the operating threshold, the face-crop settings and the facts recorded with
        the weights (they were chosen and measured with these weights, so they travel with them),
        and the state dict.

    Raises:
        WeightsFileError: The file cannot be read, or its recorded metadata is damaged.
        WeightsMismatchError: The file records another preprocessing or output convention.
    """
    spec = _with_record(spec, check_recorded_spec(spec, path))
    try:
        state_dict = spec.load_state_dict(str(path))
    except (WeightsFileError, WeightsMismatchError):
        raise
    except Exception as exc:  # noqa: BLE001 - a reader's errors on a bad file are of many kinds
        raise WeightsFileError(
            f"{path} could not be read as weights for model '{spec.name}' "
            f"({type(exc).__name__}: {exc}). The download may be incomplete or the file of "
            "another format: download it again.") from None
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise WeightsFileError(f"{path} does not hold a state dict of named tensors")
    return spec, state_dict


def _with_record(spec: ModelSpec, recorded: dict | None) -> ModelSpec:
    """``spec`` with what its weight file records: operating threshold, face-crop settings and
    facts (they were chosen and measured with these weights, so they travel with them)."""
    if not recorded:
        return spec
    extra = recorded.get("extra")
    threshold = recorded.get("threshold")
    return dataclasses.replace(
        spec, threshold=float(threshold) if threshold is not None else spec.threshold,
        extra={**spec.extra, **extra} if isinstance(extra, dict) else spec.extra,
        face_crop=(face_config_from_record(recorded["face_crop"]) if "face_crop" in recorded
                   else spec.face_crop))


def recorded_policy(name: str, weights_dir: str | os.PathLike[str] | None = None) -> Scoring:
    """Model ``name``'s own scoring policy as its weight file records it, read from the file's
    metadata without loading the weights (for listings; a loaded model has ``.scoring``).

    Raises:
        WeightsNotFoundError, WeightsFileError, WeightsMismatchError: As :func:`load_model`.
    """
    spec = get_spec(name)
    path = find_weight_file(spec.weights[0], spec.name, weights_dir)
    spec = _with_record(spec, check_recorded_spec(spec, path))
    return Scoring(face=spec.face_crop, threshold=spec.threshold)


def policy_summary(name: str, weights_dir: str | os.PathLike[str] | None = None) -> str:
    """Model ``name``'s own policy in a few words, e.g. "face crop (mtcnn, margin 0.1), threshold
    0.5291": as its weight file records it, else as registered (weights missing or damaged)."""
    try:
        policy = recorded_policy(name, weights_dir)
    except Exception:  # noqa: BLE001 - a listing must not fail on one missing or damaged file
        spec = get_spec(name)
        policy = Scoring(face=spec.face_crop, threshold=spec.threshold)
    region = ("whole image" if policy.face is None
              else f"face crop ({policy.face.detector}, margin {policy.face.margin:g})")
    return f"{region}, {policy.rule.replace(' (model)', '')}"


def build_loaded(build: Callable[[], torch.nn.Module], state_dict: dict[str, torch.Tensor],
                 what: str) -> torch.nn.Module:
    """``build()``'s module holding the tensors of ``state_dict``, checked by :func:`load_strict`.

    The module is built on PyTorch's "meta" device (shapes, no memory) and takes the file's
    tensors as its own, so that loading holds one copy of the weights instead of two: for the
    CLIP tower's 86 million parameters that is 0.34 GB less at its peak, which an allocator such
    as tcmalloc otherwise keeps for the whole run. A module with non-persistent buffers (constants
    set in its constructor, which no file holds) is built the ordinary way and copied into.
    """
    with torch.device("meta"):
        module = build()
    persistent = set(module.state_dict())
    if any(name not in persistent for name, _ in module.named_buffers()):
        module = build()
    load_strict(module, state_dict, what)
    return module


def load_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state_dict`` into ``module`` requiring exactly its keys, shapes and kinds of value,
    and finite floating-point values.

    Floating-point values of another precision (float16 for a float32 module) are converted;
    a tensor of another kind (bool or integer for a floating-point parameter) is refused.

    Raises:
        WeightsMismatchError: Listing missing keys, unexpected keys, shape and type mismatches.
        WeightsFileError: Some values are not finite numbers (NaN or infinity).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    common = sorted(set(own) & set(state_dict))
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in common if tuple(own[k].shape) != tuple(state_dict[k].shape)
    ]
    wrong_type = [
        f"{k}: file {state_dict[k].dtype} vs model {own[k].dtype}"
        for k in common if _value_kind(state_dict[k]) != _value_kind(own[k])
    ]
    if missing or unexpected or mismatched or wrong_type:
        parts = [f"weights {what} do not fit the model:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", mismatched), ("wrong type", wrong_type)):
            if keys:
                shown = ", ".join(keys[:20]) + (f" ... ({len(keys)} in all)" if len(keys) > 20 else "")
                parts.append(f"  {title} keys: {shown}")
        raise WeightsMismatchError("\n".join(parts))
    not_finite = [k for k in common if state_dict[k].is_floating_point()
                  and not bool(torch.isfinite(state_dict[k]).all())]
    if not_finite:
        shown = ", ".join(not_finite[:20]) + (f" ... ({len(not_finite)} in all)"
                                              if len(not_finite) > 20 else "")
        raise WeightsFileError(f"weights {what} hold values that are not numbers (NaN or "
                               f"infinity) in {shown}: the file is damaged; download it again")
    # A module built on the meta device takes the tensors themselves; any other is copied into.
    on_meta = any(value.is_meta for value in own.values())
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state_dict.items()},
                           assign=on_meta)


def _value_kind(tensor: torch.Tensor) -> str:
    if tensor.dtype == torch.bool:
        return "bool"
    if tensor.is_complex():
        return "complex"
    return "float" if tensor.is_floating_point() else "integer"


def recorded_spec(path: str | os.PathLike[str]) -> dict | None:
    """The spec recorded in a safetensors file's metadata, or None (other formats, or none).

    Raises:
        WeightsFileError: The file is not readable safetensors, or the record is not a JSON
            object with a threshold that is empty or a number in [0, 1].
    """
    if not str(path).endswith(".safetensors"):
        return None
    text = safetensors_metadata(path).get(SPEC_METADATA_KEY)
    if not text:
        return None
    try:
        recorded = json.loads(text)
    except ValueError as exc:
        raise WeightsFileError(f"{path}: the spec recorded with the weights is not valid JSON "
                               f"({exc}): the file is damaged; download it again") from None
    if not isinstance(recorded, dict):
        raise WeightsFileError(f"{path}: the spec recorded with the weights is not a record: "
                               "the file is damaged; download it again")
    threshold = recorded.get("threshold")
    if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0):
        raise WeightsFileError(f"{path} records the threshold {threshold!r}, which is not a "
                               "number between 0 and 1: the file is damaged; download it again")
    if "face_crop" in recorded:
        try:
            face_config_from_record(recorded["face_crop"])
        except (TypeError, ValueError) as exc:
            raise WeightsFileError(f"{path} records face-crop settings that cannot be used "
                                   f"({exc}): the file is damaged; download it again") from None
    return recorded


def check_recorded_spec(spec: ModelSpec, path: str | os.PathLike[str]) -> dict | None:
    """Refuse weights whose recorded preprocessing or output convention differs from ``spec``.

    Returns:
        The recorded spec (None when the file records none).
    """
    recorded = recorded_spec(path)
    if recorded is None:
        return None
    expected = spec.describe()
    for key in ("preprocess", "output", "fake_index"):
        if key in recorded and recorded[key] != expected[key]:
            raise WeightsMismatchError(
                f"{path} was saved for {key}={recorded[key]!r} but model '{spec.name}' uses "
                f"{key}={expected[key]!r}: these weights belong to another model or version"
            )
    return recorded


def save_weights(
    spec: ModelSpec, state_dict: dict[str, torch.Tensor], path: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``state_dict`` as safetensors with ``spec`` recorded in the metadata.

    Args:
        spec: The model the weights are for (its preprocessing is recorded with them).
        state_dict: Tensors to save.
        path: Target file; written to a temporary name first, then renamed.
        dtype: Cast floating-point tensors to this type (e.g. torch.float16) to save space.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(temporary), metadata={SPEC_METADATA_KEY: json.dumps(spec.describe())})
    make_readable(temporary)
    os.replace(temporary, path)
    return path
