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


def write(path: Path, data: bytes | Path) -> Path:
    """Write ``data`` to ``path``, or hard-link the file ``data`` there (much faster for thousands of files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, Path):
        path.hardlink_to(data)
    else:
        path.write_bytes(data)
    return path


def make_cub(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """``root/CUB_200_2011/images/<NNN.Name>/*.jpg``."""
    for c in range(1, classes + 1):
        for i in range(per_class):
            write(root / "CUB_200_2011" / "images" / f"{c:03d}.Bird_{c}" / f"Bird_{c}_{i:04d}.jpg",
                  jpeg_bytes(c * 100 + i))
    return root


CarImage = tuple[int, bool, bytes | Path]  # (class 1-196, in the official test set, content or file to link)
_BBOX = {"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 30, "bbox_y2": 20}


def cars_images(classes: int = 6, per_class: int = 4) -> list[CarImage]:
    """Half the classes numbered from 1 (train), the rest from 99 (test); every other image officially test."""
    ids = list(range(1, classes // 2 + 1)) + list(range(99, 99 + classes - classes // 2))
    numbered = enumerate((cls for cls in ids for _ in range(per_class)), start=1)
    return [(cls, n % 2 == 1, jpeg_bytes(cls * 100 + n)) for n, cls in numbered]


def _struct_array(rows: list[dict]) -> np.ndarray:
    """A 1 x N struct array as savemat writes the devkit's ``annotations``; every row has the same fields."""
    fields = list(rows[0])
    return np.array([[tuple(row[f] for f in fields) for row in rows]], dtype=[(f, "O") for f in fields])


def write_cars_original(root: Path, images: list[CarImage], bbox: bool = True) -> Path:
    """``root/Cars196/car_ims/NNNNNN.jpg`` and ``cars_annos.mat``, in the order of ``images``.

    Without ``bbox`` the bounding-box fields, which no parser reads, are left out (it makes savemat faster).
    """
    base = root / "Cars196"
    rows = []
    for n, (cls, test, data) in enumerate(images, start=1):
        rel = f"car_ims/{n:06d}.jpg"
        write(base / rel, data)
        rows.append({"relative_im_path": rel, **(_BBOX if bbox else {}), "class": cls, "test": int(test)})
    annotations = _struct_array(rows)
    class_names = np.array([[f"Car {i}" for i in range(1, 197)]], dtype=object)
    scipy.io.savemat(base / "cars_annos.mat", {"annotations": annotations, "class_names": class_names})
    return root


def make_cars(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    """``root/Cars196/car_ims/*.jpg`` and ``cars_annos.mat`` with class ids 1..98 train and 99.. test."""
    return write_cars_original(root, cars_images(classes, per_class))


def _official_sets(images: list[CarImage]) -> dict[str, list[tuple[str, int, bytes]]]:
    """(file name, class, content) of the official train and test sets, numbered from 1 as in the devkit."""
    sets = {"train": [], "test": []}
    for cls, test, data in images:
        files = sets["test" if test else "train"]
        files.append((f"{len(files) + 1:05d}.jpg", cls, data))
    return sets


def write_cars_meta(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"class_names": np.array([names], dtype=object)})


def write_cars_devkit(root: Path, images: list[CarImage], folder: str = "stanford_cars", nested: bool = False,
                      test_annos_in_devkit: bool = False, bbox: bool = True) -> Path:
    """The torchvision layout (``nested``: Kaggle's ``cars_train/cars_train/``) under ``root/folder``."""
    base = root / folder
    for split, files in _official_sets(images).items():
        images_dir = base / f"cars_{split}" / (f"cars_{split}" if nested else "")
        for name, _, data in files:
            write(images_dir / name, data)
        annotations = _struct_array([{**(_BBOX if bbox else {}), "class": cls, "fname": name}
                                     for name, cls, _ in files])
        mat = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
        where = base / "devkit" if split == "train" or test_annos_in_devkit else base
        where.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(where / mat, {"annotations": annotations})
    write_cars_meta(base / "devkit" / "cars_meta.mat", [f"Car {i}" for i in range(1, 197)])
    return root


def write_cars_class_folders(root: Path, images: list[CarImage], names: list[str],
                             folder: str = "Cars196") -> Path:
    """``root/folder/{train,test}/<name>/NNNNN.jpg``, ``/`` in a name written as ``-`` like the by-class mirrors."""
    for split, files in _official_sets(images).items():
        for name, cls, data in files:
            write(root / folder / split / names[cls - 1].replace("/", "-") / name, data)
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


def make_split_folders(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """``root/<split>/<class>/<i>.jpg`` for ``layout`` = {split: {class name: images}}; a class's images look
    alike whichever split holds them."""
    for split, classes in layout.items():
        for name, count in classes.items():
            for i in range(count):
                write(root / split / name / f"{split}_{i}.jpg", jpeg_bytes(sum(map(ord, name)) * 100 + i))
    return root


def write_manifest(path: Path, rows: list[tuple], flags: bool | None = None) -> Path:
    """A manifest at ``path`` of (path, label, split[, is_query, is_gallery]) rows; the flag columns are
    written when the rows have them (or ``flags`` says so)."""
    flags = len(rows[0]) == 5 if flags is None else flags
    lines = ["path,label,split" + (",is_query,is_gallery" if flags else "")]
    lines += [",".join(str(int(x) if isinstance(x, bool) else x) for x in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
