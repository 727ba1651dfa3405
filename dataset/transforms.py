"""The authors' image transforms: LANCZOS resize to 256, random or center crop to 224."""
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from model.timm_backbone import is_timm, timm_input

LANCZOS = InterpolationMode.LANCZOS
BNINCEPTION_MEAN = (104.0, 117.0, 128.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 224


def resize_size(image_size: int) -> int:
    """Side of the square resize before cropping: 256 for the default 224 crop."""
    return image_size * 256 // 224


class ToUint8Tensor:
    """PIL RGB image -> (3, H, W) uint8 RGB tensor: a quarter of the float32 bytes for loader workers to hand over.

    ``ToNormalizedTensor.finish`` (``device_normalization``) finishes batches of them on the training device.
    """

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1)))


DeviceNormalize = Callable[[torch.Tensor], torch.Tensor]


class ToNormalizedTensor:
    """PIL RGB image -> (3, H, W) float32 tensor with the backbone's normalisation.

    Bit-identical to ``ToTensor`` followed by the authors' BGR x255 step and
    ``Normalize`` (the same float operations in the same order; a division by
    a std of 1 is exact and skipped), without their intermediate copies.
    """

    def __init__(self, bgr255: bool, mean: tuple, std: tuple):
        self.bgr255 = bgr255
        self.byte_max = torch.tensor(255.0)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = None if all(v == 1.0 for v in std) else torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._on_device: dict[torch.device, tuple] = {}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.finish(ToUint8Tensor()(image))

    def finish(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 RGB tensor on any device -> float32 tensor of that shape there, normalised.

        The constants are tensors on the images' device, never CPU scalars,
        which CUDA would turn into a multiplication by the rounded reciprocal.
        """
        byte_max, mean, std = self.constants(images.device)
        if self.bgr255:
            images = images.flip(-3)  # reordering channels before the float steps changes no value
        x = images.float().div_(byte_max)
        if self.bgr255:
            x = x.mul_(byte_max)
        x = x.sub_(mean)
        return x.div_(std) if std is not None else x

    def constants(self, device: torch.device) -> tuple:
        """(255, (3, 1, 1) mean, (3, 1, 1) std or None) as float32 tensors on ``device``, copied there once: a
        copy from pageable host memory per batch would wait for the device every time."""
        if device not in self._on_device:
            self._on_device[device] = tuple(None if t is None else t.to(device)
                                            for t in (self.byte_max, self.mean, self.std))
        return self._on_device[device]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(bgr255={self.bgr255}, mean={self.mean.flatten().tolist()})"


def normalization(backbone: str) -> ToNormalizedTensor:
    """The backbone's normalisation: BGR x255 minus (104, 117, 128) for BN-Inception, ImageNet mean/std else."""
    if backbone == "bninception":
        return ToNormalizedTensor(True, BNINCEPTION_MEAN, (1.0, 1.0, 1.0))
    return ToNormalizedTensor(False, IMAGENET_MEAN, IMAGENET_STD)


def authors_normalization(backbone: str) -> T.Compose:
    """The authors' chain (ToTensor, BGR x255, Normalize), kept as the baseline of tests and benches."""
    if backbone == "bninception":
        bgr = T.Lambda(lambda x: x[[2, 1, 0]] * 255)
        return T.Compose([T.ToTensor(), bgr, T.Normalize(BNINCEPTION_MEAN, (1.0, 1.0, 1.0))])
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def model_input(backbone: str, image_size: int | None) -> tuple[int, ToNormalizedTensor]:
    """(crop side, normalisation): a timm model's resolution (unless ``image_size``), mean and std, else the
    authors' 224 and normalisation."""
    if is_timm(backbone):
        side, mean, std = timm_input(backbone)
        return image_size or side, ToNormalizedTensor(False, mean, std)
    return image_size or DEFAULT_IMAGE_SIZE, normalization(backbone)


def device_normalization(backbone: str) -> DeviceNormalize:
    """The backbone's normalisation of (N, 3, H, W) uint8 batches (``build_transforms(uint8=True)``) on their
    device: float32 values bit-identical to the authors' ToTensor + Normalize of each image."""
    return model_input(backbone, None)[1].finish


def build_transforms(backbone: str, image_size: int | None = None,
                     uint8: bool = False) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms of PIL RGB images to (3, S, S) float tensors, S = ``image_size`` or the model's.

    With ``uint8`` they end in (3, S, S) uint8 RGB tensors instead, and
    ``device_normalization(backbone)`` turns batches of them into the very
    same float values on the training device.

    The authors' shape for every backbone: square resize to S*256/224, random
    resized crop (scale 0.16-1, ratio 0.75-1.33) and flip, or center crop. The
    first step of both is the deterministic square resize, so a cache of
    resized images can replace it and run ``transform.transforms[1:]`` alone.
    """
    image_size, normalize = model_input(backbone, image_size)
    normalize = ToUint8Tensor() if uint8 else normalize
    side = resize_size(image_size)
    train = T.Compose([
        T.Resize((side, side), interpolation=LANCZOS),
        T.RandomResizedCrop(image_size, scale=(0.16, 1), ratio=(0.75, 1.33), interpolation=LANCZOS),
        T.RandomHorizontalFlip(),
        normalize,
    ])
    test = T.Compose([
        T.Resize((side, side), interpolation=LANCZOS),
        T.CenterCrop(image_size),
        normalize,
    ])
    return train, test
