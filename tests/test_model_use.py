"""tools.index and tools.search on generated image trees, with the weights of a real (tiny) run (issue 20)."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset.transforms import build_transforms, device_normalization
from errors import UserError
from experiment.guards import sha256_file
from minidata import jpeg_bytes, make_cub, make_folder, write
from model import build_model
from model.checkpoint import load_model_weights, save_atomic
from small_run import BACKBONE, SMALL, run_main
from tools import index, search
from tools.search import Index

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--device", "cpu", "--workers", "0", "--eval-batch", "5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small-backbone run with 16-d embeddings at 32 px: tools must read these flags from it."""
    data = make_cub(tmp_path_factory.mktemp("data"), classes=4, per_class=3)
    save = tmp_path_factory.mktemp("runs") / "run"
    run_main(SMALL + ["--image-size", "32", "--data", str(data), "--save-dir", str(save), "--epochs", "1"])
    return save


def gallery_tree(root: Path, classes: int = 4, per_class: int = 3) -> Path:
    make_folder(root, classes, per_class)
    write(root / ".ipynb_checkpoints" / "0.jpg", jpeg_bytes(999))  # hidden: never indexed
    write(root / "class_0" / "._0.jpg", jpeg_bytes(998))
    return root


def build(run_dir: Path, images: Path, out: Path, *extra: str) -> dict:
    return index.build(index.parse_args(["--load", str(run_dir / "best.pth"), "--images", str(images),
                                         "--out", str(out)] + FAST + list(extra)))


def reference_embeddings(run_dir: Path, paths: list[Path]) -> torch.Tensor:
    """The evaluation pipeline by hand: the test transform to uint8, normalised on the device, the model in eval."""
    model = build_model(BACKBONE, 16, False, pretrained=False)
    load_model_weights(model, run_dir / "best.pth")
    test = build_transforms(BACKBONE, 32, uint8=True)[1]
    batch = torch.stack([test(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model.eval()(device_normalization(BACKBONE)(batch))


def brute(query: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    dist = ((query.astype(np.float64)[:, None] - gallery.astype(np.float64)[None]) ** 2).sum(2)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.sqrt(np.take_along_axis(dist, order, axis=1))


def files_state(folder: Path) -> dict:
    """Contents and modification times of the index files (not the lock, not a staging folder)."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.is_file() and p.name != ".lock"}


def test_index_files_hold_what_the_issue_lists(run_dir, tmp_path, capsys):
    images = gallery_tree(tmp_path / "gallery")
    counts = build(run_dir, images, tmp_path / "idx")
    out = capsys.readouterr().out
    assert f"[Flags] read from {run_dir / 'config.json'}: --backbone {BACKBONE} --embedding-size 16 --image-size 32" \
        in out.splitlines()
    assert counts == {"items": 12, "added": 12, "kept": 0, "dropped": 0, "unreadable": 0}
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["weights"] == {"file": str((run_dir / "best.pth").resolve()), "sha256": sha256_file(run_dir / "best.pth")}
    assert meta["model"] == {"backbone": BACKBONE, "embedding_size": 16, "l2norm": False, "image_size": 32}
    assert meta["transform"]["resize"] == [36, 36] and meta["transform"]["center_crop"] == 32
    assert (meta["count"], meta["dim"], meta["source"]) == (12, 16, str(images.resolve()))
    assert len(meta["version"]["commit"]) == 40
    records = [json.loads(line) for line in (tmp_path / "idx" / "items.jsonl").read_text().splitlines()]
    assert [r["path"] for r in records] == [f"class_{c}/{i}.jpg" for c in range(4) for i in range(3)]
    assert [r["label"] for r in records] == [f"class_{c}" for c in range(4) for _ in range(3)]
    stat = (images / "class_1" / "2.jpg").stat()
    assert (records[5]["size"], records[5]["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)
    emb = np.load(tmp_path / "idx" / "embeddings.npy", mmap_mode="r")
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32 and emb.shape == (12, 16)
    expected = reference_embeddings(run_dir, [images / r["path"] for r in records])
    torch.testing.assert_close(torch.from_numpy(np.array(emb)), expected, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [".lock", "embeddings.npy", "index.json",
                                                                     "items.jsonl"]


def test_search_results_equal_a_float64_brute_force(run_dir, tmp_path, capsys):
    images = gallery_tree(tmp_path / "gallery", classes=5, per_class=4)
    build(run_dir, images, tmp_path / "idx")
    queries = tmp_path / "queries"
    for c in range(3):
        write(queries / f"class_{c}" / "new.jpg", jpeg_bytes(c * 100 + 50))
    shutil.copy(images / "class_4" / "1.jpg", queries / "class_1" / "copy.jpg")
    rows = search.main(search.get_args_parser().parse_args(
        ["--index", str(tmp_path / "idx"), "--query", str(queries), "--k", "6", "--out", str(tmp_path / "r.csv")]
        + FAST))
    with open(tmp_path / "r.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["query", "rank", "path", "distance", "label"] and len(table) == 4 * 6
    assert [dict(r, rank=int(r["rank"])) for r in table] == [{k: v for k, v in r.items()} for r in rows]
    opened = Index.open(tmp_path / "idx", device="cpu")
    query_paths = sorted(queries.rglob("*.jpg"))
    order, dist = brute(opened.embed(query_paths).numpy(), np.load(tmp_path / "idx" / "embeddings.npy"), 6)
    for q, path in enumerate(query_paths):
        got = [r for r in table if r["query"] == str(path)]
        assert [int(r["rank"]) for r in got] == list(range(1, 7))
        assert [r["path"] for r in got] == [str(opened.paths[i]) for i in order[q]]
        assert [r["label"] for r in got] == [opened.labels[i] for i in order[q]]
        np.testing.assert_allclose([float(r["distance"]) for r in got], dist[q], rtol=1e-6)
    copy_row = next(r for r in table if r["query"].endswith("copy.jpg"))
    assert copy_row["path"] == str(images / "class_4" / "1.jpg") and float(copy_row["distance"]) < 1e-4


def test_search_options_and_the_python_api(run_dir, tmp_path, capsys):
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "idx")
    one = images / "class_2" / "0.jpg"
    args = ["--index", str(tmp_path / "idx"), "--k", "3"] + FAST
    rows = search.main(search.get_args_parser().parse_args(args + ["--query", str(one)]))
    assert rows[0]["path"] == str(one) and float(rows[0]["distance"]) < 1e-4  # CPU kernels vary with the batch
    assert f"\n{one}\n" in capsys.readouterr().out  # no --out: a table per query
    rows = search.main(search.get_args_parser().parse_args(args + ["--query", str(one), "--exclude-self"]))
    assert str(one) not in [r["path"] for r in rows] and len(rows) == 3
    limit = (float(rows[1]["distance"]) + float(rows[2]["distance"])) / 2
    capped = search.main(search.get_args_parser().parse_args(
        args + ["--query", str(one), "--exclude-self", "--max-distance", str(limit)]))
    assert capped == rows[:2]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# queries\n{one}\n\ngallery/class_0/1.jpg\n")
    rows = search.main(search.get_args_parser().parse_args(args + ["--query", str(listing)]))
    assert [r["query"] for r in rows] == [str(one)] * 3 + [str(tmp_path / "gallery/class_0/1.jpg")] * 3
    api = Index.open(tmp_path / "idx", device="cpu")
    indices, distances = api.search(api.embed([one, images / "class_0" / "1.jpg"]), 3)
    assert indices.dtype == torch.int64 and distances.dtype == torch.float32 and indices.shape == (2, 3)
    assert [str(api.paths[i]) for i in indices[1]] == [r["path"] for r in rows[3:]]
    with pytest.raises(UserError, match="cannot decode image"):
        api.embed([listing])


def test_grid_borders_say_whether_the_label_matches(run_dir, tmp_path):
    from tools.retrievals import BORDER, GREEN, RED, TILE, WHITE
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "idx")
    queries = tmp_path / "queries"
    queries.mkdir()
    shutil.copy(images / "class_3" / "2.jpg", queries / "a.jpg")  # a folder of images: no label
    labelled = tmp_path / "labelled"
    shutil.copytree(images / "class_3", labelled / "class_3")
    args = ["--index", str(tmp_path / "idx"), "--k", "12"] + FAST
    for query, out in ((queries, "plain.png"), (labelled, "labelled.png")):
        rows = search.main(search.get_args_parser().parse_args(args + ["--query", str(query), "--grid",
                                                                        str(tmp_path / out)]))
        grid = np.asarray(Image.open(tmp_path / out))
        n_queries = len({r["query"] for r in rows})
        assert grid.shape == (TILE * n_queries, TILE * 13 + BORDER, 3)
        for r in rows:
            row = sorted({x["query"] for x in rows}).index(r["query"])
            pixel = tuple(grid[row * TILE + 1, TILE * int(r["rank"]) + BORDER + 1])
            expected = WHITE if out == "plain.png" else (GREEN if r["label"] == "class_3" else RED)
            assert pixel == expected


def test_incremental_update_equals_a_fresh_build(run_dir, tmp_path, monkeypatch, capsys):
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "idx")
    (images / "class_0" / "1.jpg").unlink()
    (images / "class_3").rename(images / "class_9")  # moved: dropped and added again
    write(images / "class_5" / "0.jpg", jpeg_bytes(555))
    write(images / "class_1" / "0.jpg", jpeg_bytes(5001))  # changed in place
    embedded = []
    real = index.Embedder.embed
    monkeypatch.setattr(index.Embedder, "embed", lambda self, paths, desc: embedded.extend(paths) or
                        real(self, paths, desc))
    counts = build(run_dir, images, tmp_path / "idx")
    assert counts == {"items": 12, "added": 5, "kept": 7, "dropped": 5, "unreadable": 0}
    assert "12 items (5 added, 7 kept, 5 dropped, 0 unreadable skipped)" in capsys.readouterr().out
    assert sorted(p.relative_to(images).as_posix() for p in embedded) == [
        "class_1/0.jpg", "class_5/0.jpg", "class_9/0.jpg", "class_9/1.jpg", "class_9/2.jpg"]
    build(run_dir, images, tmp_path / "fresh")
    for name in ("items.jsonl", "index.json"):
        assert (tmp_path / "idx" / name).read_text() == (tmp_path / "fresh" / name).read_text()
    np.testing.assert_allclose(np.load(tmp_path / "idx" / "embeddings.npy"),
                               np.load(tmp_path / "fresh" / "embeddings.npy"), rtol=1e-5, atol=1e-6)
    assert build(run_dir, images, tmp_path / "idx")["added"] == 0
    assert "is up to date: 12 items" in capsys.readouterr().out


def test_other_weights_or_flags_are_refused_and_change_nothing(run_dir, tmp_path):
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "idx")
    before = files_state(tmp_path / "idx")
    other = tmp_path / "other.pth"
    save_atomic(build_model(BACKBONE, 16, pretrained=False).state_dict(), other)
    argv = ["--images", str(images), "--out", str(tmp_path / "idx")] + FAST
    with pytest.raises(UserError, match=f"weights sha256 {sha256_file(run_dir / 'best.pth')} there, "
                                        f"{sha256_file(other)} now.*--rebuild"):
        index.build(index.parse_args(["--load", str(other), "--backbone", BACKBONE, "--embedding-size", "16",
                                      "--image-size", "32"] + argv))
    with pytest.raises(UserError, match="image_size': 32.*image_size': 48"):
        build(run_dir, images, tmp_path / "idx", "--image-size", "48")
    assert files_state(tmp_path / "idx") == before
    counts = index.build(index.parse_args(["--load", str(other), "--backbone", BACKBONE, "--embedding-size",
                                           "16", "--image-size", "32", "--rebuild"] + argv))
    assert counts["added"] == 12 and counts["dropped"] == 12
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["weights"]["sha256"] == sha256_file(other)


def test_unreadable_images_are_skipped_counted_and_retried(run_dir, tmp_path, capsys):
    images = gallery_tree(tmp_path / "gallery")
    (images / "class_1" / "bad.jpg").write_bytes(b"not a jpeg")
    (images / "class_2" / "empty.png").write_bytes(b"")
    code = index.cli(["--load", str(run_dir / "best.pth"), "--images", str(images), "--out", str(tmp_path / "idx")]
                     + FAST)
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.out + captured.err
    skipped = [line for line in captured.out.splitlines() if line.startswith("[Skipped]")]
    assert len(skipped) == 2 and "class_1/bad.jpg" in skipped[0] and "class_2/empty.png" in skipped[1]
    assert "12 items (12 added, 0 kept, 0 dropped, 2 unreadable skipped)" in captured.out
    assert "img/s" in captured.err  # the progress bar counts images per second
    records = (tmp_path / "idx" / "items.jsonl").read_text()
    assert "bad.jpg" not in records and "empty.png" not in records
    assert np.load(tmp_path / "idx" / "embeddings.npy").shape == (12, 16)
    listing = tmp_path / "list.txt"
    listing.write_text("gallery/class_0/0.jpg\ngallery/missing.jpg\n")
    counts = index.build(index.parse_args(["--load", str(run_dir / "best.pth"), "--images", str(listing), "--out",
                                           str(tmp_path / "listed")] + FAST))
    assert counts["items"] == 1 and counts["unreadable"] == 1
    assert "[Skipped] image " in capsys.readouterr().out


def test_a_killed_build_leaves_the_previous_index_intact(run_dir, tmp_path):
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "idx")
    before = files_state(tmp_path / "idx")
    for i in range(400):  # seconds of embedding one by one, even for the small backbone
        write(images / "class_7" / f"{i}.jpg", jpeg_bytes(7000 + i))
    proc = subprocess.Popen([sys.executable, "-m", "tools.index", "--load", str(run_dir / "best.pth"), "--images",
                             str(images), "--out", str(tmp_path / "idx"), "--device", "cpu", "--workers", "0",
                             "--eval-batch", "1"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    staged = tmp_path / "idx" / ".staged" / "embeddings.npy"
    deadline = time.monotonic() + 300
    while not staged.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert staged.exists(), proc.stderr.read().decode()
    time.sleep(0.2)
    assert proc.poll() is None, "the build ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert files_state(tmp_path / "idx") == before
    assert len(Index.open(tmp_path / "idx")) == 12
    assert build(run_dir, images, tmp_path / "idx")["added"] == 400
    assert not (tmp_path / "idx" / ".staged").exists()


def test_a_build_killed_while_moving_its_files_is_completed(run_dir, tmp_path, monkeypatch):
    from tools import index_dir
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "idx")
    write(images / "class_6" / "0.jpg", jpeg_bytes(606))
    moves = []
    real = os.replace

    def dying_replace(src, dst):
        if Path(src).parent.name == index_dir.COMMIT and moves:
            raise KeyboardInterrupt  # killed after the first file was moved
        moves.append(dst)
        return real(src, dst)

    monkeypatch.setattr(index_dir.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        build(run_dir, images, tmp_path / "idx")
    monkeypatch.setattr(index_dir.os, "replace", real)
    assert (tmp_path / "idx" / index_dir.COMMIT).is_dir()
    opened = Index.open(tmp_path / "idx")  # completes the commit: the three files belong together
    assert len(opened) == 13 == len(opened.embeddings) and opened.records[-1].path == "class_6/0.jpg"
    assert not (tmp_path / "idx" / index_dir.COMMIT).exists()


def test_amp_keeps_float32_embeddings_and_is_part_of_the_settings(run_dir, tmp_path):
    images = gallery_tree(tmp_path / "gallery")
    build(run_dir, images, tmp_path / "amp", "--amp")
    build(run_dir, images, tmp_path / "fp32")
    amp, fp32 = (np.load(tmp_path / name / "embeddings.npy") for name in ("amp", "fp32"))
    assert amp.dtype == np.float32 and not np.array_equal(amp, fp32)
    assert np.abs(amp - fp32).max() < 0.1 * np.abs(fp32).max()
    with pytest.raises(UserError, match="amp: True there, False now"):
        build(run_dir, images, tmp_path / "amp")


def test_export_of_a_run_reads_its_flags_and_gives_the_index_embeddings(run_dir, tmp_path, capsys):
    from tools import export
    images = gallery_tree(tmp_path / "gallery")
    index.build(index.parse_args(["--load", str(run_dir / "checkpoint.pth"), "--images", str(images), "--out",
                                  str(tmp_path / "idx")] + FAST))  # the last epoch's weights, as exported
    assert export.cli(["--load", str(run_dir / "checkpoint.pth"), "--format", "torchscript", "--out",
                       str(tmp_path / "m.pt")]) == 0
    out = capsys.readouterr().out
    assert f"[Flags] read from {run_dir / 'checkpoint.pth'}: --backbone {BACKBONE} --embedding-size 16 --image-size 32" \
        in out and "input (N, 3, 32, 32) uint8 RGB, resized to 36 square (LANCZOS) and centre-cropped to 32" in out
    opened = Index.open(tmp_path / "idx")
    test = build_transforms(BACKBONE, 32, uint8=True)[1]
    crops = torch.stack([test(Image.open(p).convert("RGB")) for p in opened.paths])
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "m.pt"))(crops)
    expected = torch.from_numpy(np.array(opened.embeddings))
    assert ((got - expected).norm(dim=1) <= 1e-4 * expected.norm(dim=1)).all()


def test_bad_inputs_are_one_line_errors(run_dir, tmp_path, capsys):
    images = gallery_tree(tmp_path / "gallery")
    mine = tmp_path / "mine"
    write(mine / "notes.txt", b"my own file")
    cases = [(["--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")], "nowhere not found"),
             (["--images", str(images), "--out", str(mine)], "holds other files but no index"),
             (["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "b")], "holds no images")]
    (tmp_path / "empty").mkdir()
    for argv, message in cases:
        assert index.cli(["--load", str(run_dir / "best.pth")] + argv + FAST) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert (mine / "notes.txt").read_bytes() == b"my own file" and len(list(mine.iterdir())) == 1
    assert search.cli(["--index", str(tmp_path / "nothing"), "--query", str(images)]) == 1
    assert "not found; build it with python -m tools.index" in capsys.readouterr().err


def test_a_manifest_source_indexes_each_image_once_with_its_label(run_dir, tmp_path):
    """A CSV manifest (--dataset csv's format) is a SOURCE: every listed image once, labelled by its row."""
    images = gallery_tree(tmp_path / "gallery")
    outside = tmp_path / "elsewhere" / "x.jpg"
    write(outside, jpeg_bytes(7))
    rows = ["path,label,split", "class_0/0.jpg,a,train", "class_1/0.jpg,b,test", "class_1/1.jpg,b,test",
            f"{outside},c,test", "class_0/0.jpg,a,test"]
    (images / "list.csv").write_text("\n".join(rows) + "\n")
    counts = build(run_dir, images / "list.csv", tmp_path / "idx")
    assert counts["items"] == 4
    records = [json.loads(line) for line in (tmp_path / "idx" / "items.jsonl").read_text().splitlines()]
    assert [(r["path"], r["label"]) for r in records] == [("class_0/0.jpg", "a"), ("class_1/0.jpg", "b"),
                                                          ("class_1/1.jpg", "b"), (outside.as_posix(), "c")]
    expected = reference_embeddings(run_dir, [images / "class_0/0.jpg", images / "class_1/0.jpg",
                                              images / "class_1/1.jpg", outside])
    emb = np.load(tmp_path / "idx" / "embeddings.npy")
    torch.testing.assert_close(torch.from_numpy(emb), expected, rtol=1e-5, atol=1e-6)
