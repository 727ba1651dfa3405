"""A user's own image folder: one sub-folder per class, or explicit split folders of class sub-folders."""
from pathlib import Path
from typing import Callable

from dataset.benchmark import _images, class_folders, folder_samples, split_cache_name
from dataset.image_list import ImageList
from errors import UserError

SPLIT_FOLDERS = ("train", "val", "test", "query", "gallery")


def _holds_classes(folder: Path) -> bool:
    """Whether ``folder`` is a split folder: a folder without images of its own whose sub-folders hold some."""
    return folder.is_dir() and not _images(folder) and any(sub.is_dir() and _images(sub) for sub in folder.iterdir())


def split_folders(root: Path) -> dict[str, Path]:
    """The explicit split folders of ``root`` ({"train": root/train, ...}), or {} for a tree of class folders.

    A tree has explicit splits when ``train/``, ``test/``, ``query/`` or ``gallery/`` holds class sub-folders
    (a class folder of today's layout holds images, so it is never taken for one). Evaluation is ``test/``, or
    ``query/`` searched in ``gallery/``; ``val/``, when present, is the validation split.
    """
    found = {name: root / name for name in SPLIT_FOLDERS if _holds_classes(root / name)}
    if not found.keys() & {"train", "test", "query", "gallery"}:
        return {}
    names = ", ".join(f"{name}/" for name in found)
    if "test" in found and found.keys() & {"query", "gallery"}:
        raise UserError(f"{root} has both test/ and query/ or gallery/ split folders ({names}); evaluation is "
                        "test/ (self-retrieval) or query/ with gallery/: keep one of them")
    if ("query" in found) != ("gallery" in found):
        have, lack = ("query", "gallery") if "query" in found else ("gallery", "query")
        raise UserError(f"{root} has a {have}/ split folder but no {lack}/ with class sub-folders; queries are "
                        f"searched in the gallery: add {lack}/<class>/ or rename {have}/ to test/")
    return found


class Folder(ImageList):
    """Classes sorted by name: the first ``train_classes`` (default: half) train, the rest test.

    Hidden sub-folders and sub-folders without images are not classes (see ``class_folders``).
    With explicit split folders (``split_folders``) the split is theirs, and a class's label is its
    position in the sorted names of every split's classes, so a class in two splits has one label.
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 download: bool = False, train_classes: int | None = None, cache_dir: str | Path | None = None,
                 cache_workers: int | None = None):
        root = Path(root)
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "not found"
            raise UserError(f"image folder {root} {what}; pass --data DIR with one sub-folder per class")
        explicit = split_folders(root)
        if explicit:
            _note_other_folders(root, explicit)
        samples = _split_samples(root, explicit, split, train_classes) if explicit else \
            _class_samples(root, split, train_classes)
        super().__init__(samples, transform, cache_dir, split_cache_name(f"Folder-{root.name}", root, split),
                         cache_workers)

    @classmethod
    def evaluation_splits(cls, root: str | Path) -> tuple[str, ...]:
        explicit = split_folders(Path(root)) if Path(root).is_dir() else {}
        evaluated = ("query", "gallery") if "query" in explicit else ("test",)
        return evaluated + (("val",) if "val" in explicit else ())


def _note_other_folders(root: Path, explicit: dict[str, Path]) -> None:
    """Print one line naming the folders beside the split folders, which are not read."""
    others = sorted(p.name for p in root.iterdir()
                    if p.is_dir() and p.name not in explicit and not p.name.startswith("."))
    if others:
        print(f"[Data] {root}: split folders {', '.join(f'{name}/' for name in explicit)}; skipped "
              f"{len(others)} other folder(s): {', '.join(others)}")


def _class_samples(root: Path, split: str, train_classes: int | None) -> list[tuple[str, int]]:
    """A tree of class folders: the first ``train_classes`` (default: half) by name train, the rest test."""
    classes = class_folders(root)
    cut = len(classes) // 2 if train_classes is None else train_classes
    if len(classes) < 2:
        raise UserError(f"{root} has {len(classes)} class folder(s) with images; --dataset folder needs one "
                        "sub-folder of images per class, at least two (one to train, one to test)")
    if not 0 < cut < len(classes):
        raise UserError(f"{root} has {len(classes)} class folders with images; --train-classes must leave at "
                        f"least one for each split, got {cut}")
    if split not in ("train", "test"):
        raise UserError(f"Folder has no split {split!r}; choose train or test")
    chosen = classes[:cut] if split == "train" else classes[cut:]
    return folder_samples(chosen, 0 if split == "train" else cut)


def _split_samples(root: Path, explicit: dict[str, Path], split: str,
                   train_classes: int | None) -> list[tuple[str, int]]:
    """(path, label) of ``split``'s class folders; labels index the sorted class names of every split."""
    if train_classes is not None:
        raise UserError(f"{root} has split folders ({', '.join(f'{name}/' for name in explicit)}), which are the "
                        f"split; --train-classes {train_classes} only splits a tree of class folders by name: "
                        "drop it, or move classes between the split folders")
    if split not in explicit:
        raise UserError(f"{root} has no {split}/ split folder with class sub-folders (it has "
                        f"{', '.join(f'{name}/' for name in explicit)}); add {root / split}/<class>/ images")
    names = sorted({p.name for folder in explicit.values() for p in _class_dirs(folder)})
    label = {name: i for i, name in enumerate(names)}
    return [sample for class_dir in class_folders(explicit[split])
            for sample in folder_samples([class_dir], label[class_dir.name])]


def _class_dirs(folder: Path) -> list[Path]:
    """The class sub-folders of a split folder, as ``class_folders`` takes them, without its notice."""
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _images(p)]
