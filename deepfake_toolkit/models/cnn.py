"""The embedded CNN detector (``cnn``): an ImageNet-pretrained EfficientNet-Lite0 fine-tuned on face
crops. It was the toolkit's ``default`` until the fusion (:mod:`.fusion`) replaced it; the fusion
carries its own copy of these weights as one of its two branches.

Its weights ship in the project's weights/ folder (the file keeps its historic name,
``deepfake_toolkit_default.safetensors``); ``deepfake-toolkit train --model cnn`` makes them.
"""

from __future__ import annotations

import torch

from .registry import register_model
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import load_safetensors

CNN_ARCHITECTURE = "tf_efficientnet_lite0"
"""timm architecture of the CNN."""

CNN_WEIGHTS = "deepfake_toolkit_default.safetensors"


def build_cnn() -> torch.nn.Module:
    """EfficientNet-Lite0 with a single-logit head (sigmoid = P(fake)), no weights loaded."""
    import timm

    return timm.create_model(CNN_ARCHITECTURE, pretrained=False, num_classes=1)


def last_conv_stage(module: torch.nn.Module) -> tuple[HeatmapLayer, ...]:
    """The heatmap layer: the last conv's output after its norm and activation (7 x 7 x 1280)."""
    return (HeatmapLayer(module.bn2),)


CNN_SPEC = register_model(
    ModelSpec(
        name="cnn",
        description="EfficientNet-Lite0 fine-tuned on face crops (the fusion's CNN branch; "
                    "the default until the fusion replaced it)",
        build=build_cnn,
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
                filename=CNN_WEIGHTS,
                license="Apache-2.0 (backbone ImageNet weights: Apache-2.0)",
                source="deepfake_toolkit, fine-tuned from EfficientNet-Lite0 ImageNet weights",
            ),
        ),
        extra={"architecture": CNN_ARCHITECTURE},
        channels_last=True,
        explain_layers=last_conv_stage,
    )
)
