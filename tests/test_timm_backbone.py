"""--backbone timm:NAME: a timm trunk under today's heads, timm's input settings, through run.py on CPU."""
import sys

import pytest
import timm
import torch

import run
from dataset.transforms import build_transforms
from errors import UserError
from minidata import make_cub
from model import build_model
from model.checkpoint import read_weights_file, save_atomic

SMALL = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers", "0", "--batch", "8",
         "--num-image-per-class", "2", "--iter-per-epoch", "2", "--eval-batch", "16", "--embedding-size", "16",
         "--lr", "1e-3", "--lr-decay-epochs", "5"]


def test_timm_trunk_gives_pooled_features_to_both_heads():
    for l2norm in (False, True):
        model = build_model("timm:resnet10t", embedding_size=16, l2norm=l2norm, pretrained=False).eval()
        assert model.base.output_size == 512 and model(torch.zeros(2, 3, 64, 64)).shape == (2, 16)


def test_pretrained_file_goes_through_timm_loading(tmp_path):
    weights = timm.create_model("resnet10t", pretrained=False).state_dict()  # with its 1000-class fc
    save_atomic(weights, tmp_path / "r10t.pth")
    trunk = build_model("timm:resnet10t", pretrained=str(tmp_path / "r10t.pth")).base
    assert torch.equal(trunk.model.conv1[0].weight, weights["conv1.0.weight"])
    with pytest.raises(UserError, match="do not fit --backbone timm:resnet18"):
        build_model("timm:resnet18", pretrained=str(tmp_path / "r10t.pth"))
    with pytest.raises(UserError, match="not found; pass an existing file"):
        build_model("timm:resnet10t", pretrained=str(tmp_path / "none.pth"))


def test_transforms_take_timm_resolution_mean_and_std_in_the_authors_shape():
    train, test = build_transforms("timm:vit_tiny_patch16_224")
    assert [type(t).__name__ for t in train.transforms] == ["Resize", "RandomResizedCrop", "RandomHorizontalFlip",
                                                            "ToNormalizedTensor"]
    assert train.transforms[1].scale == (0.16, 1) and train.transforms[1].ratio == (0.75, 1.33)
    assert test.transforms[0].size == (256, 256) and test.transforms[1].size == (224, 224)
    assert test.transforms[2].mean.flatten().tolist() == [0.5] * 3
    assert build_transforms("timm:resnet10t")[1].transforms[1].size == (176, 176)  # timm's train resolution
    assert build_transforms("timm:resnet10t", 64)[1].transforms[1].size == (64, 64)


def test_unknown_timm_model_names_the_way_to_list_them():
    with pytest.raises(UserError, match="timm .* has no model 'resnet_nope'; list the names"):
        build_model("timm:resnet_nope", pretrained=False)


def test_timm_model_trains_and_evaluates_through_run_py_with_cache_and_amp(tmp_path):
    root, save = make_cub(tmp_path / "data"), tmp_path / "run"
    flags = SMALL + ["--backbone", "timm:resnet10t", "--data", str(root), "--cache-dir", str(tmp_path / "cache")]
    initial = build_model("timm:resnet10t", embedding_size=16, pretrained=False).state_dict()
    results = run.main(run.parse_args(flags + ["--save-dir", str(save), "--epochs", "1", "--amp",
                                               "--lambda-mdr", "0.6", "--nu-mdr", "0.01"]))
    state = read_weights_file(save / "checkpoint.pth")
    assert state["args"]["backbone"] == "timm:resnet10t" and state["args"]["image_size"] == 64
    bn = "base.model.bn1.running_mean"
    assert torch.equal(state["model"][bn], initial[bn])  # BatchNorm statistics stay frozen
    assert not torch.equal(state["model"]["base.model.conv1.0.weight"], initial["base.model.conv1.0.weight"])
    again = run.main(run.parse_args(flags + ["--mode", "eval", "--load", str(save / "last.pth")]))
    assert again["Recall@1"] == pytest.approx(results["Recall@1"])


def test_missing_timm_gives_the_install_hint_and_the_authors_backbones_still_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UserError, match="--backbone timm:resnet10t needs the optional package timm.*pip install timm"):
        build_model("timm:resnet10t", pretrained=False)
    assert build_model("resnet18", embedding_size=8, pretrained=False).base.output_size == 512
    code = run.cli(SMALL + ["--backbone", "timm:resnet10t", "--data", str(make_cub(tmp_path / "data")),
                            "--save-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "pip install timm" in err
