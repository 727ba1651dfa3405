"""A benchmark on disk: where its files live, how to fetch them, and how to read its splits."""
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from errors import UserError
from dataset.download import download, extract_archive, file_md5, refuse_folder
from dataset.image_list import ImageList, check_files_exist

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
INT64_MAX = 2 ** 63 - 1  # labels become int64 tensors
RESTORE_LISTING = "restore the file from the dataset's original files"
_DIGITS = re.compile(r"[0-9]+")

# What each benchmark archive holds, in bytes: the total size its members declare, rounded up (the images are
# JPEGs, which the archives do not compress, so each is a little over the archive's own size). An archive under
# one of these names that declares more than download.KNOWN_EXPANSION times as much is refused unextracted.
CONTENT_BYTES = {
    "CUB_200_2011.tgz": 1_300_000_000,  # the archive: 1,150,585,339 bytes
    "car_ims.tgz": 2_000_000_000,  # 16,185 images, about 1.9 GB
    "Stanford_Online_Products.zip": 3_200_000_000,  # 120,053 images, about 2.9 GB
    "img.zip": 1_000_000_000,  # In-Shop: 52,712 images of 256 x 256, about 0.8 GB
}


@dataclass(frozen=True)
class Remote:
    """One file of a benchmark: ``path`` relative to the data root, tried from each of ``urls`` in turn.

    ``provides`` (relative to the data root) exists once the file is in place
    and, for an archive, extracted into ``extract_to``; None keeps the file as
    it is. No ``urls``, or ``by_hand``, means the user fetches the file by hand
    (from ``page`` where there is one): a file found at ``path`` is then theirs,
    used as it is with a warning where it fails ``md5``, and the ``urls`` (old
    hosts) are tried only when there is none. Otherwise a file at ``path`` that
    fails ``md5`` is moved aside and downloaded again.
    """

    path: str
    urls: tuple[str, ...]
    md5: str | None
    provides: str
    extract_to: str | None = "."
    by_hand: bool = False
    page: str | None = None

    @property
    def manual(self) -> bool:
        """Whether a file at ``path`` is the user's own copy, never replaced by a download."""
        return self.by_hand or not self.urls


class Benchmark(ImageList):
    """Base class: ``root`` is the --data folder; subclasses say what to read and fetch."""

    folder = ""
    title = ""  # the benchmark's name in messages
    required: tuple[str, ...] = ()  # files under root/folder whose presence means the tree is complete
    remotes: tuple[Remote, ...] = ()
    splits: tuple[str, ...] = ("train", "test")
    listing: str | None = None  # file under root/folder, formatted with the split, that lists its images

    def __init__(self, root: str | Path, split: str = "train", transform: Callable | None = None,
                 download: bool = False, cache_dir: str | Path | None = None, cache_workers: int | None = None):
        if split not in self.splits:
            raise UserError(f"{type(self).__name__} has no split {split!r}; choose one of {', '.join(self.splits)}")
        self.root = Path(root)
        self.base = self.root / self.folder
        self.split = split
        self.download = download
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
        super().__init__(samples, transform, cache_dir, split_cache_name(type(self).__name__, self.root, split),
                         cache_workers)

    def is_complete(self) -> bool:
        return all((self.base / name).exists() for name in self.required)

    def _pending(self) -> list[Remote]:
        """The remotes whose files are not in place yet; a folder where one of their files belongs is an error."""
        pending = [r for r in self.remotes if not (self.root / r.provides).exists()]
        for remote in pending:
            unpacked = "" if remote.extract_to is None else \
                f" (if it holds the extracted files, move them into {self.root / remote.extract_to})"
            refuse_folder(self.root / remote.path, f"rename or move it{unpacked} and run again")
        return pending

    def prepare_local(self) -> None:
        """Extract archives the user already put in place, warning where one is not the published file;
        needs no network."""
        for remote in self._pending():
            archive = self.root / remote.path
            if remote.extract_to is not None and archive.is_file():
                if remote.md5 is not None and (actual := file_md5(archive)) != remote.md5:
                    print(f"[Warning] {archive} has md5 {actual}, not the published {remote.md5}: it is not the "
                          "original archive (a repacked or damaged copy?); extracting it anyway, and results may "
                          "differ from the paper's")
                self._extract(remote)

    def _extract(self, remote: Remote) -> None:
        """Extract the archive of ``remote`` within the size limit its name gives (see ``CONTENT_BYTES``)."""
        archive = self.root / remote.path
        extract_archive(archive, self.root / remote.extract_to, CONTENT_BYTES.get(archive.name),
                        self._good_copy(remote))

    def _good_copy(self, remote: Remote) -> str:
        """Where a good copy of the file of ``remote`` comes from, for a file there that is damaged or no archive."""
        path = self.root / remote.path
        md5 = f" (md5 {remote.md5})" if remote.md5 else ""
        if remote.page is not None:
            return f"{self.title}'s {path.name}{md5} comes from {remote.page}: download it there and put it at {path}"
        if remote.manual:
            return f"replace it with a good copy of {path.name}{md5}"
        return f"replace it with {remote.urls[0]}{md5}"

    def how_to_get(self) -> str:
        """One sentence on how to obtain the data, applicable whether downloads are on or off."""
        by_hand = "; ".join(self._by_hand(remote) for remote in self.remotes)
        return by_hand if self.download else f"run without --no-download to fetch it, or {by_hand}"

    def _by_hand(self, remote: Remote) -> str:
        """How to put ``remote`` in place without the downloader: extract the archive that is there, or fetch it."""
        archive = self.root / remote.path
        place = f"extract it into {self.root / remote.extract_to}" if remote.extract_to is not None \
            else f"put it at {archive}"
        if remote.extract_to is not None and archive.is_file():
            return f"extract {archive} into {self.root / remote.extract_to} again"
        source = f"{remote.urls[0]} (md5 {remote.md5})" if remote.urls else remote.path
        return f"fetch {source} and {place}"

    def unreadable_advice(self) -> str:
        """Restore the original image; removing the file would only make it missing, so say how to unlist it."""
        advice = "replace it with the original from the dataset's archive"
        if self.listing is None:
            return advice
        return f"{advice}, or delete its line from {self.base / self.listing.format(split=self.split)}"

    def fetch(self) -> None:
        """Download, verify and extract every missing file; a file the user placed by hand is left to
        ``prepare_local``."""
        for remote in self._pending():
            if remote.manual and (self.root / remote.path).is_file():
                continue
            self._download_any(remote)
            if remote.extract_to is not None:
                self._extract(remote)

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


def split_cache_name(kind: str, root: Path, split: str) -> str:
    """The cache name of ``split`` of dataset ``kind`` read from ``root``; it tells data roots apart, so that
    a cache of one root never supersedes (and removes) the cache of another."""
    where = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return f"{kind}-{split}-{where}"


def _images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, by extension, hidden files (``._x.jpg``) excluded, sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file())


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` that hold images, sorted by name; prints one line naming any skipped.

    Hidden folders (``.git``, ``.ipynb_checkpoints``) and folders without images
    are not classes: counting them would shift the class split.
    """
    folders = sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name)
    skipped = [p.name for p in folders if p.name.startswith(".") or not _images(p)]
    if skipped:
        print(f"[Data] {folder}: skipped {len(skipped)} hidden or imageless folder(s), not classes: "
              f"{', '.join(skipped)}")
    return [p for p in folders if p.name not in skipped]


def folder_samples(class_dirs: Sequence[Path], first_label: int) -> list[tuple[str, int]]:
    """(path, label) of every image file, classes labelled from ``first_label`` in the given order."""
    return [(str(p), first_label + offset) for offset, class_dir in enumerate(class_dirs) for p in _images(class_dir)]


def numbered_rows(path: Path, skip: int, columns: int) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line of the UTF-8 text index ``path`` after ``skip`` header
    lines, each with ``columns`` whitespace-separated fields; anything else names the file and the line."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); {RESTORE_LISTING}") from exc
    rows = []
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}, line {number}: expected UTF-8 text, found byte 0x{raw[exc.start]:02x} at "
                            f"column {exc.start + 1}; {RESTORE_LISTING}") from exc
        if number <= skip or not line.strip():
            continue
        fields = line.split()
        if len(fields) != columns:
            raise UserError(f"{path}, line {number}: expected {columns} fields, found {len(fields)}: "
                            f"{line.strip()!r}; {RESTORE_LISTING}")
        rows.append((number, fields))
    return rows


def id_number(path: Path, number: int, value: str, expected: str, prefix: str = "", low: int = 0) -> int:
    """The integer that ``value`` (field of line ``number`` of ``path``) writes as ``prefix`` and decimal
    digits, from ``low`` to ``INT64_MAX``; anything else is an error naming the file, the line and
    ``expected``."""
    digits = value[len(prefix):] if value.startswith(prefix) else ""
    if _DIGITS.fullmatch(digits) and low <= int(digits) <= INT64_MAX:
        return int(digits)
    raise UserError(f"{path}, line {number}: expected {expected}, found {value!r}; {RESTORE_LISTING}")
