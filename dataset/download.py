"""Verified, resumable downloads and safe archive extraction."""
import hashlib
import http.client
import os
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from errors import UserError

_CHUNK = 1 << 20
_HTML_MARKERS = (b"<!doctype html", b"<html", b"<head", b"<!--")
_DIGITS = re.compile(r"[0-9]+")
ARCHIVE_EXPANSION = 4  # an archive of unknown content may declare at most this multiple of its own size
KNOWN_EXPANSION = 2  # and one of known content at most this multiple of what it is known to hold
_MAX_LINK = 4096  # PATH_MAX: no link target is longer


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


def _declared_length(response: http.client.HTTPResponse) -> int | None:
    """The body length the server declares, or None where Content-Length is absent or not a byte count
    (http.client then reads to the end of the connection, and the md5 judges what arrived)."""
    value = (response.headers.get("Content-Length") or "").strip()
    return int(value) if _DIGITS.fullmatch(value) else None


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Append the rest of ``url`` to ``part``, resuming with an HTTP Range request where possible."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "mdr-download/1.0"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise  # a 416 answers a range, so without one it is an error like any other
        return  # the .part file is already complete
    with response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start over
        length = _declared_length(response)
        total = length + offset if length is not None else None
        received = 0
        with open(part, "ab" if offset else "wb") as f, tqdm(total=total, initial=offset, unit="B",
                                                                unit_scale=True, desc=part.name[:-5]) as bar:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if length is not None and received < length:  # http.client ends a short body quietly
            raise ConnectionError(f"the connection closed after {received:,} of the {length:,} bytes declared")


def _after_failure(part: Path) -> str:
    """What became of ``part`` after a failed transfer: kept to resume if it holds data, else removed."""
    if part.is_file() and part.stat().st_size > 0:
        return f"the partial file {part} is kept and the next run resumes it"
    if part.is_file():
        part.unlink()
    return "nothing was saved; check the address and the connection and run again"


def free_name(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended (``NAME.bad``), or else ``NAME.bad.2``, ``NAME.bad.3``, ...: the first
    name that nothing holds, so that a file set aside never replaces one set aside before."""
    candidate, number = path.with_name(path.name + suffix), 1
    while candidate.exists() or candidate.is_symlink():
        number += 1
        candidate = path.with_name(f"{path.name}{suffix}.{number}")
    return candidate


def set_aside(file: Path, path: Path, suffix: str) -> Path:
    """Move ``file`` to the first free name of ``path`` + ``suffix`` (see ``free_name``) and return that name."""
    target = free_name(path, suffix)
    file.rename(target)
    return target


def refuse_folder(path: Path, advice: str) -> None:
    """Raise where ``path``, the place of a file, is a folder: nothing could be written or read there."""
    if path.is_dir():
        raise UserError(f"{path} is a folder, where the file {path.name} belongs; {advice}")


def download(url: str, path: str | Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``path`` through ``path.part``, verified by ``md5`` before the final rename.

    An existing ``path`` with the right checksum (or any, without ``md5``) is kept
    as it is; one that fails the checksum is not ours to replace: it is moved aside
    to ``path.bad`` (or ``path.bad.2``, ...: never onto an earlier one) before the
    download starts. An interrupted download resumes from its ``.part`` file. A
    download that fails the checksum is moved aside the same way and never used.
    """
    path = Path(path)
    part = path.with_name(path.name + ".part")
    for place in (path, part):
        refuse_folder(place, "move or rename it and run again")
    if path.exists():
        actual = file_md5(path) if md5 is not None else None
        if actual == md5:
            return path
        kept = set_aside(path, path, ".bad")
        print(f"[Download] {path} has md5 {actual}, not {md5}: your file is kept as {kept}; fetching {url}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _fetch(url, part, timeout)
    except (OSError, http.client.HTTPException) as exc:  # OSError covers urllib's URLError and HTTPError
        raise UserError(f"download of {url} failed ({exc}); {_after_failure(part)}") from exc
    if _looks_like_html(part):
        saved = set_aside(part, path, ".html")
        raise UserError(f"{url} served an HTML page instead of the archive (a login or confirmation page?); "
                        f"saved as {saved} for inspection. Download {path.name} in a browser and put it at {path}")
    if md5 is not None and (actual := file_md5(part)) != md5:
        bad = set_aside(part, path, ".bad")
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
    """The target of a zip member stored as a symlink (read only when it is short enough to be a path)."""
    if (info.external_attr >> 16) & 0o170000 != 0o120000:
        return None
    if info.file_size > _MAX_LINK:
        raise UserError(f"unsafe archive member {info.filename!r}: a link of {info.file_size} bytes")
    return archive.read(info).decode(errors="replace")


def _size(count: int) -> str:
    """A byte count for people: ``1.3 GB``, ``8.39 MB``, ``900 B``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (tarfile's lists one failed method per line)."""
    return " ".join(str(exc).split())


def _not_an_archive(archive: Path) -> str:
    """Why ``archive`` opens as neither a zip file nor a tar archive, in the words of what its name promises."""
    kind = "zip file" if archive.suffix.lower() == ".zip" else "tar archive"
    if archive.stat().st_size == 0:
        return f"{archive} is not a {kind}: it is empty"
    if _looks_like_html(archive):
        return f"{archive} is not a {kind}: it is an HTML page (Google Drive serves one in place of a large file)"
    return f"{archive} is not a {kind}, or it is truncated"


def size_limit(archive: Path, content_bytes: int | None) -> tuple[int, str]:
    """The most bytes the members of ``archive`` may declare, and the reason in words: ``KNOWN_EXPANSION``
    times ``content_bytes`` (what the archive is known to hold) or, without it, ``ARCHIVE_EXPANSION`` times
    the archive's own size."""
    if content_bytes is not None:
        reason = f"{KNOWN_EXPANSION} times the {_size(content_bytes)} it is known to hold"
        return KNOWN_EXPANSION * content_bytes, reason
    size = archive.stat().st_size
    return ARCHIVE_EXPANSION * size, f"{ARCHIVE_EXPANSION} times the archive's own {_size(size)}"


def _check_size(archive: Path, dest: Path, declared: int, content_bytes: int | None) -> None:
    """Raise, before anything is written, where the members of ``archive`` declare more than its limit."""
    limit, reason = size_limit(archive, content_bytes)
    if declared > limit:
        raise UserError(f"{archive} declares {_size(declared)} of content, over the limit of {_size(limit)} "
                        f"({reason}); nothing was extracted: if you trust the archive, extract it into {dest} yourself")


def _extract_zip(archive: Path, dest: Path, content_bytes: int | None) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_size(archive, dest, sum(info.file_size for info in infos), content_bytes)  # before links are read
        links = {info.filename: _zip_link_target(zf, info) for info in infos}
        for info in infos:
            _check_member(dest, info.filename, links[info.filename])
        for info in infos:
            if links[info.filename] is None:
                zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path, content_bytes: int | None) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for m in members:
            _check_member(dest, m.name, m.linkname if (m.issym() or m.islnk()) else None)
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                raise UserError(f"unsafe archive member {m.name!r}: not a file, folder or link")
        _check_size(archive, dest, sum(m.size for m in members if m.isfile()), content_bytes)
        tf.extractall(dest, members=members, filter="data")


def extract_archive(archive: str | Path, dest: str | Path, content_bytes: int | None = None,
                    advice: str = "delete it and download it again") -> Path:
    """Extract a .tar(.gz)/.tgz or .zip ``archive`` into ``dest``.

    Every member is checked before anything is written: absolute paths, ``..``
    components and links that point outside ``dest`` raise, and so does a total
    declared size over ``size_limit`` (``content_bytes``: what the archive is known
    to hold, about, in bytes); nothing is written outside ``dest``. A file that is
    not an archive, or a damaged one, is one error line ending in ``advice``: where
    a good copy comes from.
    """
    archive, dest = Path(archive), Path(dest)
    refuse_folder(archive, advice)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, content_bytes)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, content_bytes)
        else:
            raise UserError(f"{_not_an_archive(archive)}; {advice}")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # the system (a full disk, permissions), not the archive
            raise UserError(f"cannot extract {archive} into {dest} ({_one_line(exc)}); fix that and run again") from exc
        raise UserError(f"cannot extract {archive} ({_one_line(exc)}); the archive is damaged or truncated: "
                        f"{advice}") from exc
    return dest
