"""Cars-196 in the original, torchvision/Kaggle and class-folder layouts: same images, same labels, same split."""
import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from dataset import Cars196
from dataset.benchmark import Remote
from dataset.cars import CLASS_NAMES_FILE, read_class_names, name_key
from errors import UserError
from minidata import (cars_images, make_cars, tar_tree, write, write_cars_class_folders, write_cars_devkit,
                      write_cars_meta, write_cars_original)

OFFICIAL_NAMES = read_class_names(Path("/nonexistent"))[0]


def pairs(root: Path, split: str) -> list[tuple[bytes, int]]:
    """(image content, label) of a split, in the dataset's order."""
    return [(Path(path).read_bytes(), label) for path, label in Cars196(root, split).samples]


def layouts(tmp_path: Path, images, nested: bool = False, test_annos_in_devkit: bool = False,
            folder: str = "stanford_cars", bbox: bool = True) -> dict[str, Path]:
    """The same images written once per layout, each under its own --data folder."""
    return {"original": write_cars_original(tmp_path / "original", images, bbox),
            "devkit": write_cars_devkit(tmp_path / "devkit", images, folder, nested, test_annos_in_devkit, bbox),
            "class folders": write_cars_class_folders(tmp_path / "folders", images, OFFICIAL_NAMES, folder)}


def test_shipped_class_names_are_the_196_official_ones():
    assert len(OFFICIAL_NAMES) == 196 and len(set(map(name_key, OFFICIAL_NAMES))) == 196
    assert OFFICIAL_NAMES[0] == "AM General Hummer SUV 2000" and OFFICIAL_NAMES[-1] == "smart fortwo Convertible 2012"
    assert OFFICIAL_NAMES[97] == "Eagle Talon Hatchback 1998" and OFFICIAL_NAMES[98] == "FIAT 500 Abarth 2012"
    assert OFFICIAL_NAMES.index("Ram C/V Cargo Van Minivan 2012") == 173
    assert CLASS_NAMES_FILE.read_text().startswith("# ")  # the source is noted


@pytest.mark.parametrize("nested, test_annos_in_devkit, folder", [(False, False, "stanford_cars"),
                                                                  (True, True, "Cars196")])
def test_three_layouts_give_the_same_images_and_labels(tmp_path, nested, test_annos_in_devkit, folder):
    images = cars_images(classes=8, per_class=5)
    roots = layouts(tmp_path, images, nested, test_annos_in_devkit, folder)
    for split, labels in (("train", {0, 1, 2, 3}), ("test", {98, 99, 100, 101})):
        original = pairs(roots["original"], split)
        assert {label for _, label in original} == labels and len(original) == 20
        devkit, folders = pairs(roots["devkit"], split), pairs(roots["class folders"], split)
        assert sorted(devkit) == sorted(folders) == sorted(original)
        assert devkit == folders  # both by class, official train before test, then file number
    assert Cars196(roots["devkit"], "train").base == roots["devkit"] / folder


def test_class_names_come_from_cars_meta_when_present(tmp_path):
    images = cars_images()
    names = [f"Model {i:03d}" for i in range(196, 0, -1)]  # no official name, reversed numbering
    write_cars_class_folders(tmp_path, images, names)
    write_cars_meta(tmp_path / "Cars196" / "devkit" / "cars_meta.mat", names)
    (tmp_path / "Cars196" / "train" / ".ipynb_checkpoints").mkdir()
    assert sorted(pairs(tmp_path, "test")) == sorted(pairs(write_cars_original(tmp_path / "o", images), "test"))


def test_class_folder_names_as_mirrors_spell_them(tmp_path):
    ram = OFFICIAL_NAMES.index("Ram C/V Cargo Van Minivan 2012") + 1
    images = [(ram, False, b"a"), (ram, True, b"b"), (196, True, b"c"), (1, False, b"d")]
    spelled = list(OFFICIAL_NAMES)
    spelled[195] = "Smart fortwo Convertible 2012"
    write_cars_class_folders(tmp_path, images, spelled)
    (tmp_path / "Cars196" / "test" / f"{spelled[ram - 1]}".replace("/", "-")).rename(
        tmp_path / "Cars196" / "test" / "Ram CV Cargo Van Minivan 2012")
    assert pairs(tmp_path, "test") == [(b"a", ram - 1), (b"b", ram - 1), (b"c", 195)]
    assert pairs(tmp_path, "train") == [(b"d", 0)]


def full_size_images(blank: Path) -> list:
    """16,185 images, all links to the file ``blank``: 8,054 in classes 1-98 and 8,131 in 99-196, 8,144 of them
    in the official train set, each count spread evenly (so every class has images in both official sets)."""
    def spread(total: int, parts: int) -> list[int]:
        return [(i + 1) * total // parts - i * total // parts for i in range(parts)]
    classes = [cls for cls, n in enumerate(spread(8054, 98) + spread(8131, 98), start=1) for _ in range(n)]
    official_train = spread(8144, len(classes))
    return [(cls, not in_train, blank) for cls, in_train in zip(classes, official_train)]


def test_full_size_counts_in_every_layout(tmp_path):
    images = full_size_images(write(tmp_path / "blank.jpg", b""))
    assert len(images) == 16185 and sum(not test for _, test, _ in images) == 8144
    for name, root in layouts(tmp_path, images, nested=True, bbox=False).items():
        train, test = Cars196(root, "train"), Cars196(root, "test")
        assert (len(train), len(test)) == (8054, 8131), name
        assert set(train.labels) == set(range(98)) and set(test.labels) == set(range(98, 196)), name


def test_partial_original_tree_gives_applicable_advice(tmp_path):
    src = make_cars(tmp_path / "src")
    make_cars(tmp_path)
    base = tmp_path / "Cars196"
    tar_tree(src / "Cars196", base / "car_ims.tgz", "car_ims")
    (base / "car_ims" / "000014.jpg").unlink()  # an interrupted copy: car_ims/ exists, so the tgz is not extracted
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "test")
    message = str(exc.value)
    assert "000014.jpg" in message and "is incomplete" in message and "remove that folder" in message
    assert "\n" not in message
    shutil.rmtree(base / "car_ims")  # follow the advice: car_ims.tgz is already in place
    assert len(Cars196(tmp_path, "test")) == 12


def test_tree_matching_no_layout_says_what_was_looked_for(tmp_path):
    (tmp_path / "Cars196").mkdir()
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "train")
    message = str(exc.value)
    for looked_for in ("car_ims", "cars_annos.mat", "{Cars196,stanford_cars}", "cars_train/", "cars_test/",
                       "cars_train_annos.mat", "cars_test_annos_withlabels.mat", "train/<class name>/",
                       "test/<class name>/", "car_ims.tgz (md5 d5c8f0aa497503f355e17dc7886c3f14)"):
        assert looked_for in message
    assert "\n" not in message


def test_missing_annotations_name_only_what_is_missing(tmp_path):
    make_cars(tmp_path)
    (tmp_path / "Cars196" / "cars_annos.mat").unlink()
    with pytest.raises(UserError, match=r"obtain cars_annos.mat \(md5 b407c6086d669747186bd1d764ff9dbc\), put it in"):
        Cars196(tmp_path, "train")


@pytest.mark.parametrize("remove, named", [
    (("stanford_cars/cars_test",), r"stanford_cars \(torchvision/Kaggle layout\) lacks cars_test/$"),
    (("stanford_cars/cars_test_annos_withlabels.mat",),
     r"lacks cars_test_annos_withlabels.mat \(in devkit/ or beside it, not the unlabelled cars_test_annos.mat\)$"),
    (("stanford_cars/cars_train", "stanford_cars/devkit/cars_train_annos.mat"),
     r"lacks cars_train/, cars_train_annos.mat \(in devkit/ or beside it\)$"),
])
def test_partial_devkit_tree_names_what_is_missing(tmp_path, remove, named):
    write_cars_devkit(tmp_path, cars_images())
    for path in remove:
        shutil.rmtree(tmp_path / path) if (tmp_path / path).is_dir() else (tmp_path / path).unlink()
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "train")
    assert re.search(named, str(exc.value).split(";")[0]), str(exc.value)


def test_partial_class_folder_tree_and_unknown_class_are_named(tmp_path):
    write_cars_class_folders(tmp_path, cars_images(), OFFICIAL_NAMES, folder="stanford_cars")
    shutil.rmtree(tmp_path / "stanford_cars" / "test")
    with pytest.raises(UserError, match=r"stanford_cars \(class-folder layout\) lacks test/"):
        Cars196(tmp_path, "train")
    (tmp_path / "stanford_cars" / "test" / "Tesla Roadster 2008").mkdir(parents=True)
    with pytest.raises(UserError, match=r"test/Tesla Roadster 2008 is not a Cars-196 class name of .*cars196_classes"):
        Cars196(tmp_path, "train")


def test_devkit_image_missing_names_it(tmp_path):
    write_cars_devkit(tmp_path, cars_images(), nested=True)
    (tmp_path / "stanford_cars" / "cars_test" / "cars_test" / "00007.jpg").unlink()
    with pytest.raises(UserError, match=r"cars_test/cars_test/00007.jpg; restore the missing files of the "
                                        r"torchvision/Kaggle layout copy under .*stanford_cars"):
        Cars196(tmp_path, "test")


def test_original_layout_wins_and_only_it_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setattr(Cars196, "remotes", tuple(
        Remote(r.path, ("http://127.0.0.1:9/gone",), r.md5, r.provides, r.extract_to) for r in Cars196.remotes))
    images = cars_images()
    write_cars_devkit(tmp_path, images)
    assert sorted(pairs(tmp_path, "train")) == sorted(pairs(write_cars_original(tmp_path / "o", images), "train"))
    assert len(Cars196(tmp_path, "train", download=True)) == 12  # a complete copy needs no download
    make_cars(tmp_path, classes=2, per_class=1)
    shutil.rmtree(tmp_path / "stanford_cars" / "cars_test")  # a partial copy beside a complete original
    assert Cars196(tmp_path, "test").samples == [(str(tmp_path / "Cars196" / "car_ims" / "000002.jpg"), 98)]


# --- issue 22: annotation files that are no MAT files, junk cars_meta.mat, bad class fields, placed archives ---

NOT_MAT = [b"", bytes(200), b"<!DOCTYPE html><html><body>Sign in</body></html>", b"not a MAT file\n" * 20]


@pytest.mark.parametrize("content", NOT_MAT, ids=["empty", "zeros", "html", "text"])
@pytest.mark.parametrize("layout, annotations, fix", [
    ("original", "Cars196/cars_annos.mat", "replace it with cars_annos.mat (md5 b407c6086d669747186bd1d764ff9dbc)"),
    ("devkit", "stanford_cars/devkit/cars_train_annos.mat", "replace it with the devkit's copy"),
])
def test_annotation_file_that_is_no_mat_file_is_one_line(tmp_path, content, layout, annotations, fix):
    if layout == "original":
        make_cars(tmp_path)
    else:
        write_cars_devkit(tmp_path, cars_images())
    (tmp_path / annotations).write_bytes(content)
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "train")
    message = str(exc.value)
    assert message.startswith(f"cannot read {tmp_path / annotations} as a MAT file (") and message.endswith(fix)
    assert "\n" not in message


@pytest.mark.parametrize("junk, found", [
    (b"", "cannot read"), (bytes(200), "cannot read"),
    (list(range(196)), "expected 196 distinct class names, found"),
    (["Same Car 2012"] * 196, "expected 196 distinct class names, found a name twice"),
], ids=["empty", "zeros", "numbers", "duplicates"])
def test_junk_cars_meta_is_one_line(tmp_path, junk, found):
    write_cars_class_folders(tmp_path, cars_images(), OFFICIAL_NAMES)
    meta = tmp_path / "Cars196" / "devkit" / "cars_meta.mat"
    write_cars_meta(meta, OFFICIAL_NAMES)
    if isinstance(junk, bytes):
        meta.write_bytes(junk)
    else:
        write_cars_meta(meta, junk)
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "train")
    message = str(exc.value)
    assert str(meta) in message and found in message and "\n" not in message
    assert message.endswith("replace it with the devkit's cars_meta.mat, or remove it to use cars196_classes.txt")


@pytest.mark.parametrize("value", ["three", 0, 197, 2.5, -1])
@pytest.mark.parametrize("layout", ["original", "devkit"])
def test_class_field_that_is_no_class_number_is_named(tmp_path, value, layout):
    images = cars_images()
    images[0] = (value, False, images[0][2])  # the first annotation of the official train set in both layouts
    if layout == "original":
        write_cars_original(tmp_path, images)
        annotations = tmp_path / "Cars196" / "cars_annos.mat"
    else:
        write_cars_devkit(tmp_path, images)
        annotations = tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "test")
    assert str(exc.value).startswith(f"{annotations}, annotation 1: expected a class number from 1 to 196, "
                                     f"found {value!r}; replace it with ")


def test_devkit_file_name_that_is_no_text_is_named(tmp_path):
    write_cars_devkit(tmp_path, cars_images())
    path = tmp_path / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    annotations = scipy.io.loadmat(path)["annotations"]
    annotations[0, 1]["fname"] = np.array([[7]])
    scipy.io.savemat(path, {"annotations": annotations})
    with pytest.raises(UserError, match=r"cars_train_annos\.mat, annotation 2: expected a file name in 'fname', "
                                        r"found 7; replace it with the devkit's copy"):
        Cars196(tmp_path, "train")


def test_car_ims_placed_by_hand_is_used_with_a_warning_when_downloads_are_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Cars196, "remotes", tuple(dataclasses.replace(r, urls=("http://127.0.0.1:9/gone",))
                                                  for r in Cars196.remotes))
    src = make_cars(tmp_path / "src")
    base = tmp_path / "data" / "Cars196"
    base.mkdir(parents=True)
    tar_tree(src / "Cars196", base / "car_ims.tgz", "car_ims")
    shutil.copy(src / "Cars196" / "cars_annos.mat", base)
    assert len(Cars196(tmp_path / "data", "train", download=True)) == 12
    out = capsys.readouterr().out
    assert f"[Warning] {base / 'car_ims.tgz'} has md5 " in out
    assert "not the published d5c8f0aa497503f355e17dc7886c3f14" in out
    assert (base / "car_ims.tgz").is_file() and not list(base.glob("*.bad*"))
