"""Tiny hand-set models whose scores depend on one known property of the image."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from PIL import Image

from deepfake_toolkit.models import Detector, ModelSpec, Preprocess, WeightFile, save_weights
from deepfake_toolkit.models.weights import load_safetensors


class DetailScore(nn.Module):
    """One logit = scale * (mean absolute high-frequency detail - offset).

    JPEG compression and downscaling remove fine detail, so on a noisy image the score falls with
    the JPEG quality.
    """

    def __init__(self, offset: float = 0.0, scale: float = 200.0) -> None:
        super().__init__()
        self.offset, self.scale = offset, scale

    def detail(self, images: torch.Tensor) -> torch.Tensor:
        grey = images.mean(dim=1, keepdim=True)
        return (grey - F.avg_pool2d(grey, 3, stride=1, padding=1)).abs().mean(dim=(1, 2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.scale * (self.detail(images) - self.offset)).unsqueeze(1)


class BrightPatchScore(nn.Module):
    """Conv (brightness above grey) -> ReLU -> global mean -> linear: bright patches raise the
    score, and only the conv features at the patch respond."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 1)
        with torch.no_grad():
            self.features.weight.fill_(1.0 / 27)
            self.features.bias.fill_(-0.6)
            self.head.weight.fill_(5.0)
            self.head.bias.fill_(-1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.act(self.features(images))
        return self.head(features.mean(dim=(2, 3)))


class BrightnessScore(nn.Module):
    """One logit = weight * mean brightness + bias (a linear layer, so it has weights to save):
    with the defaults an image of mean grey level 128 scores 0.5 and brighter ones more."""

    def __init__(self, weight: float = 8.0, bias: float = -4.0) -> None:
        super().__init__()
        self.head = nn.Linear(1, 1)
        with torch.no_grad():
            self.head.weight.fill_(weight)
            self.head.bias.fill_(bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images.mean(dim=(1, 2, 3)).unsqueeze(1))


def toy_detector(module: nn.Module, name: str, input_size: int = 64,
                 threshold: float | None = 0.5, explain_layers=None) -> Detector:
    """A :class:`Detector` around ``module`` (inputs in [0, 1], sigmoid = P(fake))."""
    spec = ModelSpec(
        name=name, description=f"toy model {name}", build=lambda: module,
        load_state_dict=lambda path: module.state_dict(),
        preprocess=Preprocess(input_size=input_size, resize="exact"),
        output="sigmoid_fake", weights=(WeightFile(f"{name}.safetensors"),),
        threshold=threshold, explain_layers=explain_layers)
    return Detector(spec=spec, module=module.eval(), device=torch.device("cpu"),
                    weights_path=Path(f"{name}.safetensors"))


THRESHOLDED_MODEL = "toy_brightness"
"""Registry name of :func:`thresholded_spec`'s model."""
OWN_THRESHOLD = 0.7
"""The operating threshold the weight file of :data:`THRESHOLDED_MODEL` records."""


def thresholded_spec() -> ModelSpec:
    """A :class:`BrightnessScore` model scoring the whole image, registered without a threshold
    (its weight file, see :func:`save_thresholded_weights`, records :data:`OWN_THRESHOLD`)."""
    return ModelSpec(name=THRESHOLDED_MODEL, description="toy: brighter is faker",
                     build=BrightnessScore, load_state_dict=load_safetensors,
                     preprocess=Preprocess(input_size=16), output="sigmoid_fake",
                     weights=(WeightFile(f"{THRESHOLDED_MODEL}.safetensors"),), threshold=None,
                     face_crop=None)


def save_thresholded_weights(folder: Path) -> Path:
    """Write the weights of :func:`thresholded_spec` with :data:`OWN_THRESHOLD` recorded."""
    spec = dataclasses.replace(thresholded_spec(), threshold=OWN_THRESHOLD)
    return save_weights(spec, BrightnessScore().state_dict(), folder / spec.weights[0].filename)


def write_graded_images(root: Path) -> None:
    """Flat grey images under real/ and fake/ whose brightness sets :class:`BrightnessScore`'s
    score: some score between 0.5 and :data:`OWN_THRESHOLD`, so labels at the model's own
    threshold differ from labels at 0.5."""
    for label, levels in (("real", (70, 110, 130, 150)), ("fake", (100, 140, 160, 200))):
        (root / label).mkdir(parents=True, exist_ok=True)
        for level in levels:
            Image.new("RGB", (40, 40), (level,) * 3).save(root / label / f"g{level}.png")
