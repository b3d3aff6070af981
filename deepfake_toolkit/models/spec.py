"""What a model is: its preprocessing, its output and its weight files, in one record.

Preprocessing travels with the weights: a :class:`ModelSpec` names the exact transform a model was
trained with, so inference can never silently feed it the wrong input.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from ..faces import FaceCropConfig

Interpolation = Literal["bilinear", "bicubic", "nearest", "lanczos"]
ScoreOutput = Literal["sigmoid_fake", "sigmoid_real", "softmax"]


@dataclass(frozen=True)
class HeatmapLayer:
    """A layer Grad-CAM heatmaps read (see :mod:`deepfake_toolkit.explain`).

    Args:
        module: The layer, inside the built model.
        prefix_tokens: None when it outputs (N, C, H, W) feature maps; for a transformer layer
            that outputs (N, T, C) tokens, the number of tokens (class token, registers) before
            the square grid of patch tokens.
    """

    module: torch.nn.Module
    prefix_tokens: int | None = None


@dataclass(frozen=True)
class Preprocess:
    """The transform from an RGB image to the model's input tensor.

    Args:
        input_size: Side of the square tensor the model takes, in pixels.
        resize: "exact" resizes straight to ``input_size`` x ``input_size`` (aspect ratio not
            kept); "shorter" resizes the shorter side to ``resize_size`` keeping the aspect
            ratio, then centre-crops ``input_size``.
        resize_size: Shorter-side length for ``resize="shorter"`` (ignored for "exact").
        interpolation: Resampling filter for the resize.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after the mean.
    """

    input_size: int = 224
    resize: Literal["exact", "shorter"] = "exact"
    resize_size: int | None = None
    interpolation: Interpolation = "bilinear"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if self.resize == "shorter" and (self.resize_size or 0) < self.input_size:
            raise ValueError("resize='shorter' needs resize_size >= input_size")


@dataclass(frozen=True)
class WeightFile:
    """A weight file a model needs, and where a user gets it.

    Args:
        filename: File name looked up in the weight folders.
        url: Where to download it (None when it ships with the toolkit).
        sha256: Expected SHA-256 of the file, when known.
        size_bytes: Expected size, when known.
        license: Licence of the weights.
        source: Who made the weights (paper, author, repository).
        instructions: Extra steps after downloading (e.g. the ``weights import`` command).
        alternatives: Other names accepted in place of ``filename``, as paths relative to a
            weight folder, in order of preference (e.g. the author's original download, read as
            it is); the spec's ``load_state_dict`` must read every one of them.
    """

    filename: str
    url: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    license: str = "unknown"
    source: str = ""
    instructions: str = ""
    alternatives: tuple[str, ...] = ()

    @property
    def accepted_names(self) -> tuple[str, ...]:
        """``filename`` followed by its alternatives, in the order they are looked for."""
        return (self.filename, *self.alternatives)


@dataclass(frozen=True)
class ModelSpec:
    """A registered detector.

    Args:
        name: Registry name, e.g. "default" or "bnext_m_dffd".
        description: One line for listings.
        build: Builds the untrained ``torch.nn.Module`` (no weights loaded).
        load_state_dict: Reads a weight file into a state dict for the module ``build`` returns.
        preprocess: The input transform the weights were trained with.
        output: How the module's output becomes P(fake): "sigmoid_fake" (one logit, sigmoid is
            P(fake)), "sigmoid_real" (one logit, sigmoid is P(real)) or "softmax" (class logits,
            ``fake_index`` is the fake class).
        fake_index: Index of the fake class for ``output="softmax"``.
        weights: The weight files, the first being the one loaded.
        threshold: Operating threshold on fake_score chosen on validation data, or None when the
            model has none (labels then use the score bands).
        face_crop: The region the model was trained and validated on: a face crop made with
            these settings, or None for the whole image. Weights that record their own (every
            file the toolkit writes does) replace it when loaded.
        extra: Free-form facts for model cards and listings (paper, parameters, metrics).
        channels_last: Run the module in channels-last memory layout. Results are the same up to
            float rounding; mobile-style CNNs (depthwise convolutions) run about 1.4x faster for
            inference and 1.6-1.9x faster for training on CPU this way.
        explain_layers: Picks the layers Grad-CAM heatmaps are computed on from the built module
            (the last convolutional stage of a CNN; a transformer's last block norm; one per
            branch of a fused model, whose maps add up), or None when the model has no heatmaps
            (see :mod:`deepfake_toolkit.explain`).
    """

    name: str
    description: str
    build: Callable[[], torch.nn.Module]
    load_state_dict: Callable[[str], dict[str, torch.Tensor]]
    preprocess: Preprocess
    output: ScoreOutput
    weights: tuple[WeightFile, ...]
    fake_index: int = 1
    threshold: float | None = None
    face_crop: FaceCropConfig | None = FaceCropConfig()
    extra: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    explain_layers: Callable[[torch.nn.Module], tuple[HeatmapLayer, ...]] | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        """The memory layout the module and its inputs use (see ``channels_last``)."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def scores_from_output(self, output: torch.Tensor) -> torch.Tensor:
        """Turn the module's raw output for a batch into fake_score = P(fake), shape (N,)."""
        output = output.float()
        if self.output == "softmax":
            return torch.softmax(output, dim=-1)[:, self.fake_index]
        logit = output.reshape(output.shape[0], -1)[:, 0]
        probability = torch.sigmoid(logit)
        return probability if self.output == "sigmoid_fake" else 1.0 - probability

    def describe(self) -> dict[str, Any]:
        """The spec as plain data (JSON-ready, lists not tuples), without the code parts."""
        described = {
            "name": self.name,
            "description": self.description,
            "preprocess": dataclasses.asdict(self.preprocess),
            "output": self.output,
            "fake_index": self.fake_index,
            "threshold": self.threshold,
            "face_crop": (None if self.face_crop is None
                          else dataclasses.asdict(self.face_crop)),
            "weights": [dataclasses.asdict(w) for w in self.weights],
            "extra": self.extra,
        }
        return json.loads(json.dumps(described, default=str))
