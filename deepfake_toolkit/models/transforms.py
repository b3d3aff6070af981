"""The input transform a :class:`~deepfake_toolkit.models.spec.Preprocess` describes."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .spec import Preprocess

_PIL_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


_LONG_SIDE_LIMIT = 8
"""With ``resize="shorter"``, images whose long side would grow past this many input sizes are
resampled only where the centre crop falls (see :meth:`ImageTransform.resize`)."""


class ImageTransform:
    """Turns an RGB PIL image into the normalised CHW float tensor a model takes.

    Resizing uses PIL (as torchvision's ``Resize`` on PIL images and Hugging Face image processors
    do), so results match the reference transforms the weights were trained with. Instances are
    picklable, so they run inside DataLoader workers.
    """

    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess
        self._mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(preprocess.std, dtype=torch.float32).view(3, 1, 1)

    def resize(self, image: Image.Image) -> Image.Image:
        """Resize (and crop) ``image`` to the model's input size, without normalising."""
        p = self.preprocess
        resample = _PIL_FILTERS[p.interpolation]
        if p.resize == "exact":
            return image.resize((p.input_size, p.input_size), resample)
        assert p.resize_size is not None
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = p.resize_size, int(p.resize_size * long / short)
        new_size = (new_short, new_long) if width <= height else (new_long, new_short)
        left = int(round((new_size[0] - p.input_size) / 2.0))
        top = int(round((new_size[1] - p.input_size) / 2.0))
        if new_long > _LONG_SIDE_LIMIT * p.input_size:
            # Resample only the part that the crop keeps: enlarging the whole of a 10000x20
            # banner first would take gigabytes.
            scale_x, scale_y = new_size[0] / width, new_size[1] / height
            box = (left / scale_x, top / scale_y, (left + p.input_size) / scale_x,
                   (top + p.input_size) / scale_y)
            return image.resize((p.input_size, p.input_size), resample, box=box)
        image = image.resize(new_size, resample)
        return image.crop((left, top, left + p.input_size, top + p.input_size))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        array = np.asarray(self.resize(image.convert("RGB")), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
        return (tensor - self._mean) / self._std
