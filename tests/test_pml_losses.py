"""--loss: every pytorch-metric-learning loss trains with and without MDR; proxies are checkpointed and resumed."""
import argparse
import sys

import pytest
import torch
from torch import nn

import run
from errors import UserError
from loss.criterion import build_criterion, check_criterion, loss_param_groups
from loss.mdr import MDRLoss
from loss.pml import PML_LOSSES
from minidata import make_cub
from model.checkpoint import read_weights_file
from model.embedding import Embedding
from small_run import SMALL

CLASSES, PER_CLASS, EMBEDDING = 4, 4, 16


def _args(loss: str, loss_args: list[str] | None = None) -> argparse.Namespace:
    return argparse.Namespace(loss=loss, loss_args=loss_args or [], embedding_size=EMBEDDING, sampler="distance")


def _tiny_model() -> Embedding:
    base = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    return Embedding(base, feature_size=8, embedding_size=EMBEDDING)


def _batches(n: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(CLASSES).repeat_interleave(PER_CLASS)
    return [(torch.randn(len(labels), 3, 12, 12, generator=g), labels) for _ in range(n)]


@pytest.mark.parametrize("lambda_mdr", [0.0, 0.6], ids=["plain", "mdr"])
@pytest.mark.parametrize("name", sorted(PML_LOSSES))
def test_every_loss_trains_two_iterations(name, lambda_mdr):
    torch.manual_seed(0)
    model, mdr = _tiny_model(), MDRLoss()
    criterion, _ = build_criterion(_args(name), CLASSES)
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-2}, {"params": mdr.parameters(), "lr": 1e-2}]
                                 + loss_param_groups(criterion, 1e-2, 1.0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    own = [p.detach().clone() for p in criterion.parameters()]
    mean = run.train_one_epoch(model, _batches(), optimizer, criterion, mdr, lambda_mdr, 0.01 if lambda_mdr else 0.0)
    assert torch.isfinite(torch.tensor(mean))
    assert not torch.equal(model.linear.weight, before["linear.weight"])
    assert not torch.equal(model.base[0].weight, before["base.0.weight"])
    assert all(not torch.equal(p, q) for p, q in zip(criterion.parameters(), own))
    assert (len(own) > 0) == PML_LOSSES[name][1]


def test_loss_args_override_defaults_and_are_printed(capsys):
    criterion, hparams = build_criterion(_args("multi-similarity", ["alpha=3", "base=0.6"]), CLASSES)
    assert (criterion.alpha, criterion.beta, criterion.base) == (3, 50, 0.6)
    assert {k: hparams[k] for k in ("alpha", "base", "beta")} == {"alpha": 3, "base": 0.6, "beta": 50}
    assert "Loss: multi-similarity alpha=3 base=0.6 beta=50" in capsys.readouterr().out


@pytest.mark.parametrize("name,loss_args,match", [
    ("multi-similarity", ["nope=1"], "has no option 'nope'; it takes .*alpha"),
    ("multi-similarity", ["alpha=abc"], "alpha='abc' for --loss multi-similarity: expected a number, like the "
                                        "default alpha=2"),
    ("multi-similarity", ["alpha=True"], "expected a number"),
    ("margin", ["learn_beta=1"], "expected True or False")])
def test_bad_loss_args_name_the_value_and_the_choices(name, loss_args, match):
    with pytest.raises(UserError, match=match):
        build_criterion(_args(name, loss_args), CLASSES)


def test_loss_args_take_floats_for_int_defaults_and_numbers_for_modes():
    criterion, hparams = build_criterion(_args("margin", ["triplets_per_anchor=5", "beta=1"]), CLASSES)
    assert criterion.triplets_per_anchor == 5 and hparams["beta"] == 1
    assert build_criterion(_args("multi-similarity", ["alpha=2.5"]), CLASSES)[0].alpha == 2.5


def test_triplet_refuses_loss_args():
    with pytest.raises(UserError, match="triplet loss has fixed options"):
        build_criterion(_args("triplet", ["margin=0.1"]), CLASSES)


def test_loss_args_syntax_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--loss", "circle", "--loss-args", "gamma"])
    assert "expected key=value" in capsys.readouterr().err


def test_missing_pytorch_metric_learning_gives_the_install_hint(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)
    with pytest.raises(UserError, match="--loss circle needs the optional package pytorch-metric-learning.*"
                                        "pip install pytorch-metric-learning"):
        build_criterion(_args("circle"), CLASSES)
    root = make_cub(tmp_path / "data")
    code = run.cli(SMALL + ["--loss", "arcface", "--data", str(root), "--save-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "pip install pytorch-metric-learning" in err


def test_triplet_still_builds_without_pytorch_metric_learning(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)
    criterion, hparams = build_criterion(_args("triplet"), CLASSES)
    assert hparams == {"margin": 0.2, "sampler": "distance"} and list(criterion.parameters()) == []


def test_proxies_are_checkpointed_and_resume_restores_them_exactly(tmp_path, monkeypatch):
    root, save = make_cub(tmp_path / "data"), tmp_path / "run"
    flags = SMALL + ["--data", str(root), "--loss", "proxy-anchor", "--loss-args", "margin=0.2",
                     "--loss-lr-mult", "100", "--lambda-mdr", "0.6", "--nu-mdr", "0.01"]
    run.main(run.parse_args(flags + ["--save-dir", str(save), "--epochs", "1"]))
    saved = read_weights_file(save / "checkpoint.pth")
    assert saved["loss"]["proxies"].shape == (3, 16) and saved["loss_hparams"]["margin"] == 0.2
    assert saved["args"]["loss_args"] == ["margin=0.2"] and saved["optimizer"]["param_groups"][2]["lr"] == 0.1

    seen = {}

    def first_resumed_epoch(model, loader, optimizer, criterion, *rest):
        seen.update(proxies=criterion.proxies.detach().clone(), optimizer=optimizer.state_dict())
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train_one_epoch", first_resumed_epoch)
    with pytest.raises(run.Interrupted):
        run.main(run.parse_args(flags + ["--resume", str(save), "--epochs", "2"]))
    assert torch.equal(seen["proxies"], saved["loss"]["proxies"])
    assert not torch.equal(seen["proxies"], build_criterion(_args("proxy-anchor"), 3)[0].proxies)
    index = saved["optimizer"]["param_groups"][2]["params"][0]  # the proxies' Adam moments
    assert torch.equal(seen["optimizer"]["state"][index]["exp_avg"], saved["optimizer"]["state"][index]["exp_avg"])
    with pytest.raises(UserError, match="--loss: 'proxy-anchor' -> 'circle'"):
        run.main(run.parse_args(flags + ["--resume", str(save), "--epochs", "2", "--loss", "circle"]))


@pytest.mark.parametrize("name,loss_args,named,reason", [
    ("soft-triple", ["centers_per_class=0"], "centers_per_class=0", "RuntimeError"),
    ("margin", ["triplets_per_anchor=banana"], "triplets_per_anchor=banana", "TypeError"),
    ("multi-similarity", ["alpha=0", "beta=0", "base=0.5"], "alpha=0 beta=0", "ZeroDivisionError"),
    ("nt-xent", ["temperature=0"], "temperature=0", "gives nan"),
    ("margin", ["margin=1e999"], "margin=1e999", "gives inf")])
def test_loss_args_the_loss_cannot_use_are_one_line_before_the_run_starts(tmp_path, capsys, name, loss_args, named,
                                                                          reason):
    save = tmp_path / "run"
    code = run.cli(SMALL + ["--loss", name, "--loss-args", *loss_args, "--data", str(tmp_path / "data"),
                            "--no-download", "--save-dir", str(save)])  # the check comes before any data
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --loss-args {named}: --loss {name} ") and reason in err
    assert not save.exists()


@pytest.mark.parametrize("name", sorted(PML_LOSSES))
def test_the_library_defaults_given_as_loss_args_pass_the_check(name):
    _, defaults = build_criterion(_args(name), CLASSES)
    check_criterion(_args(name, [f"{key}={value}" for key, value in defaults.items()]))


def test_a_non_finite_loss_in_training_names_the_loss_and_its_loss_args(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "check_criterion", lambda args: None)  # as if the check had passed
    with pytest.raises(run.NonFiniteLoss, match=r"the nt-xent loss became non-finite \(nan\) at epoch 1, "
                                                r"iteration 0.*, with --loss-args temperature=0: "):
        run.main(run.parse_args(SMALL + ["--loss", "nt-xent", "--loss-args", "temperature=0", "--epochs", "1",
                                         "--data", str(make_cub(tmp_path / "data")),
                                         "--save-dir", str(tmp_path / "run")]))
    assert run.non_finite_advice(float("inf"), 0.0, "at epoch 3", "multi-similarity").startswith(
        "the multi-similarity loss became non-finite (inf) at epoch 3; check the data")
