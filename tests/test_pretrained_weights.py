"""ImageNet weights files as they are published: BN-Inception's 2017 format, its whole sha256, strict timm files."""
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch

import model.pretrained as pretrained
from errors import UserError
from fill import fill_tensor
from model import build_model
from model.bninception import BNInception
from model.checkpoint import save_atomic
from model.pretrained import BNINCEPTION_SHA256, sha256_file
from reference import load as load_reference

BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def cadene_2017_state() -> OrderedDict:
    """The key set of Cadene's bn_inception-52deb4733.pth: the authors' backbone keys without BatchNorm's
    ``num_batches_tracked`` (PyTorch 0.4 added it, after the file was saved), BatchNorm tensors 1xN,
    filled by the reference rule; a plain OrderedDict, without the version metadata of newer state_dicts."""
    keys = [(key[len("base.model."):], shape) for key, shape in load_reference("bninception")["bninception_keys"]
            if key.startswith("base.model.") and not key.endswith("num_batches_tracked")]
    state = OrderedDict()
    for key, shape in keys:
        layer, name = key.rsplit(".", 1)
        value = fill_tensor(key, torch.Size(shape))
        state[key] = value[None] if layer.endswith("_bn") and name in BN_TENSORS else value
    return state


def save_2017(state: dict, path: Path) -> Path:
    """``state`` in torch's serialisation of 2017 (a pickle, not the zip format of torch 1.6 and later)."""
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return path


def test_the_2017_bninception_file_loads_as_the_authors_strict_load_does(tmp_path, capsys):
    state = cadene_2017_state()
    assert len(state) == 416 and state["conv1_7x7_s2_bn.running_var"].shape == (1, 64)
    path = save_2017(state, tmp_path / "bn_inception_2017.pth")
    assert path.read_bytes()[:2] == b"\x80\x02"
    trunk = build_model("bninception", pretrained=str(path)).base.model

    authors = BNInception()  # the authors' load: their rebuilt dict, squeezed, strict
    authors.load_state_dict({k: v.squeeze(0) if v.size(0) == 1 else v for k, v in torch.load(path, weights_only=True).items()})
    ours = trunk.state_dict()
    assert ours.keys() == authors.state_dict().keys()
    assert all(torch.equal(ours[k], v) for k, v in authors.state_dict().items())
    assert int(ours["inception_3a_1x1_bn.num_batches_tracked"]) == 0
    out = capsys.readouterr().out
    assert f"[Weights] {path} filled 416 of 485 backbone tensors (the file predates BatchNorm's num_batches_tracked: " \
           "its 69 counters start at 0" in out
    assert f"[Warning] {path} is not the published BN-Inception ImageNet file" in out  # generated, not Cadene's


def test_a_2017_file_missing_anything_but_the_batch_counters_is_refused(tmp_path):
    state = cadene_2017_state()
    del state["inception_4c_pool_proj_bn.running_var"]
    path = save_2017(state, tmp_path / "bn_inception_2017.pth")
    with pytest.raises(UserError, match=r"do not fit --backbone bninception: missing keys: "
                                        r"inception_4c_pool_proj_bn.running_var; pass") as exc:
        build_model("bninception", pretrained=str(path))
    assert "num_batches_tracked" not in str(exc.value)


def test_a_file_named_like_the_published_one_must_have_its_whole_sha256(tmp_path):
    path = tmp_path / "bn_inception-52deb4733.pth"
    save_atomic(BNInception().state_dict(), path)  # fits the backbone: only the hash can refuse it
    with pytest.raises(UserError) as exc:
        build_model("bninception", pretrained=str(path))
    message = str(exc.value)
    assert str(path) in message and sha256_file(path) in message and BNINCEPTION_SHA256 in message
    assert "\n" not in message


def test_the_cached_download_is_checked_by_its_whole_sha256(tmp_path, monkeypatch):
    """torch.hub checks the hash prefix only when it downloads, never a file already in its cache."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "bn_inception-52deb4733.pth"
    save_atomic(BNInception().state_dict(), cached)
    with pytest.raises(UserError, match=f"{cached} have sha256 {sha256_file(cached)}, but the published "
                                        f"bn_inception-52deb4733.pth has sha256 {BNINCEPTION_SHA256}; .*delete it"):
        build_model("bninception", pretrained=True)


def test_the_published_file_under_its_name_or_renamed_loads_without_a_warning(tmp_path, monkeypatch, capsys):
    """The published file is stood in for by a generated one whose sha256 the check is given."""
    made = save_2017(cadene_2017_state(), tmp_path / "made.pth")
    digest = sha256_file(made)
    monkeypatch.setattr(pretrained, "BNINCEPTION_SHA256", digest)
    monkeypatch.setattr(pretrained, "PUBLISHED_SHA256", {digest[:9]: digest})
    for name in (f"bn_inception-{digest[:9]}.pth", "bninception.pth"):
        build_model("bninception", pretrained=str(made.rename(tmp_path / name)))
        made = tmp_path / name
        out = capsys.readouterr().out
        assert "filled 416 of 485" in out and "[Warning]" not in out


def test_a_timm_file_that_fills_nothing_is_refused_and_a_fitting_one_says_what_it_filled(tmp_path, capsys):
    unrelated = tmp_path / "unrelated.pth"
    save_atomic({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(UserError, match=r"unrelated.pth do not fit --backbone timm:resnet10t: missing keys: "
                                        r"conv1.0.weight.*unexpected keys: encoder.weight"):
        build_model("timm:resnet10t", pretrained=str(unrelated))
    ours = tmp_path / "best.pth"  # one of our runs' weights: backbone keys under base.model.
    save_atomic(build_model("timm:resnet10t", embedding_size=8, pretrained=False).state_dict(), ours)
    with pytest.raises(UserError, match="best.pth do not fit --backbone timm:resnet10t: missing keys"):
        build_model("timm:resnet10t", pretrained=str(ours))

    weights = timm.create_model("resnet10t", pretrained=False).state_dict()  # with its 1000-class classifier
    save_atomic({"state_dict": weights, "epoch": 3}, tmp_path / "checkpoint.pth")  # as timm's train.py saves
    trunk = build_model("timm:resnet10t", pretrained=str(tmp_path / "checkpoint.pth")).base.model
    total = len(trunk.state_dict())
    assert total == len(weights) - 2
    assert f"checkpoint.pth filled {total} of {total} backbone tensors" in capsys.readouterr().out
    assert all(torch.equal(v, weights[k]) for k, v in trunk.state_dict().items())
