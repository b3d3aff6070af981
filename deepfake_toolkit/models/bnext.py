"""BNext binary backbones and the "Faster Than Lies" deepfake detector built on them.

The backbone follows BNext (Guo et al., "Join the High Accuracy Club on ImageNet with A Binary
Neural Network Ticket", hpi-xnor/BNext ``src/bnext.py``); the detector follows BNext4DFR (Lanzino et
al., "Faster Than Lies: Real-time Deepfake Detection using Binary Neural Networks", CVPR Workshops
2024, fedeloper/binary_deepfake_detection ``model.py``). Module and parameter names match the
authors' code, so their checkpoints load as they are: the detector's keys are ``base_model.*``
(backbone), ``adapter.weight/bias`` and ``fc.weight/bias``.

The detector adds two hand-made channels to the RGB input: the log-magnitude spectrum and a
uniform local binary pattern of the grey image. Upstream computes them with NumPy, OpenCV and
scikit-image on the CPU, one image at a time; here they are batched torch operations on the model's
device that reproduce those libraries (see :func:`extra_channels`).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .loading import WeightsMismatchError
from .registry import register_model
from .spec import HeatmapLayer, ModelSpec, Preprocess, WeightFile
from .weights import WeightsFileError, load_pickled_checkpoint, load_safetensors

BNextSize = Literal["T", "S", "M", "L"]

STAGE_WIDTHS: dict[str, tuple[int, ...]] = {
    "T": (32, 64) + (128,) * 2 + (256,) * 2 + (512,) * 6 + (1024,) * 2,
    "S": (48, 96) + (192,) * 2 + (384,) * 2 + (768,) * 6 + (1536,) * 2,
    "M": (48, 96) + (192,) * 4 + (384,) * 4 + (768,) * 8 + (1536,) * 4,
    "L": (48, 96) + (192,) * 4 + (384,) * 4 + (768,) * 16 + (1536,) * 4,
}
"""Output width of each block (the stem first) for BNext-Tiny, -Small, -Middle and -Large."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

LBP_POINTS = 3
"""Neighbours of the detector's local binary pattern (scikit-image's ``P``)."""

LBP_RADIUS = 6.0
"""Radius of the detector's local binary pattern in pixels (scikit-image's ``R``)."""

# OpenCV's 8-bit RGB/BGR -> grey weights, in 1/32768 (15-bit fixed point, rounded). Upstream calls
# cvtColor(COLOR_BGR2GRAY) on an RGB array, so the blue weight falls on red and vice versa.
_GREY_WEIGHTS_15BIT = (3735, 19235, 9798)
_GREY_SHIFT = 15


class LearnableBias(nn.Module):
    """Adds a learned per-channel offset (BNext's ``move``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.expand_as(x)


class HardSign(nn.Module):
    """Binarises activations to {-1, 0, +1} with a clipped straight-through gradient."""

    def __init__(self, limit: float = 1.5) -> None:
        super().__init__()
        self.limit = limit
        self.register_buffer("temperature", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        clipped = x.clamp(-self.limit, self.limit)
        sign = x.div(self.temperature.clamp(min=1e-8)).clamp(-1, 1).sign()
        # The straight-through form is kept at inference too so that outputs match upstream's
        # arithmetic to the last bit.
        return (sign - clipped).detach() + clipped


class HardBinaryConv(nn.Module):
    """Convolution with binarised weights: sign(w) once the temperature has been annealed to ~0."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.padding = kernel_size // 2
        self.groups = groups
        shape = (out_channels, in_channels // groups, kernel_size, kernel_size)
        self.weight = nn.Parameter(torch.randn(shape) * 0.001)
        self.register_buffer("temperature", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upstream clamps the parameter in place on every call; a functional clamp gives the same
        # outputs without mutating loaded weights.
        weight = self.weight.clamp(-1.5, 1.5)
        soft = (weight / self.temperature.clamp(min=1e-8)).clamp(-1, 1)
        binary = torch.where(self.temperature < 1e-7, weight.sign(), soft)
        if self.training:
            binary = binary.detach() - weight.detach() + weight
        return F.conv2d(x, binary, stride=self.stride, padding=self.padding, groups=self.groups)


class SqueezeAndExpand(nn.Module):
    """Channel attention: global pool -> 1x1 conv (1/8 width) -> ReLU -> 1x1 conv -> sigmoid."""

    def __init__(self, channels: int, planes: int, ratio: int = 8) -> None:
        super().__init__()
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(channels, channels // ratio, kernel_size=1, padding=0),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // ratio, planes, kernel_size=1, padding=0),
        )
        self.attention = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.se(x))


class _BinaryUnit(nn.Module):
    """Shared layers of BNext's three binary units: bias, sign, binary conv, BN and PReLU.

    ``activation1`` is unused by the FFN units but exists upstream, so it is kept for the keys.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.move = LearnableBias(in_channels)
        self.binary_activation = HardSign(limit=1.5)
        self.binary_conv = HardBinaryConv(in_channels, out_channels, kernel_size, stride)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.activation1 = nn.PReLU(in_channels)
        self.activation2 = nn.PReLU(out_channels)
        if stride == 2:
            self.pooling = nn.AvgPool2d(2, 2)
        self.scale = nn.Parameter(torch.full((1, out_channels, 1, 1), 0.5))

    def binary_branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.binary_conv(self.binary_activation(self.move(x)))
        return self.activation2(self.norm1(x))

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooling(x) if self.stride == 2 else x

    def training_scale(self) -> torch.Tensor:
        """The mixing scale; clamped to [0, 1] while training (upstream clamps in place)."""
        return self.scale.clamp(0, 1) if self.training else self.scale


class ElmAttention(_BinaryUnit):
    """BNext's 3x3 "Attention" unit (mode "scale"): the binary branch gates a PReLU residual."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, stride=stride)
        self.se = SqueezeAndExpand(out_channels, out_channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        residual = self.downsample(self.activation1(input))
        x = self.binary_branch(input)
        scale = self.training_scale()
        mix = scale * self.downsample(input) + x * (1 - scale)
        x = self.se(mix) * x
        x = x * residual
        x = self.norm2(x)
        return x + residual


class Ffn3x3(_BinaryUnit):
    """BNext's 3x3 feed-forward unit (mode "bias"), used in place of the attention unit."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, stride=stride)
        self.se = SqueezeAndExpand(in_channels, out_channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        residual = self.downsample(input)
        x = self.binary_branch(input)
        scale = self.training_scale()
        mix = scale * self.downsample(input) + (1 - scale) * x
        x = self.se(mix) * x
        x = self.norm2(x)
        return x + residual


class Ffn1x1(_BinaryUnit):
    """BNext's 1x1 feed-forward unit."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, stride=1)
        self.se = SqueezeAndExpand(in_channels, out_channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.binary_branch(input)
        # Unlike the 3x3 units, upstream clamps this scale in evaluation mode as well.
        scale = self.scale.clamp(0, 1)
        mix = scale * input + (1 - scale) * x
        x = self.se(mix) * x
        x = self.norm2(x)
        return x + input


class BasicBlock(nn.Module):
    """A 3x3 unit followed by one 1x1 unit, or two concatenated ones where the width doubles."""

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 mode: Literal["scale", "bias"]) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        unit = ElmAttention if mode == "scale" else Ffn3x3
        # Upstream names the 3x3 unit "Attention" in both modes.
        self.Attention = unit(in_channels, in_channels, stride)
        if in_channels == out_channels:
            self.FFN = Ffn1x1(in_channels, in_channels)
        else:
            self.FFN_1 = Ffn1x1(in_channels, in_channels)
            self.FFN_2 = Ffn1x1(in_channels, in_channels)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self.Attention(input)
        if self.in_channels == self.out_channels:
            return self.FFN(x)
        return torch.cat((self.FFN_1(x), self.FFN_2(x)), dim=1)


class StemConv(nn.Module):
    """Full-precision 3x3 stem conv + BN. Its PReLU exists upstream (hence in checkpoints) but is
    not applied."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


class BNext(nn.Module):
    """BNext backbone with ELM attention and information recoupling (the released design).

    Args:
        size: "T" (tiny), "S" (small), "M" (middle) or "L" (large).
        num_classes: Classes of the linear head; None replaces the head by identity so that
            ``forward`` returns the pooled features (``num_features`` wide).
        stem_stride: Stride of the stem conv. Upstream uses 2 for ImageNet (1000 classes) and 1
            otherwise; the deepfake detector builds its backbone for 1000 classes, hence 2.
    """

    def __init__(self, size: BNextSize = "T", num_classes: int | None = 1000,
                 stem_stride: int = 2) -> None:
        super().__init__()
        if size not in STAGE_WIDTHS:
            raise ValueError(f"unknown BNext size '{size}': use one of {', '.join(STAGE_WIDTHS)}")
        widths = STAGE_WIDTHS[size]
        self.num_features = widths[-1]
        self.feature = nn.ModuleList([StemConv(3, widths[0], stem_stride)])
        for index in range(1, len(widths)):
            previous, width = widths[index - 1], widths[index]
            if index == 1:
                block = BasicBlock(previous, width, stride=1, mode="bias")
            else:
                # Width changes after the second block come with a stride-2 downsampling.
                stride = 2 if previous != width and width != widths[1] else 1
                block = BasicBlock(previous, width, stride, mode="scale" if index % 2 == 0
                                   else "bias")
            self.feature.append(block)
        self.prelu = nn.PReLU(self.num_features)
        self.pool1 = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = (nn.Identity() if num_classes is None
                              else nn.Linear(self.num_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.feature:
            x = block(x)
        x = self.pool1(self.prelu(x))
        return self.fc(x.flatten(1))


def rgb_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``uint8(x * 255)`` of RGB images in [0, 1], truncating like NumPy's ``astype``.

    The product is taken in float32 and truncated as upstream does (for inputs k/255 it gives k
    back). Values outside [0, 1] are clamped, where NumPy's cast would wrap them.
    """
    return (images.float() * 255).clamp(0, 255).to(torch.uint8)


def opencv_grey(images_uint8: torch.Tensor) -> torch.Tensor:
    """OpenCV's ``cvtColor(image, COLOR_BGR2GRAY)`` applied to RGB arrays, batched.

    Args:
        images_uint8: (N, 3, H, W) uint8, channels in RGB order.

    Returns:
        (N, H, W) uint8, equal to OpenCV's fixed-point result for every input (it weighs red by
        0.114, green by 0.587 and blue by 0.299 because the array is RGB, not BGR).
    """
    channels = images_uint8.to(torch.int32)
    weighted = sum(weight * channels[:, index] for index, weight in enumerate(_GREY_WEIGHTS_15BIT))
    return ((weighted + (1 << (_GREY_SHIFT - 1))) >> _GREY_SHIFT).to(torch.uint8)


def fft_channel(grey: torch.Tensor) -> torch.Tensor:
    """``20 * ln(|fftshift(fft2(grey))| + 1e-9) / 255`` per image, in float64 like NumPy.

    Args:
        grey: (N, H, W) grey images (any real dtype).

    Returns:
        (N, H, W) float64.
    """
    spectrum = torch.fft.fftshift(torch.fft.fft2(grey.to(torch.float64)), dim=(-2, -1))
    return 20 * torch.log(spectrum.abs() + 1e-9) / 255


def _lbp_offsets(points: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the circle samples, rounded to 5 decimals like scikit-image."""
    angles = 2 * np.pi * np.arange(points, dtype=np.float64) / points
    return np.round(-radius * np.sin(angles), 5), np.round(radius * np.cos(angles), 5)


def lbp_channel(grey: torch.Tensor, points: int = LBP_POINTS,
                radius: float = LBP_RADIUS) -> torch.Tensor:
    """scikit-image's ``local_binary_pattern(grey, points, radius, method="uniform")``, batched.

    Circle samples are bilinearly interpolated with zeros outside the image, in float64 with the
    same operation order as scikit-image, so ties (sample == centre) resolve identically. As in
    scikit-image, a pattern counts as uniform when its bit changes, counted without the wrap from
    the last sample back to the first, are at most 2: its code is then the number of samples >= the
    centre, otherwise ``points + 1``.

    Args:
        grey: (N, H, W) grey images (any real dtype).
        points: Number of circle samples.
        radius: Circle radius in pixels.

    Returns:
        (N, H, W) float64 codes in 0..points+1.
    """
    image = grey.to(torch.float64)
    _, height, width = image.shape
    pad = math.ceil(radius) + 1
    padded = F.pad(image, (pad, pad, pad, pad))
    row_offsets, col_offsets = _lbp_offsets(points, radius)
    rows = torch.arange(height, dtype=torch.float64, device=image.device)
    cols = torch.arange(width, dtype=torch.float64, device=image.device)
    bits = []
    for row_offset, col_offset in zip(row_offsets.tolist(), col_offsets.tolist(), strict=True):
        r = rows + row_offset
        c = cols + col_offset
        r_low, r_high, c_low, c_high = r.floor(), r.ceil(), c.floor(), c.ceil()
        dr = (r - r_low).view(-1, 1)
        dc = c - c_low

        def pixels(row_index: torch.Tensor, col_index: torch.Tensor) -> torch.Tensor:
            return (padded.index_select(1, row_index.long() + pad)
                    .index_select(2, col_index.long() + pad))

        top = (1 - dc) * pixels(r_low, c_low) + dc * pixels(r_low, c_high)
        bottom = (1 - dc) * pixels(r_high, c_low) + dc * pixels(r_high, c_high)
        texture = (1 - dr) * top + dr * bottom
        bits.append((texture - image) >= 0)
    signed = torch.stack(bits).to(torch.int64)
    changes = (signed[:-1] != signed[1:]).sum(dim=0)
    uniform_code = signed.sum(dim=0)
    return torch.where(changes <= 2, uniform_code, torch.full_like(uniform_code, points + 1)
                       ).to(torch.float64)


def extra_channels(images: torch.Tensor) -> torch.Tensor:
    """The detector's FFT and LBP channels for RGB images in [0, 1], on their device.

    Matches upstream's per-image NumPy code: grey = OpenCV BGR2GRAY of ``uint8(x * 255)`` (an RGB
    array), FFT = ``20 ln(|fftshift(fft2(grey))| + 1e-9) / 255``, LBP = scikit-image uniform LBP
    (P=3, R=6) / 255, computed in float64 and returned as float32.

    Args:
        images: (N, 3, H, W) RGB in [0, 1].

    Returns:
        (N, 2, H, W) float32: FFT channel, then LBP channel.
    """
    grey = opencv_grey(rgb_to_uint8(images))
    channels = torch.stack([fft_channel(grey), lbp_channel(grey) / 255], dim=1)
    return channels.to(torch.float32)


class BNextDeepfakeDetector(nn.Module):
    """BNext4DFR: RGB + FFT + LBP -> 3-channel adapter -> ImageNet normalisation -> BNext -> logit.

    The input is RGB in [0, 1] (resize the shorter side to 252, centre-crop 224, no
    normalisation); the single output logit's sigmoid is P(real), the authors' training target.

    Args:
        size: BNext size, "T", "S", "M" or "L".
    """

    def __init__(self, size: BNextSize = "M") -> None:
        super().__init__()
        self.size = size
        self.base_model = BNext(size, num_classes=None, stem_stride=2)
        self.adapter = nn.Conv2d(5, 3, kernel_size=3, stride=1, padding=1)
        self.fc = nn.Linear(self.base_model.num_features, 1)
        # Not persistent: the authors' checkpoints hold no such keys.
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """One logit per image, shape (N, 1); sigmoid(logit) = P(real)."""
        x = torch.cat([images, extra_channels(images).to(images.dtype)], dim=1)
        x = (self.adapter(x) - self.imagenet_mean) / self.imagenet_std
        return self.fc(self.base_model(x))


def last_stage(module: BNextDeepfakeDetector) -> tuple[HeatmapLayer, ...]:
    """The heatmap layer: the backbone's last stage (7 x 7 for a 224 input)."""
    return (HeatmapLayer(module.base_model.feature[-1]),)


def count_parameters(size: BNextSize, detector: bool = True) -> int:
    """Number of parameters of BNext ``size`` (with the deepfake head and adapter by default),
    counted on the meta device so that nothing is allocated."""
    with torch.device("meta"):
        module = BNextDeepfakeDetector(size) if detector else BNext(size)
    return sum(parameter.numel() for parameter in module.parameters())


def load_bnext_weights(path: str, size: BNextSize) -> dict[str, torch.Tensor]:
    """Read BNext detector weights: the authors' Lightning ``.ckpt`` or a converted safetensors.

    A ``.ckpt`` is read without running pickled code (see
    :func:`~deepfake_toolkit.models.weights.load_pickled_checkpoint`); its ``hyper_parameters``
    are checked against ``size`` and the released channel configuration (FFT + LBP, no Sobel).

    Args:
        path: The weight file.
        size: BNext size the file must hold.

    Returns:
        The detector's state dict (keys ``base_model.*``, ``adapter.*``, ``fc.*``).

    Raises:
        WeightsFileError: Unreadable, refused, or holding no state dict.
        WeightsMismatchError: The checkpoint was trained for another size or other channels.
    """
    if path.endswith(".safetensors"):
        return load_safetensors(path)
    checkpoint = load_pickled_checkpoint(path)
    if not isinstance(checkpoint, dict):
        raise WeightsFileError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
    if "state_dict" not in checkpoint:
        if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
            return checkpoint
        raise WeightsFileError(
            f"{path} holds no 'state_dict' (keys: {', '.join(map(str, list(checkpoint)[:10]))}): "
            "it is not a PyTorch Lightning checkpoint of the BNext detector")
    _check_hyper_parameters(path, checkpoint.get("hyper_parameters") or {}, size)
    return dict(checkpoint["state_dict"])


def _check_hyper_parameters(path: str, hyper_parameters: dict, size: BNextSize) -> None:
    """Refuse checkpoints whose recorded training setup differs from the model loading them."""
    backbone = hyper_parameters.get("backbone")
    if backbone is not None and backbone != f"BNext-{size}":
        raise WeightsMismatchError(
            f"{path} was trained with backbone {backbone}, but this model is BNext-{size}: "
            "choose the model whose size matches the file (see 'deepfake-toolkit weights')")
    expected = {"add_magnitude_channel": False, "add_fft_channel": True, "add_lbp_channel": True}
    different = {key: hyper_parameters[key] for key, value in expected.items()
                 if key in hyper_parameters and bool(hyper_parameters[key]) != value}
    if different:
        raise WeightsMismatchError(
            f"{path} was trained with extra channels {different}; this toolkit implements the "
            "released configuration (FFT and LBP channels, no Sobel magnitude)")


DRIVE_FOLDER = "https://drive.google.com/drive/folders/1rYtfozcq5eXK1a8tP8ouXrBFZs1e72dV"
"""The authors' Google Drive folder with every checkpoint of the paper."""

PAPER = ("Lanzino et al., Faster Than Lies: Real-time Deepfake Detection using Binary Neural "
         "Networks, CVPR Workshops 2024 (arXiv 2406.04932)")

BNEXT_LICENSE = ("no licence stated by the authors (fedeloper/binary_deepfake_detection); "
                 "research use, ask the authors before redistributing")

BNEXT_PREPROCESS = Preprocess(input_size=224, resize="shorter", resize_size=252,
                              interpolation="bilinear")
"""Shorter side to 252 (bilinear), centre crop 224, [0, 1]: normalisation happens in the model."""

_DATASETS = {
    "cocofake": ("coco_fake", "COCOFake (COCO photos vs. Stable Diffusion images)"),
    "dffd": ("dffd", "DFFD (CelebA/FFHQ faces vs. GAN and FaceApp faces)"),
    "cifake": ("cifake", "CIFAKE (32 px CIFAR-10 photos vs. Stable Diffusion images)"),
}

_REPORTED = {  # (accuracy %, AUC %) with the backbone fine-tuned ("unfrozen"), from the paper
    ("T", "cocofake"): (99.25, 99.86), ("S", "cocofake"): (99.28, 99.89),
    ("M", "cocofake"): (99.18, 99.91), ("T", "dffd"): (98.95, 99.94),
    ("S", "dffd"): (99.01, 99.94), ("M", "dffd"): (98.75, 99.92),
    ("T", "cifake"): (97.29, 99.65), ("S", "cifake"): (96.96, 99.55),
    ("M", "cifake"): (97.35, 99.62),
}

_DRIVE_FILES = {"dffd_M_unfrozen.ckpt": "16c5xIDvwN3DUD6JbO_cl7aj_xrijezWs"}
"""Google Drive file ids known for single checkpoints; the others are found in the folder."""

_CHECKPOINT_SIZE = {  # rough size of the authors' Lightning files (weights + AdamW state)
    "T": "about 360 MB", "S": "about 800 MB", "M": "about 1.5 GB",
}

DETECTOR_PARAMETERS = {"T": 29_838_399, "S": 67_059_289, "M": 132_966_649, "L": 182_623_993}
"""Parameters of the detector (backbone, adapter and head), as :func:`count_parameters` counts
them; the paper reports 29.8 M (T), 67.1 M (S) and 133 M (M)."""

_ORIGINAL_SYSTEM = {("M", "dffd"): "RescueBox 'BNext_M'", ("S", "cocofake"): "RescueBox 'BNext_S'"}


def bnext_spec(size: BNextSize, dataset: str) -> ModelSpec:
    """The registry entry of the authors' BNext-``size`` checkpoint fine-tuned on ``dataset``.

    Args:
        size: "T", "S" or "M".
        dataset: "cocofake", "dffd" or "cifake".
    """
    prefix, dataset_description = _DATASETS[dataset]
    name = f"bnext_{size.lower()}_{dataset}"
    original = f"{prefix}_{size}_unfrozen.ckpt"
    converted = f"{name}.safetensors"
    file_id = _DRIVE_FILES.get(original)
    url = f"https://drive.google.com/file/d/{file_id}/view" if file_id else DRIVE_FOLDER
    where = "" if file_id else "; in that folder, pick the file of that name"
    instructions = (
        f"The file is {original} ({_CHECKPOINT_SIZE[size]}, the authors' PyTorch Lightning "
        f"checkpoint{where}). Put it, as it is, in one of those folders: it is read without "
        f"running pickled code. Optionally, once: 'deepfake-toolkit weights import {original} "
        f"--model {name}' checks it and writes {converted} (weights only, loads faster); the "
        ".ckpt can then be deleted.")
    accuracy, auc = _REPORTED[(size, dataset)]
    extra = {
        "architecture": f"BNext-{size} + FFT/LBP adapter",
        "paper": PAPER,
        "code": "https://github.com/fedeloper/binary_deepfake_detection",
        "parameters": DETECTOR_PARAMETERS[size],
        "trained_on": dataset_description,
        "reported": {"accuracy_percent": accuracy, "auc_percent": auc,
                     "test_set": f"{prefix} test split"},
    }
    if (size, dataset) in _ORIGINAL_SYSTEM:
        extra["original_system"] = _ORIGINAL_SYSTEM[(size, dataset)]
    return ModelSpec(
        name=name,
        description=f"BNext-{size} 'Faster Than Lies' (Lanzino et al. 2024) trained on "
                    f"{dataset_description.split(' (')[0]}",
        build=functools.partial(BNextDeepfakeDetector, size),
        load_state_dict=functools.partial(load_bnext_weights, size=size),
        preprocess=BNEXT_PREPROCESS,
        output="sigmoid_real",
        explain_layers=last_stage,
        weights=(
            WeightFile(
                filename=converted,
                alternatives=(original,),
                url=url,
                license=BNEXT_LICENSE,
                source=f"{PAPER}; checkpoint {original} from the authors' Google Drive folder",
                instructions=instructions,
            ),
        ),
        extra=extra,
    )


BNEXT_SPECS = tuple(register_model(bnext_spec(size, dataset))
                    for dataset in _DATASETS for size in ("T", "S", "M"))
"""The registered BNext models: bnext_{t,s,m}_{cocofake,dffd,cifake}."""
