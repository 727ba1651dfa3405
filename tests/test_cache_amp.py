"""Decode-once cache (bit-identical, never stale, never torn) and mixed precision."""
import os

import numpy as np
import pytest
import torch

import run
from dataset import cache
from dataset.image_list import ImageList
from dataset.transforms import build_transforms
from experiment.device import amp_settings
from fill import fill_model
from loss.mdr import MDRLoss
from loss.sampler import HardNegative
from loss.triplet import TripletLoss
from minidata import jpeg_bytes, make_cub
from model import build_model
from reference import load
from small_run import SMALL

REF = load("transforms")


@pytest.fixture
def reference_files(tmp_path):
    paths = []
    for i, data in enumerate(REF["images"]):
        suffix = "png" if data.startswith(b"\x89PNG") else "jpg"
        path = tmp_path / "img" / f"{i}.{suffix}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        paths.append((str(path), i))
    return paths


@pytest.mark.parametrize("backbone,norm", [("bninception", "bninception_bgr"), ("resnet50", "imagenet")])
def test_cached_outputs_are_bit_identical_with_same_seeds(reference_files, tmp_path, backbone, norm):
    train_tf, test_tf = build_transforms(backbone)
    plain = ImageList(reference_files, train_tf)
    cached = ImageList(reference_files, train_tf, cache_dir=tmp_path / "cache", cache_name="ref-train")
    for i, case in enumerate(REF[f"train_{norm}"]):
        torch.manual_seed(case["torch_seed"])
        expected = plain[i][0]
        torch.manual_seed(case["torch_seed"])
        assert torch.equal(cached[i][0], expected)
    torch.manual_seed(REF[f"train_{norm}"][0]["torch_seed"])
    torch.testing.assert_close(cached[0][0], REF[f"train_{norm}_float0"], rtol=1e-5, atol=1e-2)
    plain_test = ImageList(reference_files, test_tf)
    cached_test = ImageList(reference_files, test_tf, cache_dir=tmp_path / "cache", cache_name="ref-test")
    for i in range(3):
        assert torch.equal(cached_test[i][0], plain_test[i][0])
    torch.testing.assert_close(cached_test[0][0], REF[f"test_{norm}_float0"], rtol=1e-5, atol=1e-2)


def test_cache_is_reused_and_rebuilt_when_stale(tmp_path):
    make_cub(tmp_path)
    _, test_tf = build_transforms("bninception", 64)
    samples = [(str(p), 0) for p in sorted((tmp_path / "CUB_200_2011").rglob("*.jpg"))[:4]]
    first = ImageList(samples, test_tf, cache_dir=tmp_path / "c", cache_name="s")
    mtime = first.cache_path.stat().st_mtime_ns
    again = ImageList(samples, test_tf, cache_dir=tmp_path / "c", cache_name="s")
    assert again.cache_path == first.cache_path and again.cache_path.stat().st_mtime_ns == mtime

    changed = samples[1][0]
    with open(changed, "wb") as f:
        f.write(jpeg_bytes(999, size=(50, 40)))
    os.utime(changed, ns=(mtime + 10**9, mtime + 10**9))
    rebuilt = ImageList(samples, test_tf, cache_dir=tmp_path / "c", cache_name="s")
    assert rebuilt.cache_path != first.cache_path
    assert torch.equal(rebuilt[1][0], ImageList(samples, test_tf)[1][0])
    other_size = ImageList(samples, build_transforms("bninception", 96)[1], cache_dir=tmp_path / "c", cache_name="s")
    assert other_size.cache_path not in (first.cache_path, rebuilt.cache_path)


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    make_cub(tmp_path)
    _, test_tf = build_transforms("resnet18", 64)
    samples = [(str(p), 0) for p in sorted((tmp_path / "CUB_200_2011").rglob("*.jpg"))[:6]]
    original = cache._Resized.__getitem__

    def crash_at_three(self, index):
        if index == 3:
            raise RuntimeError("simulated crash while building")
        return original(self, index)

    monkeypatch.setattr(cache._Resized, "__getitem__", crash_at_three)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ImageList(samples, test_tf, cache_dir=tmp_path / "c", cache_name="s")
    assert list((tmp_path / "c").iterdir()) == []
    monkeypatch.setattr(cache._Resized, "__getitem__", original)
    (tmp_path / "c" / ".stale.npy.999.tmp").write_bytes(b"half written by a killed process")
    ds = ImageList(samples, test_tf, cache_dir=tmp_path / "c", cache_name="s")
    assert np.load(ds.cache_path, mmap_mode="r").shape == (6, 73, 73, 3)
    assert torch.equal(ds[5][0], ImageList(samples, test_tf)[5][0])


def test_cache_needs_a_leading_square_lanczos_resize(tmp_path):
    from errors import UserError
    from torchvision import transforms as T
    with pytest.raises(UserError, match="square LANCZOS Resize"):
        ImageList([("x.jpg", 0)], T.Compose([T.CenterCrop(8)]), cache_dir=tmp_path)


def test_training_with_cache_gives_identical_weights(tmp_path):
    make_cub(tmp_path / "data")
    small = SMALL + ["--epochs", "1", "--data", str(tmp_path / "data")]
    run.main(run.parse_args(small + ["--save-dir", str(tmp_path / "plain")]))
    run.main(run.parse_args(small + ["--save-dir", str(tmp_path / "cached"),
                                                       "--cache-dir", str(tmp_path / "cache")]))
    a = torch.load(tmp_path / "plain" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "cached" / "last.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(list((tmp_path / "cache").glob("CUB200-*.npy"))) == 2  # train and test splits


def test_amp_keeps_losses_and_mdr_statistics_in_float32():
    ref = load("train_step")
    seen = []

    class Recording(TripletLoss):
        def forward(self, embeddings, labels):
            seen.append(embeddings.dtype)
            return super().forward(embeddings, labels)

    results = {}
    for amp in (None, torch.bfloat16):
        model = fill_model(build_model("resnet18", embedding_size=64, pretrained=False))
        mdr = MDRLoss()
        optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-3},
                                      {"params": mdr.parameters(), "lr": 1e-3}], weight_decay=1e-5)
        loss = run.train_one_epoch(model, ref["batches"], optimizer, Recording(sampler=HardNegative()), mdr,
                                   0.6, 0.01, amp_dtype=amp)
        results[amp] = (loss, mdr)
    assert seen == [torch.float32] * 4
    (loss32, mdr32), (loss16, mdr16) = results[None], results[torch.bfloat16]
    assert mdr16.momented_mean.dtype == torch.float32 and mdr16.levels.dtype == torch.float32
    assert np.isfinite(loss16) and loss16 == pytest.approx(loss32, rel=0.1)
    assert float(mdr16.momented_mean) == pytest.approx(float(mdr32.momented_mean), rel=0.05)


def test_amp_settings_choose_bf16_or_fp16_with_scaler():
    assert amp_settings(False, torch.device("cpu")) == (None, None)
    assert amp_settings(True, torch.device("cpu")) == (torch.bfloat16, None)


def test_uint8_pipeline_gives_the_float_pipelines_weights_and_metrics(tmp_path, monkeypatch):
    """Cached uint8 crops normalised on the device train and evaluate exactly as the authors' float tensors."""
    make_cub(tmp_path / "data")
    small = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers", "0", "--batch", "8",
             "--num-image-per-class", "2", "--iter-per-epoch", "2", "--eval-batch", "16", "--backbone", "bninception",
             "--embedding-size", "16", "--epochs", "1", "--data", str(tmp_path / "data")]
    uint8 = run.main(run.parse_args(small + ["--save-dir", str(tmp_path / "uint8"),
                                             "--cache-dir", str(tmp_path / "cache")]))
    monkeypatch.setattr(run, "build_transforms", lambda backbone, size, uint8: build_transforms(backbone, size))
    floats = run.main(run.parse_args(small + ["--save-dir", str(tmp_path / "float")]))
    a = torch.load(tmp_path / "uint8" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "float" / "last.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert uint8 == floats
