"""Images to index or search with: a folder, a folder of class sub-folders, an image, a text file of paths, or a
CSV manifest (``--dataset csv``'s format).

``read_source`` is the one place that turns a SOURCE argument into items.
"""
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from dataset.benchmark import IMAGE_EXTENSIONS
from dataset.decode import load_rgb
from dataset.manifest import read_manifest
from errors import UserError


class Item(NamedTuple):
    """One image of a source: its path relative to the source root, and its class name when the source has one."""

    path: str
    label: str | None


class Source(NamedTuple):
    root: Path  # the folder item paths are relative to
    items: list[Item]  # sorted by path (a text file's in its own order)


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, hidden files and folders (``.git``, ``._x.jpg``) skipped, sorted."""
    return sorted(p.relative_to(folder) for p in folder.rglob("*")
                  if is_image(p) and not _hidden(p.relative_to(folder)) and p.is_file())


def _folder(root: Path) -> list[Item]:
    """A folder holding images itself: every image under it, unlabelled. A folder holding only sub-folders:
    each sub-folder is a class, its name the label of every image under it."""
    images = _images_under(root)
    classes = len(images) and all(len(p.parts) > 1 for p in images)
    return [Item(p.as_posix(), p.parts[0] if classes else None) for p in images]


def _path_list(listing: Path) -> list[Item]:
    """One image path per line (relative ones to the file's folder); blank lines and lines starting with # skipped."""
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the list of images {listing} ({exc}); pass a UTF-8 text file with one image "
                        "path per line") from None
    items = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            path = Path(line)
            if not is_image(path):
                raise UserError(f"{listing}, line {number}: {line!r} is not an image file name (expected one of "
                                f"{', '.join(IMAGE_EXTENSIONS)})")
            items.append(Item(path.as_posix(), None))
    return items


def _manifest(manifest: Path) -> list[Item]:
    """Every image of a checked manifest once (its first row), labelled, with paths relative to the CSV's folder
    where they lie under it."""
    items = {}
    for row in read_manifest(manifest):
        path = Path(row.path)
        relative = path.relative_to(manifest.parent.resolve()) if path.is_relative_to(manifest.parent.resolve()) \
            else path
        items.setdefault(relative.as_posix(), Item(relative.as_posix(), row.label))
    return list(items.values())


def read_source(source: str | Path) -> Source:
    """The items of SOURCE: an image file, a folder (recursive; see ``_folder``), a CSV manifest (every row's image,
    with its label) or a text file of paths."""
    source = Path(source)
    if source.is_dir():
        root, items = source, _folder(source)
    elif source.is_file() and is_image(source):
        root, items = source.parent, [Item(source.name, None)]
    elif source.is_file() and source.suffix.lower() == ".csv":
        root, items = source.parent, _manifest(source)
    elif source.is_file():
        root, items = source.parent, _path_list(source)
    else:
        raise UserError(f"{source} not found; pass an image, a folder of images or a text file of image paths")
    if not items:
        raise UserError(f"{source} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, hidden files skipped)")
    return Source(root, items)


class SourceImages(Dataset):
    """(transformed image, position) per path; an image that cannot be decoded gives ``blank`` and -1 - position,
    so a long build skips it instead of stopping (``unreadable`` then says why)."""

    def __init__(self, paths: Sequence[Path], transform: Callable, blank: torch.Tensor):
        self.paths = list(paths)
        self.transform = transform
        self.blank = blank

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        try:
            return self.transform(load_rgb(self.paths[position])), position
        except UserError:
            return self.blank, -1 - position

    def unreadable(self, position: int) -> str:
        """Why the image at ``position`` cannot be read, in one line."""
        try:
            load_rgb(self.paths[position])
        except UserError as exc:
            return str(exc).split("; ")[0]
        return f"image {self.paths[position]} could not be read"
