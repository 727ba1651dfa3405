"""A user's own image folder: one sub-folder per class."""
from pathlib import Path
from typing import Callable

from dataset.benchmark import class_folders, folder_samples, split_cache_name
from dataset.image_list import ImageList
from errors import UserError


class Folder(ImageList):
    """Classes sorted by name: the first ``train_classes`` (default: half) train, the rest test.

    Hidden sub-folders and sub-folders without images are not classes (see ``class_folders``).
    """

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 download: bool = False, train_classes: int | None = None, cache_dir: str | Path | None = None,
                 cache_workers: int | None = None):
        root = Path(root)
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "not found"
            raise UserError(f"image folder {root} {what}; pass --data DIR with one sub-folder per class")
        classes = class_folders(root)
        cut = len(classes) // 2 if train_classes is None else train_classes
        if not 0 < cut < len(classes):
            raise UserError(f"{root} has {len(classes)} class folders with images; --train-classes must leave at "
                            f"least one for each split, got {cut}")
        if split not in ("train", "test"):
            raise UserError(f"Folder has no split {split!r}; choose train or test")
        chosen = classes[:cut] if split == "train" else classes[cut:]
        samples = folder_samples(chosen, 0 if split == "train" else cut)
        super().__init__(samples, transform, cache_dir, split_cache_name(f"Folder-{root.name}", root, split),
                         cache_workers)
