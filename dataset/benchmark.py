"""A benchmark on disk: where its files live, how to fetch them, and how to read its splits."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from errors import UserError
from dataset.download import download, extract_archive
from dataset.image_list import ImageList, check_files_exist

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Remote:
    """One file of a benchmark: ``path`` relative to the data root, tried from each of ``urls`` in turn.

    ``provides`` (relative to the data root) exists once the file is in place
    and, for an archive, extracted into ``extract_to``; None keeps the file as
    it is. No ``urls`` means the user must fetch the file by hand.
    """

    path: str
    urls: tuple[str, ...]
    md5: str | None
    provides: str
    extract_to: str | None = "."


class Benchmark(ImageList):
    """Base class: ``root`` is the --data folder; subclasses say what to read and fetch."""

    folder = ""
    required: tuple[str, ...] = ()  # files under root/folder whose presence means the tree is complete
    remotes: tuple[Remote, ...] = ()
    splits: tuple[str, ...] = ("train", "test")

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 download: bool = False, cache_dir: str | Path | None = None):
        if split not in self.splits:
            raise UserError(f"{type(self).__name__} has no split {split!r}; choose one of {', '.join(self.splits)}")
        self.root = Path(root)
        self.base = self.root / self.folder
        self.split = split
        if download and not self.is_complete():
            self.fetch()
        self.prepare_local()
        if not self.is_complete():
            missing = next(name for name in self.required if not (self.base / name).exists())
            raise UserError(f"{Path(self.folder) / missing} not found under {self.root}; {self.how_to_get()}")
        samples = self.read_split(split)
        if not samples:
            raise UserError(f"the {split} split of {type(self).__name__} under {self.base} is empty")
        check_files_exist(self.base, samples, self.how_to_get())
        super().__init__(samples, transform, cache_dir, cache_name=f"{type(self).__name__}-{split}")

    def is_complete(self) -> bool:
        return all((self.base / name).exists() for name in self.required)

    def _pending(self) -> list[Remote]:
        return [r for r in self.remotes if not (self.root / r.provides).exists()]

    def prepare_local(self) -> None:
        """Extract archives the user already put in place; needs no network."""
        for remote in self._pending():
            archive = self.root / remote.path
            if remote.extract_to is not None and archive.is_file():
                extract_archive(archive, self.root / remote.extract_to)

    def how_to_get(self) -> str:
        """One sentence on how to obtain the data."""
        return "run with download enabled (the default of run.py) to fetch it"

    def fetch(self) -> None:
        """Download, verify and extract every missing file."""
        for remote in self._pending():
            path = self.root / remote.path
            if not path.is_file() or remote.urls:
                path = self._download_any(remote)
            if remote.extract_to is not None:
                extract_archive(path, self.root / remote.extract_to)

    def _download_any(self, remote: Remote) -> Path:
        errors = []
        for url in remote.urls:
            try:
                return download(url, self.root / remote.path, md5=remote.md5)
            except UserError as exc:
                errors.append(str(exc))
        tried = f"tried: {' | '.join(errors)}. " if errors else ""
        raise UserError(f"{remote.path} is missing under {self.root}; {tried}{self.how_to_get()}")

    def read_split(self, split: str) -> list[tuple[str, int]]:
        raise NotImplementedError


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)


def folder_samples(class_dirs: Sequence[Path], first_label: int) -> list[tuple[str, int]]:
    """(path, label) of every image file, classes labelled from ``first_label`` in the given order."""
    samples = []
    for offset, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        samples += [(str(p), first_label + offset) for p in files]
    return samples


def read_rows(path: Path, skip: int, columns: int) -> list[list[str]]:
    """Whitespace-separated rows of a text index after ``skip`` header lines, each with ``columns`` fields."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if number <= skip or not line.strip():
                continue
            fields = line.split()
            if len(fields) != columns:
                raise UserError(f"{path}, line {number}: expected {columns} fields, found {len(fields)}: {line.strip()!r}")
            rows.append(fields)
    return rows
