"""tools.toy_data: a tiny class-folder image set that --dataset folder reads, deterministic for its seed."""
import numpy as np
import pytest
from PIL import Image

from dataset.folder import Folder
from errors import UserError
from tools.toy_data import class_names, cli, write_toy_set


def pixels(root):
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


def test_writes_classes_of_images_of_the_size_asked_for(tmp_path):
    root = write_toy_set(tmp_path / "toy", classes=6, images=3, size=40, seed=5)
    assert sorted(p.name for p in root.iterdir()) == class_names(6)
    images = pixels(root)
    assert len(images) == 18
    assert {a.shape for a in images.values()} == {(40, 40, 3)}
    assert {a.dtype for a in images.values()} == {np.dtype(np.uint8)}
    assert not [p for p in tmp_path.iterdir() if p.name != "toy"], "the staging folder was left behind"


def test_the_pixels_depend_on_the_seed_alone(tmp_path):
    a = pixels(write_toy_set(tmp_path / "a", classes=4, images=2, seed=3))
    b = pixels(write_toy_set(tmp_path / "b", classes=4, images=2, seed=3))
    c = pixels(write_toy_set(tmp_path / "c", classes=4, images=2, seed=4))
    assert a.keys() == b.keys() == c.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not any(np.array_equal(a[k], c[k]) for k in a)


def test_paired_classes_share_a_colour_and_images_of_a_class_differ(tmp_path):
    names = class_names(8)
    assert [n.split("_")[1] for n in names] == ["red", "red", "green", "green", "blue", "blue", "yellow", "yellow"]
    assert len({n.split("_")[2] for n in names}) == 8, "every class has its own orientation"
    images = pixels(write_toy_set(tmp_path / "toy", classes=8, images=2))
    first = [a for k, a in images.items() if k.startswith(names[0])]
    assert not np.array_equal(first[0], first[1])


def test_dataset_folder_reads_it_as_two_halves_of_classes(tmp_path):
    root = write_toy_set(tmp_path / "toy", classes=8, images=3)
    train, test = Folder(root, "train"), Folder(root, "test")
    assert len(train) == len(test) == 12
    assert sorted({label for _, label in train.samples}) == [0, 1, 2, 3]
    assert sorted({label for _, label in test.samples}) == [4, 5, 6, 7]


@pytest.mark.parametrize("existing", ["file", "folder with a file"])
def test_refuses_a_path_that_holds_anything_and_touches_nothing(tmp_path, existing, capsys):
    out = tmp_path / "mine"
    if existing == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an empty folder"):
        write_toy_set(out)
    assert cli([str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(out) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    kept = out if existing == "file" else out / "notes.txt"
    assert kept.read_text() == "keep me"


def test_an_empty_folder_is_filled(tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert cli([str(out), "--classes", "4", "--images", "2", "--size", "32"]) == 0
    assert len(pixels(out)) == 8
    assert "--dataset folder --data" in capsys.readouterr().out


def test_too_few_classes_or_images_are_one_argparse_error(tmp_path, capsys):
    for flags in (["--classes", "3"], ["--images", "1"], ["--size", "16"]):
        with pytest.raises(SystemExit) as exit_:
            cli([str(tmp_path / "x"), *flags])
        assert exit_.value.code == 2
        assert flags[0] in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
