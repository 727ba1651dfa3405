"""A run folder's record: what a resume checks before it writes, what --overwrite removes, which folders a new run
may take."""
import json
import shutil
from pathlib import Path

import pytest

import run
from errors import UserError
from minidata import make_cub
from model.checkpoint import read_weights_file, save_atomic
from small_run import SMALL, pretrained_file, run_main as _main
from test_run_safety import _epochs
from tools import sweep


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    return make_cub(tmp_path_factory.mktemp("data"))


def _contents(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _renamed_image(root: Path, tmp_path: Path) -> Path:
    """A copy of ``root`` with as many images and classes, one training image under another name."""
    other = tmp_path / "renamed"
    shutil.copytree(root, other)
    image = sorted((other / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    image.rename(image.with_name("Bird_1_9999.jpg"))
    return other


@pytest.mark.parametrize("tree", ["more images", "same counts, another image"])
def test_resume_on_another_data_tree_is_refused_and_writes_nothing(cub_root, tmp_path, tree):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    before = _contents(save)
    if tree == "more images":
        other, expected = make_cub(tmp_path / "other", per_class=5), "train images: 12 -> 15"
    else:
        other, expected = _renamed_image(cub_root, tmp_path), "other images or labels in the train split"
    with pytest.raises(UserError, match=f"the data under {other.resolve()} is not the tree the run trained on "
                                        f"\\(.*config.json records {cub_root.resolve()}\\): .*{expected}"):
        _main(["--resume", str(save), "--epochs", "2", "--data", str(other)])
    assert _contents(save) == before


def test_resume_where_a_relative_data_path_now_names_another_tree_is_refused(cub_root, tmp_path, monkeypatch):
    save, first, second = tmp_path / "run", tmp_path / "a", tmp_path / "b"
    make_cub(first / "data")
    make_cub(second / "data", classes=8)
    monkeypatch.chdir(first)
    _main(SMALL + ["--data", "data", "--save-dir", str(save), "--epochs", "1"])
    config = (save / "config.json").read_bytes()
    monkeypatch.chdir(second)
    with pytest.raises(UserError, match="not the tree the run trained on.*train classes: 3 -> 4"):
        _main(["--resume", str(save), "--epochs", "2"])
    assert (save / "config.json").read_bytes() == config and _epochs(save) == [1]


def test_a_moved_identical_tree_resumes_and_the_record_follows_it(cub_root, tmp_path, capsys):
    save, moved = tmp_path / "run", tmp_path / "moved"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    recorded = json.loads((save / "config.json").read_text())["data"]
    shutil.copytree(cub_root, moved)
    _main(["--resume", str(save), "--epochs", "2", "--data", str(moved)])
    assert "the data moved from" in capsys.readouterr().out and _epochs(save) == [1, 2]
    data = json.loads((save / "config.json").read_text())["data"]
    assert data["root"] == str(moved.resolve())
    assert (data["counts"], data["samples"]) == (recorded["counts"], recorded["samples"])
    assert set(data["samples"]) == {"train", "test"}


def test_resume_with_replaced_pretrained_weights_is_refused(cub_root, tmp_path):
    weights, save = pretrained_file(tmp_path / "imagenet.pth"), tmp_path / "run"
    flags = SMALL + ["--pretrained", str(weights), "--data", str(cub_root)]
    _main(flags + ["--save-dir", str(save), "--epochs", "1"])
    recorded = json.loads((save / "config.json").read_text())["weights"]
    assert recorded["file"] == str(weights.resolve())
    before = _contents(save)
    state = read_weights_file(weights)
    save_atomic({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)
    with pytest.raises(UserError, match=f"ImageNet weights {weights.resolve()} have sha256 [0-9a-f]{{64}}, but the "
                                        f"run started from a file with sha256 {recorded['sha256']}"):
        _main(["--resume", str(save), "--epochs", "2"])
    assert _contents(save) == before


def test_resuming_a_proxy_loss_on_another_class_count_is_refused_before_anything_is_written(cub_root, tmp_path):
    save, more = tmp_path / "run", make_cub(tmp_path / "more", classes=8)
    flags = SMALL + ["--loss", "proxy-anchor", "--data", str(cub_root)]
    _main(flags + ["--save-dir", str(save), "--epochs", "1"])
    before = _contents(save)
    with pytest.raises(UserError, match="train classes: 3 -> 4"):
        _main(["--resume", str(save), "--epochs", "2", "--data", str(more)])
    assert _contents(save) == before


def test_overwrite_removes_every_output_of_the_old_run_tensorboard_included(cub_root, tmp_path):
    save = tmp_path / "run"
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--tensorboard", "--plot"])
    assert (save / "tb").is_dir() and (save / "curves.png").is_file()
    (save / "notes.txt").write_text("the user's own file")
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--overwrite"])
    assert not (save / "tb").exists() and not (save / "curves.png").exists()
    assert (save / "notes.txt").read_text() == "the user's own file" and _epochs(save) == [1]


def _stopped_before_the_first_checkpoint(cub_root: Path, save: Path, monkeypatch) -> None:
    """A run killed during epoch 0's evaluation: config.json and tb/ are written, no checkpoint."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(run, "evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1", "--tensorboard"])
    assert sorted(p.name for p in save.iterdir()) == [".lock", "config.json", "tb"]


def test_a_folder_left_before_the_first_checkpoint_is_taken_by_a_new_run(cub_root, tmp_path, monkeypatch, capsys):
    save = tmp_path / "run"
    _stopped_before_the_first_checkpoint(cub_root, save, monkeypatch)
    stale_events = {p.name for p in (save / "tb").iterdir()}
    with pytest.raises(SystemExit):
        run.parse_args(["--resume", str(save)])
    assert f"stopped before its first checkpoint and left only config.json and tb, so there is nothing to " \
           f"continue: start it again with --save-dir {save}" in capsys.readouterr().err
    _main(SMALL + ["--data", str(cub_root), "--save-dir", str(save), "--epochs", "1"])
    out = capsys.readouterr().out
    assert f"{save} holds only config.json and tb of a run stopped before its first checkpoint" in out
    assert _epochs(save) == [1] and not (save / "tb").exists() and stale_events


def test_a_folder_of_evaluation_exports_is_not_called_a_run_to_resume(cub_root, tmp_path):
    exports = tmp_path / "exports"
    _main(SMALL + ["--mode", "eval", "--data", str(cub_root), "--save-dir", str(exports), "--save-embeddings"])
    with pytest.raises(UserError, match=r"already holds a run's outputs \(embeddings.pt\) but no checkpoint.pth to "
                                        "continue; choose another --save-dir, or pass --overwrite") as exc:
        _main(SMALL + ["--data", str(cub_root), "--save-dir", str(exports), "--epochs", "1"])
    assert "--resume" not in str(exc.value)


def test_the_sweep_restarts_a_seed_stopped_before_its_first_checkpoint(cub_root, tmp_path, monkeypatch):
    root = tmp_path / "result"
    save = root / "cub200" / "triplet" / "seed1"
    _stopped_before_the_first_checkpoint(cub_root, save, monkeypatch)
    monkeypatch.setattr(sweep, "execute", lambda cmd: run.cli(cmd[2:]))
    argv = ["--dataset", "cub200", "--seeds", "1", "--methods", "triplet", "--root", str(root), "--", *SMALL,
            "--epochs", "1", "--data", str(cub_root)]
    assert sweep.main(argv) == 0
    assert _epochs(save) == [1] and (save / "result.txt").is_file()


def test_default_save_dir_skips_a_file_named_result(cub_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "result").write_text("a file of the user's")
    _main(SMALL + ["--data", str(cub_root), "--epochs", "1"])
    assert "./result is a file; this run writes to result_1" in capsys.readouterr().out
    assert (tmp_path / "result").read_text() == "a file of the user's" and _epochs(tmp_path / "result_1") == [1]
