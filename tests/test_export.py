"""tools.export: TorchScript and ONNX files that take uint8 crops and give the evaluation's embeddings (issue 20)."""
import sys

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from dataset.transforms import build_transforms, device_normalization, model_input
from minidata import jpeg_bytes, write
from model import build_model
from model.checkpoint import save_atomic
from tools import export

CASES = [("bninception", 64, "torchscript"), ("bninception", 64, "onnx"), ("resnet18", 32, "torchscript"),
         ("resnet18", 32, "onnx"), ("timm:resnet10t", 32, "torchscript"), ("timm:resnet10t", 32, "onnx")]


def weights(tmp_path, backbone: str, l2norm: bool = False):
    model = build_model(backbone, 16, l2norm, pretrained=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-like head instead of the random initialisation
        model.linear.weight.copy_(torch.randn(model.linear.weight.shape, generator=g) * 0.05)
    path = tmp_path / f"{backbone.replace(':', '_')}.pth"
    save_atomic(model.state_dict(), path)
    return model.eval(), path


def crops(tmp_path, backbone: str, side: int) -> torch.Tensor:
    """(4, 3, S, S) uint8: real JPEGs through the authors' test transform, without the normalisation."""
    test = build_transforms(backbone, side, uint8=True)[1]
    paths = [write(tmp_path / "img" / f"{i}.jpg", jpeg_bytes(i, size=(70, 50))) for i in range(4)]
    return torch.stack([test(Image.open(p).convert("RGB")) for p in paths])


def run_exported(path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """The exported file with nothing but torch, or onnxruntime."""
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(images).numpy()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.numpy()})[0]


@pytest.mark.parametrize("backbone, side, fmt", CASES)
def test_exported_file_gives_the_evaluation_embeddings(backbone, side, fmt, tmp_path, capsys):
    model, path = weights(tmp_path, backbone)
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    assert export.cli(["--load", str(path), "--backbone", backbone, "--embedding-size", "16", "--image-size",
                       str(side), "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Self-check: 3 random batches (1, 3, 5 images), largest difference" in printed and ": passed" in printed
    images = crops(tmp_path, backbone, side)
    with torch.no_grad():
        expected = model(device_normalization(backbone)(images)).numpy()
    got = run_exported(out, fmt, images)
    assert got.dtype == np.float32 and got.shape == (4, 16)
    assert (np.linalg.norm(got - expected, axis=1) <= 1e-4 * np.linalg.norm(expected, axis=1)).all()


@pytest.mark.parametrize("backbone", ["bninception", "resnet18", "timm:resnet10t"])
def test_the_normalisation_inside_is_the_evaluation_one_bit_for_bit(backbone):
    model = build_model(backbone, 8, pretrained=False)
    wrapped = export.Uint8Model(model, model_input(backbone, 32)[1])
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(wrapped.normalize(images), device_normalization(backbone)(images))


def test_l2norm_model_exports_to_onnx(tmp_path):
    model, path = weights(tmp_path, "resnet18", l2norm=True)
    worst = export.main(export.parse_args(["--load", str(path), "--backbone", "resnet18", "--embedding-size", "16",
                                           "--l2norm", "--image-size", "32", "--format", "onnx", "--out",
                                           str(tmp_path / "m.onnx")]))
    assert worst <= 1e-4
    norms = np.linalg.norm(run_exported(tmp_path / "m.onnx", "onnx", crops(tmp_path, "resnet18", 32)), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_a_file_that_fails_its_self_check_is_not_written(tmp_path, monkeypatch, capsys):
    _, path = weights(tmp_path, "resnet18")
    real = export.torchscript_runner
    monkeypatch.setattr(export, "torchscript_runner", lambda data: (lambda x: real(data)(x) * 1.01))
    out = tmp_path / "model.pt"
    assert export.cli(["--load", str(path), "--backbone", "resnet18", "--embedding-size", "16", "--image-size",
                       "32", "--format", "torchscript", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert ": FAILED" in captured.out and not out.exists()
    assert len(captured.err.strip().splitlines()) == 1 and "was not written" in captured.err


def test_a_file_that_does_not_fit_the_flags_is_the_load_error(tmp_path, capsys):
    _, path = weights(tmp_path, "resnet18")
    assert export.cli(["--load", str(path), "--backbone", "resnet18", "--format", "torchscript", "--out",
                       str(tmp_path / "m.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "linear.weight: checkpoint (16, 512) vs model (512, 512)" in err


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_onnx_packages_are_one_line_with_the_install_hint(tmp_path, monkeypatch, capsys, missing):
    _, path = weights(tmp_path, "resnet18")
    monkeypatch.setitem(sys.modules, missing, None)
    assert export.cli(["--load", str(path), "--backbone", "resnet18", "--embedding-size", "16", "--image-size",
                       "32", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"pip install {missing}" in err and "requirements-extra.txt" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("side", [224, 64, 32])
def test_the_documented_resize_and_crop_are_the_test_transform(tmp_path, side):
    """docs/model-use.md: resize to S*256/224 square with LANCZOS, crop from round((S*256//224 - S) / 2)."""
    path = write(tmp_path / "a.jpg", jpeg_bytes(3, size=(300, 200)))
    resized = Image.open(path).convert("RGB").resize((side * 256 // 224, side * 256 // 224), Image.LANCZOS)
    top = round((side * 256 // 224 - side) / 2)
    crop = np.asarray(resized)[top:top + side, top:top + side].transpose(2, 0, 1)
    expected = build_transforms("bninception", side, uint8=True)[1](Image.open(path).convert("RGB"))
    assert np.array_equal(crop, expected.numpy())
