"""download() and extract_archive() against a local server and hostile archives."""
import hashlib
import io
import tarfile
import zipfile

import pytest

from dataset.download import download, extract_archive
from errors import UserError
from http_server import serve


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "srv"
    root.mkdir()
    with serve(root) as url:
        yield root, url


def test_download_verifies_and_renames(served, tmp_path):
    root, url = served
    payload = bytes(range(256)) * 1000
    (root / "a.bin").write_bytes(payload)
    out = download(url + "a.bin", tmp_path / "dl" / "a.bin", md5=md5(payload))
    assert out.read_bytes() == payload
    assert not (tmp_path / "dl" / "a.bin.part").exists()


def test_interrupted_download_resumes_from_part_file(served, tmp_path):
    root, url = served
    payload = b"0123456789" * 5000
    (root / "a.bin").write_bytes(payload)
    target = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(payload[:12345])
    download(url + "a.bin", target, md5=md5(payload))
    assert target.read_bytes() == payload


def test_checksum_mismatch_keeps_file_aside(served, tmp_path):
    root, url = served
    (root / "a.bin").write_bytes(b"not what you expected" * 100)
    with pytest.raises(UserError, match="checksum mismatch.*kept aside"):
        download(url + "a.bin", tmp_path / "a.bin", md5="0" * 32)
    assert not (tmp_path / "a.bin").exists()
    assert (tmp_path / "a.bin.bad").read_bytes() == b"not what you expected" * 100


def test_html_page_instead_of_archive_is_recognised(served, tmp_path):
    root, url = served
    (root / "a.zip").write_text("<!DOCTYPE html><html><body>Google Drive can't scan this file</body></html>")
    with pytest.raises(UserError, match="HTML page instead of the archive"):
        download(url + "a.zip", tmp_path / "a.zip", md5="0" * 32)
    assert not (tmp_path / "a.zip").exists()


def test_unreachable_url_is_a_clear_error(tmp_path):
    with serve(tmp_path) as url:
        pass  # the server is stopped: its port now refuses connections
    with pytest.raises(UserError, match="download of .* failed"):
        download(url + "x.tgz", tmp_path / "x.tgz", timeout=2)


def _tar(tmp_path, members):
    """members: list of (name, kind, payload) with kind file|symlink|hardlink."""
    path = tmp_path / "evil.tgz"
    with tarfile.open(path, "w:gz") as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                info.linkname = payload
                tf.addfile(info)
    return path


@pytest.mark.parametrize("members", [
    [("ok.txt", "file", b"ok"), ("../escape.txt", "file", b"evil")],
    [("ok.txt", "file", b"ok"), ("/tmp/abs_escape_mdr.txt", "file", b"evil")],
    [("ok.txt", "file", b"ok"), ("link", "symlink", "../../outside"), ("link/escape.txt", "file", b"evil")],
    [("ok.txt", "file", b"ok"), ("hard", "hardlink", "../../etc/passwd")],
], ids=["dotdot", "absolute", "symlink", "hardlink"])
def test_unsafe_tar_members_write_nothing(tmp_path, members):
    archive = _tar(tmp_path, members)
    dest = tmp_path / "a" / "b" / "dest"
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(UserError, match="unsafe archive member"):
        extract_archive(archive, dest)
    after = {p for p in tmp_path.rglob("*")}
    assert after - before <= {dest, dest.parent, dest.parent.parent}
    assert not list(dest.iterdir())


def test_unsafe_zip_members_write_nothing(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../../escape.txt", "evil")
    dest = tmp_path / "x" / "dest"
    with pytest.raises(UserError, match="unsafe archive member"):
        extract_archive(archive, dest)
    assert not (tmp_path / "escape.txt").exists() and not list(dest.iterdir())


def test_zip_symlink_leaving_target_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, "../../outside")
    with pytest.raises(UserError, match="link"):
        extract_archive(archive, tmp_path / "dest")


def test_truncated_archive_is_a_clear_error(tmp_path):
    good = _tar(tmp_path, [("big.bin", "file", bytes(200_000))])
    data = good.read_bytes()
    truncated = tmp_path / "trunc.tgz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="damaged or truncated"):
        extract_archive(truncated, tmp_path / "dest")


def test_safe_archives_extract(tmp_path):
    archive = _tar(tmp_path, [("d/a.txt", "file", b"A"), ("d/l", "symlink", "a.txt")])
    dest = extract_archive(archive, tmp_path / "dest")
    assert (dest / "d" / "a.txt").read_bytes() == b"A" and (dest / "d" / "l").read_bytes() == b"A"
