"""Verified, resumable downloads and safe archive extraction."""
import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from errors import UserError

_CHUNK = 1 << 20
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<!--")


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith(_HTML_MARKERS)


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``, resuming with an HTTP Range request where possible."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mdr-download/1.0"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416:
            raise
        return  # the .part file is already complete
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start over
        total = response.headers.get("Content-Length")
        total = int(total) + offset if total is not None else None
        with open(part, "ab" if offset else "wb") as f, tqdm(total=total, initial=offset, unit="B",
                                                                unit_scale=True, desc=part.name[:-5]) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())


def _after_failure(part: Path) -> str:
    """What became of ``part`` after a failed transfer: kept to resume if it holds data, else removed."""
    if part.is_file() and part.stat().st_size > 0:
        return f"the partial file {part} is kept and the next run resumes it"
    part.unlink(missing_ok=True)
    return "nothing was saved; check the address and the connection and run again"


def download(url: str, path: str | Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``path`` through ``path.part``, verified by ``md5`` before the final rename.

    An existing ``path`` with the right checksum is kept as it is. An interrupted
    download resumes from its ``.part`` file. A file that fails the checksum is
    moved aside to ``path.bad`` and never used.
    """
    path = Path(path)
    if path.exists() and (md5 is None or file_md5(path) == md5):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    try:
        _fetch(url, part, timeout)
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"download of {url} failed ({exc}); {_after_failure(part)}") from exc
    if _looks_like_html(part):
        bad = part.with_name(path.name + ".html")
        part.replace(bad)
        raise UserError(f"{url} served an HTML page instead of the archive (a login or confirmation page?); "
                        f"saved as {bad} for inspection. Download {path.name} in a browser and put it at {path}")
    if md5 is not None and (actual := file_md5(part)) != md5:
        bad = part.with_name(path.name + ".bad")
        part.replace(bad)
        raise UserError(f"checksum mismatch for {url}: md5 {actual}, expected {md5}; the file is kept "
                        f"aside as {bad} and was not used; the next run downloads it afresh")
    part.replace(path)
    return path


def _inside(dest: Path, target: Path) -> bool:
    return target == dest or dest in target.parents


def _check_member(dest: Path, name: str, link_target: str | None = None) -> None:
    """Raise if archive member ``name``, or the link it holds, would reach outside ``dest``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"unsafe archive member {name!r}: absolute path")
    if not _inside(dest, (dest / pure).resolve()):
        raise UserError(f"unsafe archive member {name!r}: it would be written outside {dest}")
    if link_target is None:
        return
    link = PurePosixPath(link_target)
    # symlinks resolve from the member's folder, tar hard links from the archive root: check both
    candidates = [((dest / pure).parent / link).resolve(), (dest / link).resolve()]
    if link.is_absolute() or not all(_inside(dest, c) for c in candidates):
        raise UserError(f"unsafe archive member {name!r}: its link to {link_target!r} leaves {dest}")


def _zip_link_target(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str | None:
    is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
    return archive.read(info).decode() if is_link else None


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract a .tar(.gz)/.tgz or .zip ``archive`` into ``dest``.

    Every member is checked before anything is written: absolute paths, ``..``
    components and links that point outside ``dest`` raise, and nothing is
    written outside ``dest``.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                links = {info.filename: _zip_link_target(zf, info) for info in zf.infolist()}
                for info in zf.infolist():
                    _check_member(dest, info.filename, links[info.filename])
                for info in zf.infolist():
                    if links[info.filename] is None:
                        zf.extract(info, dest)
            return dest
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _check_member(dest, m.name, m.linkname if (m.issym() or m.islnk()) else None)
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise UserError(f"unsafe archive member {m.name!r}: not a file, folder or link")
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise UserError(f"cannot extract {archive} ({exc}); the archive is damaged or truncated: "
                        f"delete it and download it again") from exc
    return dest

