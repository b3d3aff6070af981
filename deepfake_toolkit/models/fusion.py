"""``cnn_clip_fusion``: the CNN (``cnn``) and the CLIP probe, stacked (the ``default`` detector
from 2026-12-02 until the probe pair of :mod:`.pair` replaced it the same day).

Both detectors score the same face crop; the fused logit is ``a * cnn_logit + b * clip_logit + c``
with ``a, b, c`` fitted on validation images that neither detector was trained on (class-balanced
logistic regression, so sigmoid of the fused logit is a calibrated P(fake) at equal priors). The
weight file carries its own copy of the CNN and the probe head, so the stacking always meets the
detectors it was fitted with; only the CLIP tower is read from the user's copy (see
:data:`deepfake_toolkit.models.clip.CLIP_TOWER_WEIGHTS`).
"""

from __future__ import annotations

import torch
from torch import nn

from .clip import CLIP_MEAN, CLIP_STD, CLIP_TOWER_WEIGHTS, ClipProbe, \
    ClipTowerConfig, check_recorded_features, find_tower, probe_heatmap_layers, tower_state_dict
from .cnn import build_cnn, last_conv_stage
from .registry import register_model
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import load_safetensors

FUSION_WEIGHTS = "clip_fusion.safetensors"

FUSION_PROBE_FEATURES = ("embeds",)
"""What the fusion's probe head reads (as the shipping run of the protocol chose it)."""


class FusedDetector(nn.Module):
    """CNN + CLIP probe on one input (RGB in [0, 1], 224 x 224), one stacked logit.

    Each branch gets its own normalisation: (x - 0.5) / 0.5 for the CNN (as `cnn`),
    CLIP's mean/std for the probe.
    """

    def __init__(self, features: tuple[str, ...] = FUSION_PROBE_FEATURES,
                 config: ClipTowerConfig | None = None) -> None:
        super().__init__()
        self.cnn = build_cnn()
        self.probe = ClipProbe(features, config)
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("stack_weight", torch.tensor([1.0, 1.0]))
        self.register_buffer("stack_bias", torch.tensor([0.0]))

    def branch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2): the CNN's logit and the probe's logit."""
        cnn = self.cnn((x - 0.5) / 0.5).reshape(-1).float()
        clip = self.probe((x - self.clip_mean) / self.clip_std).reshape(-1)
        return torch.stack([cnn, clip], dim=1)

    def stack(self, logits: torch.Tensor) -> torch.Tensor:
        """The fused logit, (N, 1), for branch logits (N, 2)."""
        return (logits.float() @ self.stack_weight + self.stack_bias).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(self.branch_logits(x))


def load_fusion(path: str) -> dict[str, torch.Tensor]:
    """The fusion file (CNN, probe head, stacking) plus the CLIP tower found beside it."""
    check_recorded_features(path, FUSION_PROBE_FEATURES)
    state = load_safetensors(path)
    return {**state, **tower_state_dict(find_tower(path, "cnn_clip_fusion"), prefix="probe.tower.")}


def fusion_heatmap_layers(module: FusedDetector) -> tuple[HeatmapLayer, ...]:
    """Both branches' heatmap layers (the CNN's last conv stage, the probe's block norm): their
    Grad-CAM maps of the fused logit, each as evidence per pixel, add up to the fusion's map."""
    return (*last_conv_stage(module.cnn), *probe_heatmap_layers(module.probe))


def build_fusion() -> FusedDetector:
    """The registered fusion's module, no weights loaded."""
    return FusedDetector(FUSION_PROBE_FEATURES)


FUSION_SPEC = register_model(ModelSpec(
    name="cnn_clip_fusion",
    description="The CNN (cnn) + the CLIP probe, stacked and calibrated on validation scores",
    build=build_fusion,
    load_state_dict=load_fusion,
    preprocess=Preprocess(input_size=224, resize="exact", interpolation="bilinear",
                          mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    output="sigmoid_fake",
    weights=(
        WeightFile(filename=FUSION_WEIGHTS, license="Apache-2.0",
                   source="deepfake_toolkit: the CNN, the CLIP probe head and their "
                          "stacking, fitted on ../shared/data/faces-train"),
        CLIP_TOWER_WEIGHTS,
    ),
    extra={"architecture": "EfficientNet-Lite0 (cnn) + CLIP ViT-B/16 linear probe, "
                           "logistic-regression stacking of their logits",
           "features": list(FUSION_PROBE_FEATURES)},
    explain_layers=fusion_heatmap_layers,
))
