"""A pair of linear probes on one CLIP tower, stacked: the toolkit's ``default`` detector.

One probe reads features that fit the training sources closely (class tokens of intermediate
blocks with the final embedding: strong in family); the other, heavily regularised, reads the
final embedding (weaker in family, better on sources it never saw). Their logits are z-scored
and mixed with the smallest share of the first at which every fake folder's validation AUC stays
at the CNN's (``transfer.fit_transfer_stacking`` held to the CNN's AUCs), then calibrated; the
stored stacking weights apply to the raw logits:
``fused_logit = w_a * anchor_logit + w_t * transfer_logit + bias``. There is no CNN in the score,
so the tower runs once per face crop. ``scripts/transfer_protocol.py`` fits and writes it.
"""

from __future__ import annotations

import torch
from torch import nn

from .clip import (
    CLIP_PREPROCESS,
    CLIP_TOWER_WEIGHTS,
    ClipTowerConfig,
    ClipVisionTower,
    check_recorded_features,
    find_tower,
    probe_heatmap_layers,
    select_features,
    tower_state_dict,
)
from .registry import register_model
from .spec import ModelSpec, WeightFile
from .weights import load_safetensors

PAIR_WEIGHTS = "clip_pair.safetensors"

PAIR_ANCHOR_FEATURES = ("cls8", "cls10", "embeds")
"""What the probe strong in family reads (as the shipping run of the protocol chose it)."""

PAIR_TRANSFER_FEATURES = ("embeds",)
"""What the probe that transfers reads."""


class ProbeHead(nn.Module):
    """A linear head on standardised tower features: ``((f - mean) / std) @ w + b``."""

    def __init__(self, features: tuple[str, ...], config: ClipTowerConfig) -> None:
        super().__init__()
        self.features = tuple(features)
        width = sum(config.embed_dim if f == "embeds" else config.width for f in self.features)
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.head = nn.Linear(width, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The logit, (N,), from the tower's :meth:`~ClipVisionTower.forward_features`."""
        x = select_features(features, self.features)
        return self.head((x - self.feature_mean) / self.feature_std).reshape(-1)


class ProbePair(nn.Module):
    """One frozen CLIP tower, two probe heads, one stacked logit (N, 1).

    Input: CLIP-normalised RGB, 224 x 224 (:data:`~deepfake_toolkit.models.clip.CLIP_PREPROCESS`).
    """

    def __init__(self, anchor: tuple[str, ...] = PAIR_ANCHOR_FEATURES,
                 transfer: tuple[str, ...] = PAIR_TRANSFER_FEATURES,
                 config: ClipTowerConfig | None = None) -> None:
        super().__init__()
        self.tower = ClipVisionTower(config)
        self.anchor = ProbeHead(anchor, self.tower.config)
        self.transfer = ProbeHead(transfer, self.tower.config)
        self.register_buffer("stack_weight", torch.tensor([1.0, 1.0]))
        self.register_buffer("stack_bias", torch.tensor([0.0]))

    @property
    def features(self) -> tuple[str, ...]:
        """Every tower feature the heads read."""
        return tuple(dict.fromkeys(self.anchor.features + self.transfer.features))

    def branch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2): the anchor probe's logit and the transfer probe's."""
        features = self.tower.forward_features(x)
        return torch.stack([self.anchor(features), self.transfer(features)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.branch_logits(x) @ self.stack_weight + self.stack_bias).unsqueeze(1)


def load_pair(path: str) -> dict[str, torch.Tensor]:
    """The pair file (both heads, the stacking) plus the CLIP tower found beside it.

    Raises:
        WeightsMismatchError: The file's heads were fitted on other features than the module's.
    """
    from .loading import WeightsMismatchError, recorded_spec

    check_recorded_features(path, PAIR_ANCHOR_FEATURES + PAIR_TRANSFER_FEATURES)
    extra = (recorded_spec(path) or {}).get("extra", {})
    for key, features in (("anchor_features", PAIR_ANCHOR_FEATURES),
                          ("transfer_features", PAIR_TRANSFER_FEATURES)):
        if key in extra and tuple(extra[key]) != features:
            raise WeightsMismatchError(
                f"{path}: its {key.split('_')[0]} head was fitted on CLIP features "
                f"{'+'.join(extra[key])}, this model reads {'+'.join(features)}: these weights "
                "belong to another version of the model")
    state = load_safetensors(path)
    return {**state, **tower_state_dict(find_tower(path, "default"))}


def build_pair() -> ProbePair:
    """The registered pair's module (ViT-B/16 tower, the shipped feature sets), no weights."""
    return ProbePair(PAIR_ANCHOR_FEATURES, PAIR_TRANSFER_FEATURES)


PAIR_SPEC = register_model(ModelSpec(
    name="default",
    description="Two linear probes on frozen CLIP ViT-B/16 features of the face crop, stacked "
                "for transfer to unseen sources",
    build=build_pair,
    load_state_dict=load_pair,
    preprocess=CLIP_PREPROCESS,
    output="sigmoid_fake",
    weights=(
        WeightFile(filename=PAIR_WEIGHTS, license="Apache-2.0",
                   source="deepfake_toolkit: two logistic-regression heads on frozen CLIP "
                          "features and their stacking, fitted on ../shared/data/faces-train"),
        CLIP_TOWER_WEIGHTS,
    ),
    extra={"architecture": "CLIP ViT-B/16 image tower (frozen, float32 rebuild of the INT8 "
                           "ONNX export) + two linear heads, transfer-weighted stacking",
           "features": list(PAIR_ANCHOR_FEATURES + PAIR_TRANSFER_FEATURES),
           "anchor_features": list(PAIR_ANCHOR_FEATURES),
           "transfer_features": list(PAIR_TRANSFER_FEATURES)},
    # clip_probe's layer rule, on every feature either head reads (``ProbePair.features``).
    explain_layers=probe_heatmap_layers,
))
