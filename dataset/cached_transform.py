"""The transform steps after the cached resize, run on the cached uint8 array.

A leading ``RandomResizedCrop`` or ``CenterCrop`` slices the (H, W, 3) array
itself, so only the crop becomes a PIL image: the same pixels PIL's crop would
copy, the same random draws (torchvision's own ``get_params``), and the same
PIL resize after, so the output is bit-identical to running the steps on a PIL
image of the whole array; the rest of the steps run unchanged.
"""
from typing import Callable, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T


class CachedTransform:
    """(H, W, 3) uint8 array -> the output of ``steps`` applied to it as a PIL RGB image."""

    def __init__(self, steps: Sequence[Callable]):
        self.first = steps[0] if steps else None
        self.rest = T.Compose(list(steps[1:]) if self.first is not None else [])

    def __call__(self, array: np.ndarray):
        height, width = array.shape[:2]
        if isinstance(self.first, T.RandomResizedCrop):
            shape_only = torch.zeros(1, dtype=torch.uint8).expand(3, height, width)
            top, left, h, w = self.first.get_params(shape_only, self.first.scale, self.first.ratio)
            image = F.resize(_pil(array[top:top + h, left:left + w]), list(self.first.size), self.first.interpolation,
                             antialias=self.first.antialias)
        elif isinstance(self.first, T.CenterCrop) and self.first.size[0] <= height and self.first.size[1] <= width:
            h, w = self.first.size
            top, left = int(round((height - h) / 2.0)), int(round((width - w) / 2.0))  # torchvision's offsets
            image = _pil(array[top:top + h, left:left + w])
        else:
            image = _pil(array) if self.first is None else self.first(_pil(array))
        return self.rest(image)


def _pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
