"""Issue 12: config.json, the dataset fingerprint and the pretrained-weights guards."""
import json
import re
from pathlib import Path

import pytest
import torch

import run
from dataset import CUB200
from errors import UserError
from experiment.validation import ClassSubset, held_out_count
from experiment.guards import CANONICAL, fingerprint_mismatches, sha256_file
from minidata import make_cub
from small_run import BACKBONE, SMALL, pretrained_file, run_main as _main
from model import build_model
from model.resnet import ResNetTrunk



@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


def test_config_json_records_the_run(cub_root, tmp_path, capsys):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--seed", "7"])
    config = json.loads((save / "config.json").read_text())
    assert config["seed"] == 7 and config["flags"]["batch"] == 8 and config["flags"]["backbone"] == BACKBONE
    assert set(config["versions"]) == {"python", "torch", "torchvision", "Pillow"}
    assert config["versions"]["torch"] == torch.__version__
    assert re.fullmatch(r"[0-9a-f]{40}", config["git"]["commit"])
    assert config["device"] == {"type": "cpu"}
    assert config["data"]["counts"] == {"train images": 12, "train classes": 3, "test images": 12,
                                        "test classes": 3}
    assert config["data"]["warnings"][0] == "train images: expected 5864, found 12"
    assert config["weights"] is None
    assert "the paper's numbers need ImageNet weights" in capsys.readouterr().out


def test_fingerprint_is_a_function_of_the_counts():
    for name, expected in CANONICAL.items():
        assert fingerprint_mismatches(name, dict(expected)) == []
    counts = {**CANONICAL["cub200"], "test images": 5923}
    assert fingerprint_mismatches("cub200", counts) == ["test images: expected 5924, found 5923"]
    inshop = {**CANONICAL["inshop"], "gallery images": 12000, "query+gallery classes": 3984}
    assert fingerprint_mismatches("inshop", inshop) == ["gallery images: expected 12612, found 12000",
                                                        "query+gallery classes: expected 3985, found 3984"]
    assert fingerprint_mismatches("folder", {"train images": 3}) == []
    assert fingerprint_mismatches("cub200", {"test images": 5924}) == []  # eval mode: no train split counted


def test_a_removed_image_warns_with_the_numbers_and_strict_data_stops_before_training(tmp_path, capsys,
                                                                                      monkeypatch):
    root = make_cub(tmp_path / "data")
    next((root / "CUB_200_2011" / "images").glob("*/*.jpg")).unlink()  # a training image (first class)
    save = tmp_path / "run"
    monkeypatch.setattr(run, "train_one_epoch", lambda *a, **k: pytest.fail("trained despite --strict-data"))
    monkeypatch.setattr(run, "evaluate", lambda *a, **k: pytest.fail("evaluated despite --strict-data"))
    with pytest.raises(UserError, match=r"train images: expected 5864, found 11; .*--strict-data refuses it"):
        _main(SMALL + ["--data", str(root), "--save-dir", str(save), "--epochs", "1", "--strict-data"])
    assert not (save / "config.json").exists() and not (save / "checkpoint.pth").exists()
    monkeypatch.undo()
    weights = pretrained_file(tmp_path / "imagenet.pth")
    pretrained = [f for f in SMALL if f != "--no-pretrained"] + ["--pretrained", str(weights)]
    _main(pretrained + ["--data", str(root), "--save-dir", str(tmp_path / "warned"), "--epochs", "1"])
    out = capsys.readouterr().out
    assert "[Warning] the cub200 tree under" in out and "train images: expected 5864, found 11" in out
    config = json.loads((tmp_path / "warned" / "config.json").read_text())
    assert "train images: expected 5864, found 11" in config["data"]["warnings"]
    assert config["weights"] == {"file": str(weights.resolve()), "sha256": sha256_file(weights)}


def _resnet18_file(folder: Path, name: str) -> Path:
    path = folder / name
    torch.save(ResNetTrunk("resnet18").state_dict(), path)
    return path


def test_weights_with_a_wrong_hash_are_refused_naming_the_file_and_both_hashes(tmp_path):
    path = _resnet18_file(tmp_path, "resnet18-f37072fd.pth")
    digest = sha256_file(path)
    with pytest.raises(UserError) as exc:
        build_model("resnet18", pretrained=str(path))
    message = str(exc.value)
    assert str(path) in message and digest in message and "f37072fd" in message and "\n" not in message


def test_weights_with_the_right_hash_load_and_say_how_many_tensors_they_filled(tmp_path, capsys):
    plain = _resnet18_file(tmp_path, "mine.pth")
    right = plain.rename(tmp_path / f"resnet18-{sha256_file(plain)[:8]}.pth")
    build_model("resnet18", pretrained=str(right))
    total = len(ResNetTrunk("resnet18").state_dict())
    assert f"{right} filled {total} of {total} backbone tensors" in capsys.readouterr().out


def test_val_classes_select_on_held_out_training_classes_only(tmp_path, monkeypatch):
    """Validation classes are training classes disjoint from those trained on; best_val.pth is the best val epoch."""
    root = make_cub(tmp_path / "data", classes=12, per_class=4)
    test_paths = {path for path, _ in CUB200(root, split="test").samples}
    train_paths = {path for path, _ in CUB200(root, split="train").samples}
    seen, weights = {}, {}
    scripted_val = {1: 10.0, 2: 50.0, 3: 20.0}
    real_evaluate = run.evaluate

    def spy(model, loaders, ks, epoch=0, *args, **kwargs):
        split = loaders["test"].dataset
        if isinstance(split, ClassSubset):
            seen["val"] = split
            weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
            return {f"Recall@{k}": scripted_val[epoch] for k in ks}
        seen["test"] = split
        return real_evaluate(model, loaders, ks, epoch, *args, **kwargs)

    monkeypatch.setattr(run, "evaluate", spy)
    sampled = []
    real_batch = run.PKSampler._batch
    monkeypatch.setattr(run.PKSampler, "_batch", lambda self: sampled.append(real_batch(self)) or sampled[-1])
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(root), "--save-dir", str(save), "--epochs", "3", "--val-classes", "2"])

    val, trained = seen["val"], run_train_set(root)
    val_paths = {path for path, _ in val.samples}
    assert val_paths <= train_paths and not val_paths & test_paths and len(set(val.labels)) == 2
    assert not set(val.labels) & set(trained.labels) and len(set(trained.labels)) == 4
    assert not any(set(trained.samples[i] for i in batch) & set(val.samples) for batch in sampled)
    records = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("val Recall@1") for r in records] == [None, 10.0, 50.0, 20.0] and "Recall@1" in records[1]
    best_val = torch.load(save / "best_val.pth", weights_only=True)
    assert all(torch.equal(best_val[k], v) for k, v in weights[2].items())
    config = json.loads((save / "config.json").read_text())
    assert config["data"]["counts"]["train images"] == 24 and config["data"]["counts"]["val classes"] == 2


def run_train_set(root: Path):
    """The training part of the train split that a --val-classes 2 run trains on."""
    args = run.parse_args(SMALL + ["--data", str(root), "--val-classes", "2"])
    return run.build_datasets(args)[0]


def test_held_out_count_leaves_two_classes_on_each_side():
    assert held_out_count(100, None, None) == 0
    assert held_out_count(100, 20, None) == 20 and held_out_count(100, None, 0.25) == 25
    with pytest.raises(UserError, match=r"--val-classes 99 holds out 99 of the 100 .* between 2 and 98"):
        held_out_count(100, 99, None)
    with pytest.raises(UserError, match=r"--val-fraction 0.001 holds out 0 of the 100"):
        held_out_count(100, None, 0.001)
