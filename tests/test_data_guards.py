"""Issue 16, data half: class folders, a self-checking cache, image errors through workers, applicable advice."""
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from dataset import CUB200, Cars196, Folder, InShop, StanfordOnlineProducts
from dataset import benchmark, cache
from dataset.benchmark import Remote
from dataset.decode import load_rgb
from dataset.download import download, extract_archive
from dataset.image_list import ImageList
from dataset.transforms import build_transforms
from errors import UserError
from http_server import serve
from minidata import make_cub, make_folder, make_inshop, make_sop, tar_tree, write, zip_tree

_, TEST_TF = build_transforms("resnet18", 64)  # Resize((73, 73)), then a center crop


def _samples(root: Path, count: int = 4) -> list[tuple[str, int]]:
    return [(str(p), i) for i, p in enumerate(sorted(root.rglob("*.jpg"))[:count])]


def _corrupt(path: str | Path) -> None:
    Path(path).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


# --- item 5: hidden and empty class folders --------------------------------------------------------------

def test_folder_ignores_hidden_and_imageless_folders(tmp_path, capsys):
    clean, messy = make_folder(tmp_path / "clean", classes=4), make_folder(tmp_path / "messy", classes=4)
    write(messy / ".ipynb_checkpoints" / "0-checkpoint.jpg", (messy / "class_0" / "0.jpg").read_bytes())
    (messy / ".git" / "objects").mkdir(parents=True)
    write(messy / "class_1a_empty" / "notes.txt", b"no images here")
    write(messy / "class_2" / "._0.jpg", b"macOS resource fork, not an image")
    for split in ("train", "test"):
        expected = [(Path(p).relative_to(clean), y) for p, y in Folder(clean, split).samples]
        assert [(Path(p).relative_to(messy), y) for p, y in Folder(messy, split).samples] == expected
    lines = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert len(lines) == 2 and all(str(messy) in line for line in lines)  # one line per split read
    assert ".git" in lines[0] and ".ipynb_checkpoints" in lines[0] and "class_1a_empty" in lines[0]


# --- item 7: the cache ---------------------------------------------------------------------------------

def _cached(samples, cache_dir, **kwargs) -> ImageList:
    return ImageList(samples, TEST_TF, cache_dir=cache_dir, cache_name="s", cache_workers=0, **kwargs)


def _zero_pixels(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(-1000, os.SEEK_END)
        f.write(bytes(1000))


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _damage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(b"garbage!")


@pytest.mark.parametrize("damage", [_zero_pixels, _truncate, _damage_header])
def test_damaged_cache_is_detected_and_rebuilt_with_one_notice(tmp_path, capsys, damage):
    samples = _samples(make_cub(tmp_path))
    first = _cached(samples, tmp_path / "c")
    assert first.cache_path.name.startswith("s-73px-") and "-crc" in first.cache_path.name
    damage(first.cache_path)
    capsys.readouterr()
    again = _cached(samples, tmp_path / "c")
    notices = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(notices) == 1 and notices[0].startswith(f"[Cache] {first.cache_path} is damaged (")
    assert notices[0].endswith("); rebuilding it")
    assert again.cache_path == first.cache_path  # the same content, so the same checksum
    assert cache.damage(again.cache_path, 4, 73) is None
    plain = ImageList(samples, TEST_TF)
    assert all(torch.equal(again[i][0], plain[i][0]) for i in range(4))


def test_damage_reports_what_is_wrong(tmp_path):
    path = _cached(_samples(make_cub(tmp_path)), tmp_path / "c").cache_path
    _zero_pixels(path)
    assert "checksum" in cache.damage(path, 4, 73)
    _truncate(path)
    assert cache.damage(path, 4, 73).startswith("truncated")


def test_superseded_cache_of_the_same_split_is_removed(tmp_path):
    samples = _samples(make_cub(tmp_path))
    first = _cached(samples, tmp_path / "c").cache_path
    other_split = ImageList(samples, TEST_TF, cache_dir=tmp_path / "c", cache_name="t", cache_workers=0).cache_path
    other_size = ImageList(samples, build_transforms("resnet18", 96)[1], cache_dir=tmp_path / "c",
                           cache_name="s", cache_workers=0).cache_path
    legacy = tmp_path / "c" / f"s-73px-{'0' * 20}.npy"  # a cache without checksum, as earlier versions wrote
    legacy.write_bytes(b"old")
    os.utime(samples[0][0], ns=(1, 1))  # the data changed: a new key
    second = _cached(samples, tmp_path / "c").cache_path
    assert second != first and not first.exists() and not legacy.exists()
    assert sorted((tmp_path / "c").iterdir()) == sorted([second, other_split, other_size])


def test_caches_of_two_data_roots_do_not_supersede_each_other(tmp_path):
    a, b = make_cub(tmp_path / "a"), make_cub(tmp_path / "b")
    first = CUB200(a, "test", transform=TEST_TF, cache_dir=tmp_path / "c", cache_workers=0).cache_path
    second = CUB200(b, "test", transform=TEST_TF, cache_dir=tmp_path / "c", cache_workers=0).cache_path
    assert first.exists() and second.exists() and first != second


@pytest.fixture
def build_workers(monkeypatch) -> list:
    """The worker counts of the cache builds' DataLoaders, as they are created."""
    seen = []

    class Recording(DataLoader):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(cache, "DataLoader", Recording)
    return seen


@pytest.mark.parametrize("make", [lambda root, **kw: CUB200(make_cub(root), "test", **kw),
                                  lambda root, **kw: Folder(make_folder(root), "test", **kw)])
@pytest.mark.parametrize("workers", [0, 2])
def test_cache_build_uses_the_given_worker_count(tmp_path, build_workers, make, workers):
    make(tmp_path / "data", transform=TEST_TF, cache_dir=tmp_path / "c", cache_workers=workers)
    assert build_workers == [workers]


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in; root ignores modes, so it gets one in sysfs."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        return folder
    if not Path("/sys/kernel").is_dir():
        pytest.skip("running as root without a sysfs to stand for a read-only folder")
    return Path("/sys/kernel")


@pytest.mark.parametrize("below", [False, True])
def test_read_only_cache_dir_is_one_clear_line(tmp_path, below):
    folder = _unwritable(tmp_path)
    cache_dir = folder / "cache" if below else folder
    with pytest.raises(UserError) as exc:
        _cached(_samples(make_cub(tmp_path)), cache_dir)
    message = str(exc.value)
    assert "\n" not in message and f"cannot write the cache in {cache_dir}" in message
    assert "make it writable or pass another --cache-dir" in message


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_killed_builds_are_removed_on_the_next_start(tmp_path):
    samples = _samples(make_cub(tmp_path))
    folder = tmp_path / "c"
    folder.mkdir()
    stem = f"s-73px-{cache.cache_key(samples, 73)}"
    killed = write(folder / f".{stem}.npy.{_dead_pid()}.tmp", b"half written by a killed build")
    running = write(folder / f".other-73px-{'a' * 20}.npy.{os.getpid()}.tmp", b"a build of this process")
    elsewhere = write(folder / f".more-73px-{'b' * 20}.npy.{_dead_pid()}.tmp", b"locked by another machine")
    unrelated = write(folder / ".notes.tmp", b"not ours")
    with open(elsewhere, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        _cached(samples, folder)
    assert not killed.exists() and running.exists() and elsewhere.exists() and unrelated.exists()
    assert cache.remove_orphans(folder) == [elsewhere]  # once nobody holds it


def test_a_cache_in_a_read_only_folder_is_still_used(tmp_path, monkeypatch):
    samples = _samples(make_cub(tmp_path))
    path = _cached(samples, tmp_path / "c").cache_path
    monkeypatch.setattr(cache, "build", lambda *a, **k: pytest.fail("a valid cache must not be rebuilt"))
    assert _cached(samples, tmp_path / "c").cache_path == path


# --- images -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit", [100, 1000])  # 40x32 = 1280 pixels: over twice the limit (error), over it (warning)
def test_decompression_bomb_names_the_file(tmp_path, monkeypatch, limit):
    path = _samples(make_cub(tmp_path), 1)[0][0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(UserError, match=rf"image {path} is too large to decode safely .*1280 pixels"):
        load_rgb(path)


@pytest.mark.parametrize("cached", [False, True])
def test_corrupt_image_in_a_worker_gives_the_same_single_line(tmp_path, cached):
    samples = _samples(make_cub(tmp_path), 8)
    _corrupt(samples[5][0])
    messages = []
    for workers in (0, 2):
        with pytest.raises(UserError) as exc:
            dataset = ImageList(samples, TEST_TF, cache_dir=tmp_path / "c" if cached else None, cache_workers=workers)
            list(DataLoader(dataset, batch_size=2, num_workers=workers))
        messages.append(str(exc.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"cannot decode image {samples[5][0]}: ") and "\n" not in messages[0]
    assert messages[0].endswith("; replace it with a readable image or remove it")


def test_worker_traceback_text_becomes_the_original_line():
    wrapped = ("Caught UserError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\n    raise UserError(msg)\nerrors.UserError: bad image a.jpg: why; fix\n')
    assert str(UserError(wrapped)) == "bad image a.jpg: why; fix"
    assert str(UserError("Caught you: not a wrapper")) == "Caught you: not a wrapper"


# --- advice that can be followed ---------------------------------------------------------------------

def test_list_based_dataset_says_to_unlist_a_bad_image_and_that_works(tmp_path):
    root = make_sop(tmp_path)
    listing = root / "Stanford_Online_Products" / "Ebay_train.txt"
    bad = root / "Stanford_Online_Products" / "bicycle_final" / "1_0.JPG"
    _corrupt(bad)
    with pytest.raises(UserError) as exc:
        StanfordOnlineProducts(root, "train")[0]
    message = str(exc.value)
    assert f"delete its line from {listing}" in message and "remove it" not in message
    listing.write_text("".join(line for line in listing.read_text().splitlines(True) if "1_0.JPG" not in line))
    assert len(StanfordOnlineProducts(root, "train")) == 8


def test_benchmark_image_advice_does_not_say_remove(tmp_path):
    root = make_cub(tmp_path)
    bad = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    _corrupt(bad)
    with pytest.raises(UserError, match="replace it with the original from the dataset's archive$"):
        CUB200(root, "train")[0]


REFUSED = "http://127.0.0.1:9/CUB_200_2011.tgz"  # port 9 (discard) refuses connections


@pytest.mark.parametrize("download_on", [True, False])
def test_missing_benchmark_advice_fits_the_download_flag(tmp_path, monkeypatch, download_on):
    monkeypatch.setattr(CUB200, "remotes", (Remote("CUB_200_2011.tgz", (REFUSED,), "0" * 32,
                                                   "CUB_200_2011/images"),))
    with pytest.raises(UserError) as exc:
        CUB200(tmp_path, "train", download=download_on)
    message = str(exc.value)
    assert ("--no-download" in message) is not download_on
    assert f"fetch {REFUSED} (md5 " in message
    assert ".part" not in message and not (tmp_path / "CUB_200_2011.tgz.part").exists()


def test_incomplete_tree_with_its_archive_says_extract_again_and_that_works(tmp_path):
    src = make_sop(tmp_path / "src")
    (tmp_path / "data").mkdir()
    archive = zip_tree(src, tmp_path / "data" / "Stanford_Online_Products.zip", "Stanford_Online_Products")
    root = tmp_path / "data"
    extract_archive(archive, root)
    (root / "Stanford_Online_Products" / "Ebay_train.txt").unlink()
    with pytest.raises(UserError) as exc:
        StanfordOnlineProducts(root, "train", download=True)
    message = str(exc.value)
    assert f"extract {archive} into {root} again" in message and "--no-download" not in message
    extract_archive(archive, root)
    assert len(StanfordOnlineProducts(root, "train", download=True)) == 9


def test_failed_download_names_a_partial_file_only_when_there_is_one(tmp_path):
    with pytest.raises(UserError) as exc:
        download("http://127.0.0.1:9/x.tgz", tmp_path / "x.tgz", timeout=2)
    assert "nothing was saved" in str(exc.value) and ".part" not in str(exc.value)
    assert not (tmp_path / "x.tgz.part").exists()
    (tmp_path / "x.tgz.part").write_bytes(b"first half")
    with pytest.raises(UserError, match=r"partial file .*x\.tgz\.part is kept and the next run resumes it"):
        download("http://127.0.0.1:9/x.tgz", tmp_path / "x.tgz", timeout=2)
    assert (tmp_path / "x.tgz.part").read_bytes() == b"first half"


def test_damaged_cache_in_a_read_only_folder_is_one_clear_line(tmp_path, monkeypatch, capsys):
    samples = _samples(make_cub(tmp_path))
    path = _cached(samples, tmp_path / "c").cache_path
    _zero_pixels(path)

    def read_only(folder, stem):  # what a read-only folder answers; root ignores modes, so it is simulated
        raise UserError(f"cannot write the cache in {folder} (Read-only file system); make it writable")

    monkeypatch.setattr(cache, "_locked_temporary", read_only)
    with pytest.raises(UserError, match="cannot write the cache in"):
        _cached(samples, tmp_path / "c")
    assert f"[Cache] {path} is damaged" in capsys.readouterr().err and path.exists()


def test_run_py_passes_workers_to_the_cache_build(tmp_path, build_workers):
    import run
    args = run.parse_args(["--data", str(make_cub(tmp_path / "data")), "--cache-dir", str(tmp_path / "c"),
                           "--workers", "1", "--mode", "eval", "--image-size", "64", "--no-pretrained"])
    run.build_datasets(args)
    assert build_workers == [1]


@pytest.mark.parametrize("name", ["cub200", "cars196", "sop", "inshop", "folder"])
def test_every_dataset_takes_the_cache_worker_count(name):
    import inspect
    from dataset import DATASETS
    assert "cache_workers" in inspect.signature(DATASETS[name]).parameters


@pytest.mark.parametrize("backbone, size", [("bninception", None), ("resnet18", 64)])
def test_cached_steps_equal_the_pil_steps(backbone, size):
    """The cached path crops the array before PIL: for the same seeds, the train (random resized crop,
    flip) and test (center crop) outputs equal torchvision's steps on a PIL image of the whole array."""
    from dataset.cached_transform import CachedTransform
    from dataset.transforms import build_transforms
    side = 256 if size is None else 73
    array = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    for transform in build_transforms(backbone, size):
        steps = transform.transforms[1:]
        for seed in range(40):
            torch.manual_seed(seed)
            expected = T.Compose(steps)(Image.fromarray(array))
            torch.manual_seed(seed)
            assert torch.equal(CachedTransform(steps)(array), expected)


# --- issue 22: the user's archive, folders named like archives, manual files that are no archive, limits ----

def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cub_archive(tmp_path: Path) -> Path:
    """A generated CUB_200_2011.tgz (6 classes of 4 images) in ``tmp_path/srv``."""
    (tmp_path / "srv").mkdir()
    return tar_tree(make_cub(tmp_path / "src"), tmp_path / "srv" / "CUB_200_2011.tgz", "CUB_200_2011")


def test_a_users_archive_failing_its_md5_is_kept_aside_and_the_published_one_fetched(tmp_path, monkeypatch):
    archive = _cub_archive(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "CUB_200_2011.tgz").write_bytes(b"the user's own file")
    (data / "CUB_200_2011.tgz.bad").write_bytes(b"set aside by an earlier run")
    with serve(archive.parent) as url:
        monkeypatch.setattr(CUB200, "remotes", (Remote("CUB_200_2011.tgz", (url + "CUB_200_2011.tgz",),
                                                       _md5(archive), "CUB_200_2011/images"),))
        assert len(CUB200(data, "train", download=True)) == 12
    assert (data / "CUB_200_2011.tgz").read_bytes() == archive.read_bytes()
    assert (data / "CUB_200_2011.tgz.bad").read_bytes() == b"set aside by an earlier run"
    assert (data / "CUB_200_2011.tgz.bad.2").read_bytes() == b"the user's own file"


def test_a_placed_archive_that_is_not_the_published_one_is_extracted_with_a_warning(tmp_path, capsys):
    archive = _cub_archive(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data / "CUB_200_2011.tgz")
    assert len(CUB200(data, "train")) == 12  # downloads off: the real remote's md5 differs from the generated one
    assert (f"[Warning] {data / 'CUB_200_2011.tgz'} has md5 {_md5(archive)}, not the published "
            "97eceeb196236b17998738112f37df78: it is not the original archive") in capsys.readouterr().out


def test_an_archive_over_twice_its_known_content_is_refused_unextracted(tmp_path, monkeypatch):
    monkeypatch.setitem(benchmark.CONTENT_BYTES, "CUB_200_2011.tgz", 1000)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(_cub_archive(tmp_path), data / "CUB_200_2011.tgz")
    with pytest.raises(UserError) as exc:
        CUB200(data, "train")
    message = str(exc.value)
    assert "declares" in message and "over the limit of 2 kB (2 times the 1 kB it is known to hold)" in message
    assert not (data / "CUB_200_2011").exists()


def test_every_benchmark_archive_has_a_known_content_size():
    archives = [Path(r.path).name for cls in (CUB200, Cars196, StanfordOnlineProducts, InShop)
                for r in cls.remotes if r.extract_to is not None]
    assert sorted(archives) == sorted(benchmark.CONTENT_BYTES)


@pytest.mark.parametrize("dataset, archive, unpack_into", [(CUB200, "CUB_200_2011.tgz", "."),
                                                            (InShop, "Inshop/img.zip", "Inshop")])
@pytest.mark.parametrize("download_on", [True, False])
def test_a_folder_named_like_an_archive_is_one_line(tmp_path, monkeypatch, dataset, archive, unpack_into,
                                                   download_on):
    if dataset is CUB200:
        monkeypatch.setattr(CUB200, "remotes", (Remote("CUB_200_2011.tgz", (REFUSED,), "0" * 32,
                                                       "CUB_200_2011/images"),))
    (tmp_path / archive / "extracted").mkdir(parents=True)
    with pytest.raises(UserError) as exc:
        dataset(tmp_path, "query" if dataset is InShop else "train", download=download_on)
    assert str(exc.value) == (f"{tmp_path / archive} is a folder, where the file {Path(archive).name} belongs; "
                              f"rename or move it (if it holds the extracted files, move them into "
                              f"{tmp_path / unpack_into}) and run again")


@pytest.mark.parametrize("content, what", [
    (b"<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses.</body></html>", "an HTML page"),
    (b"PK\x03\x04 the first bytes of a zip, and nothing more", "or it is truncated"),
])
def test_inshop_img_zip_that_is_no_zip_file_is_one_line_naming_its_source(tmp_path, capsys, content, what):
    import run
    from small_run import SMALL
    (tmp_path / "Inshop").mkdir()
    (tmp_path / "Inshop" / "img.zip").write_bytes(content)
    code = run.cli(["--mode", "eval", "--data", str(tmp_path)] + SMALL, "inshop")
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {tmp_path / 'Inshop' / 'img.zip'} is not a zip file") and what in err
    archive = tmp_path / "Inshop" / "img.zip"
    assert err.endswith("; In-Shop's img.zip comes from https://drive.google.com/drive/folders/"
                        f"0B7EVK8r0v71pYkd5TzBiclMzR00: download it there and put it at {archive}")


# --- issue 22 item 16: malformed split files ------------------------------------------------------------

def _replace_line(path: Path, number: int, line: bytes) -> None:
    lines = path.read_bytes().splitlines()
    lines[number - 1] = line
    path.write_bytes(b"\n".join(lines) + b"\n")


ITEM_ID = "an item id id_<digits> up to 9223372036854775807"
IMAGE = b"img/WOMEN/Dresses/id_00000002/01_1_front.jpg"


@pytest.mark.parametrize("line, expected, found", [
    (IMAGE + b" id_abc train", ITEM_ID, "'id_abc'"),
    (IMAGE + b" 00000002 train", ITEM_ID, "'00000002'"),
    (IMAGE + b" id_-2 train", ITEM_ID, "'id_-2'"),
    (IMAGE + b" id_18446744073709551616 train", ITEM_ID, "'id_18446744073709551616'"),  # 2**64
    (IMAGE + b" id_00000002 validation", "an evaluation status train, query, gallery", "'validation'"),
])
def test_malformed_inshop_partition_line_is_named(tmp_path, line, expected, found):
    make_inshop(tmp_path)
    listing = tmp_path / "Inshop" / "list_eval_partition.txt"
    _replace_line(listing, 8, line)
    for split in ("train", "gallery"):  # whichever split is read, the whole file is checked
        with pytest.raises(UserError) as exc:
            InShop(tmp_path, split)
        assert str(exc.value) == (f"{listing}, line 8: expected {expected}, found {found}; "
                                  "restore the file from the dataset's original files")


def test_non_utf8_byte_in_a_split_file_is_named(tmp_path):
    make_inshop(tmp_path)
    listing = tmp_path / "Inshop" / "list_eval_partition.txt"
    _replace_line(listing, 4, b"img/WOMEN/Dresses/\xff/00_1_front.jpg id_00000001 train")
    with pytest.raises(UserError) as exc:
        InShop(tmp_path, "train")
    assert str(exc.value) == (f"{listing}, line 4: expected UTF-8 text, found byte 0xff at column 19; "
                              "restore the file from the dataset's original files")


@pytest.mark.parametrize("class_id", ["x1", "0", "-3", "1.0", str(2 ** 63 + 1)])
def test_malformed_sop_class_id_is_named(tmp_path, class_id):
    make_sop(tmp_path)
    listing = tmp_path / "Stanford_Online_Products" / "Ebay_train.txt"
    _replace_line(listing, 3, f"2 {class_id} 1 bicycle_final/1_1.JPG".encode())
    with pytest.raises(UserError) as exc:
        StanfordOnlineProducts(tmp_path, "train")
    assert str(exc.value) == (f"{listing}, line 3: expected a class id of 1 or more, found {class_id!r}; "
                              "restore the file from the dataset's original files")
