"""Every benchmark through the real path: local server -> download -> checksum -> extract -> parse -> train."""
import hashlib
import shlex
import shutil

import pytest
import torch

import run
from dataset import CUB200, Cars196, Folder, InShop, StanfordOnlineProducts
from dataset.benchmark import Remote
from errors import UserError
from experiment.flags import get_args_parser
from http_server import serve
from minidata import make_cars, make_cub, make_folder, make_inshop, make_sop, tar_tree, zip_tree
from small_run import BACKBONE

AUTHORS_TRAINING = {
    "cub200": ["--dataset cub200 --lr 5e-5 --recall 1 2 4 8",
               "--dataset cub200 --lr 5e-5 --recall 1 2 4 8 --l2norm",
               "--dataset cub200 --lr 5e-5 --recall 1 2 4 8 --lambda-mdr 0.6 --nu-mdr 0.01"],
    "cars196": ["--dataset cars196 --lr 5e-5 --recall 1 2 4 8",
                "--dataset cars196 --lr 5e-5 --recall 1 2 4 8 --l2norm",
                "--dataset cars196 --lr 5e-5 --recall 1 2 4 8 --lambda-mdr 0.2 --nu-mdr 0.01"],
    "stanford": ["--dataset stanford --num-image-per-class 3 --batch 256 --lr 1e-4 --recall 1 10 100 1000",
                 "--dataset stanford --num_image_per_class 3 --batch 256 --lr 1e-4 --recall 1 10 100 1000 --l2norm",
                 "--dataset stanford --num-image-per-class 3 --batch 256 --lr 1e-4 --recall 1 10 100 1000 "
                 "--lambda-mdr 0.1 --nu-mdr 0.01"],
    "inshop": ["--num-image-per-class 3 --batch 256 --lr 1e-4 --recall 1 10 20 30 40",
               "--num-image-per-class 3 --batch 256 --lr 1e-4 --recall 1 10 20 30 40 --l2norm",
               "--num-image-per-class 3 --batch 256 --lr 1e-4 --recall 1 10 20 30 40 --lambda-mdr 0.1 --nu-mdr 0.01"],
}
SMALL = ["--no-pretrained", "--image-size", "64", "--device", "cpu", "--workers", "0", "--batch", "8",
         "--iter-per-epoch", "1", "--epochs", "1", "--eval-batch", "32", "--backbone", BACKBONE]


def md5_of(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Archives of all benchmarks in their real layouts, served on 127.0.0.1."""
    src = tmp_path_factory.mktemp("src")
    srv = tmp_path_factory.mktemp("srv")
    make_cub(src)
    tar_tree(src, srv / "CUB_200_2011.tgz", "CUB_200_2011")
    make_cars(src)
    tar_tree(src / "Cars196", srv / "car_ims.tgz", "car_ims")
    shutil.copy(src / "Cars196" / "cars_annos.mat", srv / "cars_annos.mat")
    make_sop(src)
    zip_tree(src, srv / "Stanford_Online_Products.zip", "Stanford_Online_Products")
    make_inshop(src)
    zip_tree(src / "Inshop", srv / "img.zip", "img")
    shutil.copy(src / "Inshop" / "list_eval_partition.txt", srv / "list_eval_partition.txt")
    with serve(srv) as url:
        yield srv, url


@pytest.fixture
def local_sources(server, monkeypatch):
    srv, url = server
    monkeypatch.setattr(CUB200, "remotes", (Remote("CUB_200_2011.tgz", (url + "missing.tgz", url + "CUB_200_2011.tgz"),
                                                   md5_of(srv / "CUB_200_2011.tgz"), "CUB_200_2011/images"),))
    monkeypatch.setattr(Cars196, "remotes", (
        Remote("Cars196/car_ims.tgz", (url + "car_ims.tgz",), md5_of(srv / "car_ims.tgz"), "Cars196/car_ims", "Cars196"),
        Remote("Cars196/cars_annos.mat", (url + "cars_annos.mat",), md5_of(srv / "cars_annos.mat"),
               "Cars196/cars_annos.mat", None)))
    monkeypatch.setattr(StanfordOnlineProducts, "remotes", (
        Remote("Stanford_Online_Products.zip", (url + "Stanford_Online_Products.zip",),
               md5_of(srv / "Stanford_Online_Products.zip"), "Stanford_Online_Products/Ebay_test.txt"),))
    return srv


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def _place_inshop_by_hand(srv, root):
    (root / "Inshop").mkdir(parents=True, exist_ok=True)
    shutil.copy(srv / "img.zip", root / "Inshop" / "img.zip")
    shutil.copy(srv / "list_eval_partition.txt", root / "Inshop" / "list_eval_partition.txt")


@pytest.mark.parametrize("dataset", list(AUTHORS_TRAINING))
def test_authors_training_commands_run_on_every_benchmark(dataset, local_sources, data_root, tmp_path):
    if dataset == "inshop":
        _place_inshop_by_hand(local_sources, data_root)
    for i, command in enumerate(AUTHORS_TRAINING[dataset]):
        argv = shlex.split(command) + SMALL + ["--data", str(data_root), "--save-dir", str(tmp_path / str(i))]
        args = run.parse_args(argv, "inshop" if dataset == "inshop" else "cub200")
        results = run.main(args)
        assert set(results) == {f"Recall@{k}" for k in args.recall}
        assert (tmp_path / str(i) / "result.txt").is_file()


def test_inshop_eval_mode_is_query_to_gallery(local_sources, data_root, tmp_path, capsys):
    _place_inshop_by_hand(local_sources, data_root)
    argv = ["--mode", "eval", "--recall", "1", "2"] + SMALL + ["--data", str(data_root)]
    results = run.main(get_args_parser("inshop").parse_args(argv))
    out = capsys.readouterr().out
    assert "Number of images in Query set: 6" in out and "Number of images in Gallery set: 6" in out
    assert set(results) == {"Recall@1", "Recall@2"}


def test_splits_and_labels_follow_the_authors(tmp_path):
    make_cub(tmp_path)
    train, test = CUB200(tmp_path, "train"), CUB200(tmp_path, "test")
    assert sorted(set(train.labels)) == [0, 1, 2] and sorted(set(test.labels)) == [3, 4, 5]
    assert all("/CUB_200_2011/images/00" in p for p, _ in train.samples)
    make_cars(tmp_path)
    cars_train, cars_test = Cars196(tmp_path, "train"), Cars196(tmp_path, "test")
    assert set(cars_train.labels) == {0, 1, 2} and set(cars_test.labels) == {98, 99, 100}
    make_sop(tmp_path)
    assert set(StanfordOnlineProducts(tmp_path, "test").labels) == {3, 4, 5}
    make_inshop(tmp_path)
    query, gallery = InShop(tmp_path, "query"), InShop(tmp_path, "gallery")
    assert set(query.labels) == set(gallery.labels) == {4, 5, 6}
    assert query.item_ids[0] == "id_00000004"
    image, label = query[0]
    assert label == 4 and image.size == (40, 32)


def test_folder_dataset_split_and_override(tmp_path):
    make_folder(tmp_path / "mine", classes=6)
    assert set(Folder(tmp_path / "mine", "train").labels) == {0, 1, 2}
    assert set(Folder(tmp_path / "mine", "test", train_classes=4).labels) == {4, 5}
    with pytest.raises(UserError, match="--train-classes"):
        Folder(tmp_path / "mine", "train", train_classes=6)


def test_folder_dataset_trains_with_run(tmp_path):
    make_folder(tmp_path / "mine", classes=6)
    argv = ["--dataset", "folder", "--data", str(tmp_path / "mine"), "--save-dir", str(tmp_path / "out"),
            "--num-image-per-class", "2"] + SMALL
    assert "Recall@1" in run.main(run.parse_args(argv))


def test_existing_tree_is_used_without_network(tmp_path, monkeypatch):
    make_cub(tmp_path)
    monkeypatch.setattr(CUB200, "remotes", (Remote("CUB_200_2011.tgz", ("http://127.0.0.1:9/never",), "0" * 32,
                                                   "CUB_200_2011/images"),))
    assert len(CUB200(tmp_path, "train", download=True)) == 12


def test_missing_split_file_names_it(tmp_path):
    make_sop(tmp_path)
    (tmp_path / "Stanford_Online_Products" / "Ebay_test.txt").unlink()
    with pytest.raises(UserError, match=r"Stanford_Online_Products/Ebay_test.txt not found under .*download"):
        StanfordOnlineProducts(tmp_path, "test")


def test_missing_image_is_named(tmp_path):
    make_sop(tmp_path)
    (tmp_path / "Stanford_Online_Products" / "bicycle_final" / "1_0.JPG").unlink()
    with pytest.raises(UserError, match="1_0.JPG"):
        StanfordOnlineProducts(tmp_path, "train")


def test_cars_without_source_gives_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(Cars196, "remotes", tuple(
        Remote(r.path, ("http://127.0.0.1:9/gone",), r.md5, r.provides, r.extract_to) for r in Cars196.remotes))
    with pytest.raises(UserError) as exc:
        Cars196(tmp_path, "train", download=True)
    message = str(exc.value)
    assert "car_ims.tgz (md5 d5c8f0aa497503f355e17dc7886c3f14)" in message
    assert "cars_annos.mat (md5 b407c6086d669747186bd1d764ff9dbc)" in message


def test_inshop_missing_files_give_instructions(tmp_path):
    with pytest.raises(UserError, match="In-Shop must be downloaded by hand.*img.zip.*list_eval_partition.txt"):
        InShop(tmp_path, "query", download=True)


def test_corrupt_jpeg_in_training_set_names_the_file(tmp_path):
    make_cub(tmp_path)
    for bad in (tmp_path / "CUB_200_2011" / "images").glob("00[123].*/*.jpg"):  # every training image
        bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    argv = ["--data", str(tmp_path), "--save-dir", str(tmp_path / "out"), "--num-image-per-class", "4"] + SMALL
    with pytest.raises(UserError, match=r"cannot decode image .*/00[123]\.Bird_\d/Bird_\d_\d{4}\.jpg"):
        run.main(run.parse_args(argv))


def test_class_with_a_single_image_trains(tmp_path):
    make_cub(tmp_path)
    folder = tmp_path / "CUB_200_2011" / "images" / "002.Bird_2"
    for extra in sorted(folder.iterdir())[1:]:
        extra.unlink()
    argv = ["--data", str(tmp_path), "--save-dir", str(tmp_path / "out"), "--num-image-per-class", "2"] + SMALL + [
        "--iter-per-epoch", "3"]
    results = run.main(run.parse_args(argv))
    assert torch.isfinite(torch.tensor(results["Recall@1"]))
