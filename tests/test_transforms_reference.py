"""Every transform output against the authors' reference pixels, with the same torch seeds."""
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dataset.transforms import ToUint8Tensor, authors_normalization, build_transforms, device_normalization
from reference import load

REF = load("transforms")
NORMS = {"imagenet": "resnet50", "bninception_bgr": "bninception"}


def _images():
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in REF["images"]]


def _pixels(transform: T.Compose, image: Image.Image) -> torch.Tensor:
    """uint8 CHW pixels right before ToTensor: every step but the normalisation."""
    out = T.Compose(transform.transforms[:-1])(image)
    return torch.from_numpy(np.asarray(out).copy()).permute(2, 0, 1)


def _close_pixels(actual, expected):
    assert actual.shape == expected.shape
    assert (actual.int() - expected.int()).abs().max() <= 1  # one grey level across Pillow builds


@pytest.mark.parametrize("norm", NORMS)
def test_test_transform_pixels_and_normalisation(norm):
    _, test = build_transforms(NORMS[norm])
    for image, expected in zip(_images(), REF[f"test_{norm}_uint8"]):
        _close_pixels(_pixels(test, image), expected)
    torch.testing.assert_close(test(_images()[0]), REF[f"test_{norm}_float0"], rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize("norm", NORMS)
def test_train_transform_pixels_with_same_seeds(norm):
    train, _ = build_transforms(NORMS[norm])
    for image, case in zip(_images(), REF[f"train_{norm}"]):
        torch.manual_seed(case["torch_seed"])
        _close_pixels(_pixels(train, image), case["out_uint8"])
    torch.manual_seed(REF[f"train_{norm}"][0]["torch_seed"])
    torch.testing.assert_close(train(_images()[0]), REF[f"train_{norm}_float0"], rtol=1e-5, atol=1e-2)



@pytest.mark.parametrize("backbone", ["bninception", "resnet50"])
def test_fast_normalisation_is_bit_identical_to_the_authors_chain(backbone):
    from dataset.transforms import authors_normalization, normalization
    for image in _images():
        cropped = T.CenterCrop(224)(image)
        assert torch.equal(normalization(backbone)(cropped), authors_normalization(backbone)(cropped))


def _device_normalised(backbone: str, uint8_chw: torch.Tensor) -> torch.Tensor:
    """One uint8 image through ``device_normalization`` as a batch of one."""
    return device_normalization(backbone)(uint8_chw[None])[0]


@pytest.mark.parametrize("backbone", ["bninception", "resnet50"])
def test_device_normalisation_is_bit_identical_to_the_authors_chain(backbone):
    every_byte = Image.fromarray(np.repeat(np.arange(256, dtype=np.uint8).reshape(16, 16, 1), 3, axis=2), "RGB")
    for cropped in [T.CenterCrop(224)(image) for image in _images()] + [every_byte]:
        uint8 = ToUint8Tensor()(cropped)
        assert uint8.dtype == torch.uint8
        assert torch.equal(_device_normalised(backbone, uint8), authors_normalization(backbone)(cropped))


def test_device_normalisation_uses_timms_mean_and_std():
    pytest.importorskip("timm")
    from model.timm_backbone import timm_input
    backbone = "timm:vit_tiny_patch16_224"
    _, mean, std = timm_input(backbone)
    assert (mean, std) != ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # else this would test nothing new
    authors = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    for image in _images():
        cropped = T.CenterCrop(224)(image)
        uint8 = ToUint8Tensor()(cropped)
        assert torch.equal(_device_normalised(backbone, uint8), authors(cropped))


@pytest.mark.parametrize("norm", NORMS)
def test_uint8_transforms_then_device_normalisation_equal_the_float_transforms(norm):
    float_train, float_test = build_transforms(NORMS[norm])
    uint8_train, uint8_test = build_transforms(NORMS[norm], uint8=True)
    for image, case in zip(_images(), REF[f"train_{norm}"]):
        torch.manual_seed(case["torch_seed"])
        expected = float_train(image)
        torch.manual_seed(case["torch_seed"])
        assert torch.equal(_device_normalised(NORMS[norm], uint8_train(image)), expected)
        assert torch.equal(_device_normalised(NORMS[norm], uint8_test(image)), float_test(image))
