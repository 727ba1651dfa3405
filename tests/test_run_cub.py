"""run.py end to end on a generated miniature CUB tree, on CPU."""
import re

import pytest
import torch

import run
from minidata import make_cub
from model import build_model
from model.checkpoint import save_atomic
from small_run import SMALL as SMALL_RUN

# The default backbone, BN-Inception, at 64 px: the configuration users run, end to end through run.py.
SMALL = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers", "0", "--batch", "8",
         "--num-image-per-class", "2", "--iter-per-epoch", "2", "--eval-batch", "16"]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


def _main(argv):
    return run.main(run.parse_args(argv))


def test_train_writes_outputs_and_eval_reproduces_recall(cub_root, tmp_path, capsys):
    save = tmp_path / "out"
    _main(["--dataset", "cub200", "--lr", "5e-5", "--recall", "1", "2", "4", "8", "--lambda-mdr", "0.6",
           "--nu-mdr", "0.01", "--epochs", "1", "--data", str(cub_root), "--save-dir", str(save)] + SMALL)
    assert "Seed: 1" in capsys.readouterr().out
    for name in ("best.pth", "last.pth", "result.txt", "metrics.jsonl"):
        assert (save / name).is_file(), name
    text = (save / "result.txt").read_text()
    best = float(re.search(r"Best Recall@1: ([\d.]+)", text).group(1))
    assert re.search(r"Final Recall@1: [\d.]+", text)

    fresh = build_model("bninception", pretrained=False)
    fresh.load_state_dict(torch.load(save / "best.pth", weights_only=True), strict=True)

    results = _main(["--mode", "eval", "--load", str(save / "best.pth"), "--recall", "1", "2",
                     "--data", str(cub_root)] + SMALL)
    assert round(results["Recall@1"], 4) == pytest.approx(best, abs=1e-4)


def test_eval_of_a_state_dict_in_the_original_key_layout(cub_root, tmp_path):
    model = build_model("resnet18", embedding_size=32, pretrained=False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "base.conv1.weight" in state and "linear.weight" in state
    save_atomic(state, tmp_path / "authors.pth")
    results = _main(["--mode", "eval", "--load", str(tmp_path / "authors.pth"), "--backbone", "resnet18",
                     "--embedding-size", "32", "--recall", "1", "3", "--data", str(cub_root)] + SMALL)
    assert set(results) == {"Recall@1", "Recall@3"}
    assert 0 <= results["Recall@1"] <= results["Recall@3"] <= 100


def test_missing_data_folder_is_one_line_error(tmp_path, capsys):
    code = run.cli(["--mode", "eval", "--no-download", "--data", str(tmp_path / "nowhere")] + SMALL)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "CUB_200_2011/images not found under" in err and "nowhere" in err and "CUB_200_2011.tgz" in err


def test_mismatched_checkpoint_lists_mismatches(cub_root, tmp_path, capsys):
    save_atomic(build_model("resnet18", embedding_size=16, pretrained=False).state_dict(), tmp_path / "r18.pth")
    code = run.cli(["--mode", "eval", "--load", str(tmp_path / "r18.pth"), "--backbone", "resnet18",
                    "--data", str(cub_root)] + SMALL)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "linear.weight: checkpoint (16, 512) vs model (512, 512)" in err


def test_unknown_backbone_is_rejected_without_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(["--backbone", "vgg16"])
    assert exc.value.code == 2
    assert "invalid choice: 'vgg16'" in capsys.readouterr().err


def test_build_model_rejects_unknown_backbone():
    from errors import UserError
    with pytest.raises(UserError, match="unknown backbone 'vgg16'"):
        build_model("vgg16", pretrained=False)


def test_authors_spelling_of_num_image_per_class_is_accepted():
    args = run.parse_args(["--num_image_per_class", "3"])
    assert args.num_image_per_class == 3


def test_eval_every_skips_epochs_but_always_evaluates_the_last(cub_root, tmp_path, monkeypatch):
    """--eval-every 2 over 3 epochs: evaluations after epochs 0, 2 and 3 (the last), none after epoch 1."""
    evaluated = []
    real = run.evaluate

    def recording(model, loaders, ks, epoch=0, *args, **kwargs):
        evaluated.append(epoch)
        return real(model, loaders, ks, epoch, *args, **kwargs)

    monkeypatch.setattr(run, "evaluate", recording)
    save = tmp_path / "out"
    _main(["--dataset", "cub200", "--epochs", "3", "--eval-every", "2", "--data", str(cub_root),
           "--save-dir", str(save)] + SMALL_RUN)
    assert evaluated == [0, 2, 3]
    records = [line for line in (save / "metrics.jsonl").read_text().splitlines()]
    assert ["Recall@1" in r for r in records] == [True, False, True, True]
    assert re.search(r"Final Recall@1: [\d.]+", (save / "result.txt").read_text())
