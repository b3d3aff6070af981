"""The embedded default detector: an ImageNet-pretrained EfficientNet-Lite0 fine-tuned on face crops.

Its weights ship in the project's weights/ folder; ``deepfake-toolkit train`` makes them.
"""

from __future__ import annotations

import torch

from .registry import register_model
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import load_safetensors

DEFAULT_ARCHITECTURE = "tf_efficientnet_lite0"
"""timm architecture of the default model."""

DEFAULT_WEIGHTS = "deepfake_toolkit_default.safetensors"


def build_default() -> torch.nn.Module:
    """EfficientNet-Lite0 with a single-logit head (sigmoid = P(fake)), no weights loaded."""
    import timm

    return timm.create_model(DEFAULT_ARCHITECTURE, pretrained=False, num_classes=1)


def last_conv_stage(module: torch.nn.Module) -> tuple[HeatmapLayer, ...]:
    """The heatmap layer: the last conv's output after its norm and activation (7 x 7 x 1280)."""
    return (HeatmapLayer(module.bn2),)


DEFAULT_SPEC = register_model(
    ModelSpec(
        name="default",
        description="EfficientNet-Lite0 fine-tuned on face crops (ships with the toolkit)",
        build=build_default,
        load_state_dict=load_safetensors,
        preprocess=Preprocess(
            input_size=224,
            resize="exact",
            interpolation="bilinear",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
        output="sigmoid_fake",
        weights=(
            WeightFile(
                filename=DEFAULT_WEIGHTS,
                license="Apache-2.0 (backbone ImageNet weights: Apache-2.0)",
                source="deepfake_toolkit, fine-tuned from EfficientNet-Lite0 ImageNet weights",
            ),
        ),
        extra={"architecture": DEFAULT_ARCHITECTURE},
        channels_last=True,
        explain_layers=last_conv_stage,
    )
)
