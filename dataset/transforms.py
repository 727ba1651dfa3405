"""The authors' image transforms: LANCZOS resize to 256, random or center crop to 224."""
import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

LANCZOS = InterpolationMode.LANCZOS
BNINCEPTION_MEAN = (104.0, 117.0, 128.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_size(image_size: int) -> int:
    """Side of the square resize before cropping: 256 for the default 224 crop."""
    return image_size * 256 // 224


def _to_bgr255(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> BGR in [0, 255]."""
    return x[[2, 1, 0]] * 255


def normalization(backbone: str) -> T.Compose:
    """ToTensor and the backbone's normalisation: BGR x255 minus (104, 117, 128) for BN-Inception."""
    if backbone == "bninception":
        return T.Compose([T.ToTensor(), T.Lambda(_to_bgr255), T.Normalize(BNINCEPTION_MEAN, (1.0, 1.0, 1.0))])
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def build_transforms(backbone: str, image_size: int = 224) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms of PIL RGB images to (3, image_size, image_size) float tensors.

    The first step of both is the deterministic square resize, so a cache of
    resized images can replace it and run ``transform.transforms[1:]`` alone.
    """
    side = resize_size(image_size)
    train = T.Compose([
        T.Resize((side, side), interpolation=LANCZOS),
        T.RandomResizedCrop(image_size, scale=(0.16, 1), ratio=(0.75, 1.33), interpolation=LANCZOS),
        T.RandomHorizontalFlip(),
        normalization(backbone),
    ])
    test = T.Compose([
        T.Resize((side, side), interpolation=LANCZOS),
        T.CenterCrop(image_size),
        normalization(backbone),
    ])
    return train, test
