"""Miniature benchmark trees in the real layouts, generated for tests."""
import io
import random
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def jpeg_bytes(seed: int, size=(40, 32)) -> bytes:
    """A small JPEG whose colour depends on ``seed`` (so classes differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, 3)
    pixels = np.clip(base + rng.integers(-30, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_cub(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """``root/CUB_200_2011/images/<NNN.Name>/*.jpg``."""
    for c in range(1, classes + 1):
        for i in range(per_class):
            write(root / "CUB_200_2011" / "images" / f"{c:03d}.Bird_{c}" / f"Bird_{c}_{i:04d}.jpg",
                  jpeg_bytes(c * 100 + i))
    return root


def make_cars(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """``root/Cars196/car_ims/*.jpg`` and ``cars_annos.mat`` with class ids 1..98 train and 99.. test."""
    base = root / "Cars196"
    ids = list(range(1, classes // 2 + 1)) + list(range(99, 99 + classes - classes // 2))
    records = []
    n = 0
    for cls in ids:
        for _ in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write(base / rel, jpeg_bytes(cls * 100 + n))
            records.append((rel, 1, 2, 30, 20, cls, n % 2))
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    annotations = np.array([records], dtype=dtype)
    class_names = np.array([[f"Car {i}" for i in range(1, 197)]], dtype=object)
    scipy.io.savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


def make_sop(root: Path, classes: int = 6, per_class: int = 3) -> Path:
    base = root / "Stanford_Online_Products"
    lines = {"train": ["image_id class_id super_class_id path"], "test": ["image_id class_id super_class_id path"]}
    n = 0
    for cls in range(1, classes + 1):
        split = "train" if cls <= classes // 2 else "test"
        for i in range(per_class):
            n += 1
            rel = f"bicycle_final/{cls}_{i}.JPG"
            write(base / rel, jpeg_bytes(cls * 100 + i))
            lines[split].append(f"{n} {cls} 1 {rel}")
    for split, rows in lines.items():
        (base / f"Ebay_{split}.txt").write_text("\n".join(rows) + "\n")
    return root


def make_inshop(root: Path, items: int = 6, per_item: int = 4, order: list[int] | None = None) -> Path:
    """``root/Inshop/list_eval_partition.txt`` and ``img/``; items listed in ``order`` (default 1..items)."""
    base = root / "Inshop"
    rows = []
    for item in order or range(1, items + 1):
        for i in range(per_item):
            rel = f"img/WOMEN/Dresses/id_{item:08d}/{i:02d}_1_front.jpg"
            write(base / rel, jpeg_bytes(item * 100 + i))
            status = "train" if item <= items // 2 else ("query" if i % 2 == 0 else "gallery")
            rows.append(f"{rel} id_{item:08d} {status}")
    (base / "list_eval_partition.txt").write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n"
                                                  + "\n".join(rows) + "\n")
    return root


def make_folder(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    for c in range(classes):
        for i in range(per_class):
            write(root / f"class_{c}" / f"{i}.jpg", jpeg_bytes(c * 100 + i))
    return root


def tar_tree(src: Path, archive: Path, arcroot: str) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(src / arcroot, arcname=arcroot)
    return archive


def zip_tree(src: Path, archive: Path, arcroot: str) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((src / arcroot).rglob("*")):
            zf.write(path, path.relative_to(src).as_posix())
    return archive


def shuffled(seq, seed=0):
    out = list(seq)
    random.Random(seed).shuffle(out)
    return out
