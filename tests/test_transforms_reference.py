"""Every transform output against the authors' reference pixels, with the same torch seeds."""
import io

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dataset.transforms import build_transforms
from reference import load

REF = load("transforms")
NORMS = {"imagenet": "resnet50", "bninception_bgr": "bninception"}


def _images():
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in REF["images"]]


def _pixels(transform: T.Compose, image: Image.Image) -> torch.Tensor:
    """uint8 CHW pixels right before ToTensor: every step but the normalisation."""
    out = T.Compose(transform.transforms[:-1])(image)
    return torch.from_numpy(__import__("numpy").asarray(out).copy()).permute(2, 0, 1)


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
