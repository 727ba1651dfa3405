"""download() and extract_archive() against a local server and hostile archives."""
import hashlib
import io
import tarfile
import zipfile

import pytest

from dataset.download import download, extract_archive
from errors import UserError
from http_server import RangeHandler, serve


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


# --- issue 22: the user's file at the archive path, broken servers, what is no archive, size limits -------

def test_a_users_file_failing_the_checksum_is_moved_aside_before_the_download(served, tmp_path, capsys):
    root, url = served
    payload = b"the published archive" * 500
    (root / "a.tgz").write_bytes(payload)
    target = tmp_path / "a.tgz"
    target.write_bytes(b"my own file")
    (tmp_path / "a.tgz.bad").write_bytes(b"set aside by an earlier run")
    download(url + "a.tgz", target, md5=md5(payload))
    assert target.read_bytes() == payload
    assert (tmp_path / "a.tgz.bad").read_bytes() == b"set aside by an earlier run"
    assert (tmp_path / "a.tgz.bad.2").read_bytes() == b"my own file"
    out = capsys.readouterr().out
    assert f"{target} has md5 {md5(b'my own file')}, not {md5(payload)}: your file is kept as {target}.bad.2" in out


def test_a_users_file_is_kept_when_the_download_then_fails(tmp_path):
    target = tmp_path / "a.tgz"
    target.write_bytes(b"my own file")
    with pytest.raises(UserError, match="download of .* failed"):
        download("http://127.0.0.1:9/a.tgz", target, md5="0" * 32, timeout=2)
    assert (tmp_path / "a.tgz.bad").read_bytes() == b"my own file"


def test_a_failed_checksum_never_replaces_an_earlier_bad_file(served, tmp_path):
    root, url = served
    (root / "a.bin").write_bytes(b"changed on the server")
    for earlier in ("a.bin.bad", "a.bin.bad.2"):
        (tmp_path / earlier).write_bytes(earlier.encode())
    with pytest.raises(UserError, match=r"kept aside as .*a\.bin\.bad\.3 "):
        download(url + "a.bin", tmp_path / "a.bin", md5="0" * 32)
    assert [(tmp_path / n).read_bytes() for n in ("a.bin.bad", "a.bin.bad.2", "a.bin.bad.3")] == [
        b"a.bin.bad", b"a.bin.bad.2", b"changed on the server"]


def test_a_folder_at_the_download_path_is_one_line(served, tmp_path):
    root, url = served
    (root / "a.tgz").write_bytes(b"x")
    (tmp_path / "a.tgz").mkdir()
    with pytest.raises(UserError, match=r"a\.tgz is a folder, where the file a\.tgz belongs; move or rename it"):
        download(url + "a.tgz", tmp_path / "a.tgz", md5=md5(b"x"))


class UnnumberedLength(RangeHandler):
    """Declares a Content-Length that is no number."""

    def send_header(self, keyword, value):
        super().send_header(keyword, "about a megabyte" if keyword == "Content-Length" else value)


class LongerLength(RangeHandler):
    """Declares 1000 bytes more than it sends, then closes the connection."""

    def send_header(self, keyword, value):
        super().send_header(keyword, str(int(value) + 1000) if keyword == "Content-Length" else value)


class RangeErrorAlways(RangeHandler):
    """Answers 416 to every request, with or without a range."""

    def do_GET(self):
        self.send_response(416)
        self.end_headers()


def test_a_content_length_that_is_no_number_is_ignored(tmp_path):
    payload = b"0123456789" * 3000
    (tmp_path / "a.bin").write_bytes(payload)
    with serve(tmp_path, UnnumberedLength) as url:
        out = download(url + "a.bin", tmp_path / "dl" / "a.bin", md5=md5(payload))
    assert out.read_bytes() == payload


def test_a_body_shorter_than_its_content_length_is_one_line_and_resumable(tmp_path):
    payload = b"0123456789" * 3000
    (tmp_path / "a.bin").write_bytes(payload)
    with serve(tmp_path, LongerLength) as url, pytest.raises(UserError) as exc:
        download(url + "a.bin", tmp_path / "dl" / "a.bin", md5=md5(payload))
    assert "failed (the connection closed after 30,000 of the 31,000 bytes declared)" in str(exc.value)
    assert "partial file" in str(exc.value) and "\n" not in str(exc.value)
    assert (tmp_path / "dl" / "a.bin.part").read_bytes() == payload


def test_http_416_without_a_part_file_is_one_line(tmp_path):
    with serve(tmp_path, RangeErrorAlways) as url, pytest.raises(UserError) as exc:
        download(url + "a.bin", tmp_path / "dl" / "a.bin", md5="0" * 32)
    assert "HTTP Error 416" in str(exc.value) and "nothing was saved" in str(exc.value)
    assert not (tmp_path / "dl" / "a.bin").exists() and not (tmp_path / "dl" / "a.bin.part").exists()


@pytest.mark.parametrize("content, what", [
    (b"", "it is empty"),
    (b"<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses.</body></html>", "an HTML page"),
    (b"just some text\n" * 50, "or it is truncated"),
])
@pytest.mark.parametrize("name, kind", [("img.zip", "zip file"), ("car_ims.tgz", "tar archive")])
def test_a_file_that_is_no_archive_is_one_line_with_the_advice(tmp_path, content, what, name, kind):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError) as exc:
        extract_archive(tmp_path / name, tmp_path / "dest", advice="get it from the web page")
    message = str(exc.value)
    assert message.startswith(f"{tmp_path / name} is not a {kind}") and what in message
    assert message.endswith("; get it from the web page") and "\n" not in message


def _zeros_zip(path, size):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("zeros.bin", bytes(size))
    return path


def test_an_archive_declaring_over_four_times_its_size_is_refused_before_extraction(tmp_path):
    bomb = _zeros_zip(tmp_path / "bomb.zip", 4 << 20)  # 4 MiB of zeros in about 4 kB
    tar_bomb = _tar(tmp_path, [("ok.txt", "file", b"ok"), ("zeros.bin", "file", bytes(4 << 20))])
    for archive in (bomb, tar_bomb):
        dest = tmp_path / f"dest-{archive.name}"
        with pytest.raises(UserError) as exc:
            extract_archive(archive, dest)
        message = str(exc.value)
        assert message.startswith(f"{archive} declares 4.19 MB of content, over the limit of ")
        assert "(4 times the archive's own" in message and "nothing was extracted" in message
        assert not list(dest.iterdir())


def test_a_known_content_size_replaces_the_ratio(tmp_path):
    archive = _zeros_zip(tmp_path / "a.zip", 4 << 20)
    extract_archive(archive, tmp_path / "dest", content_bytes=3 << 20)  # twice 3 MiB: allowed
    assert (tmp_path / "dest" / "zeros.bin").stat().st_size == 4 << 20
    with pytest.raises(UserError, match=r"over the limit of 2\.1 MB \(2 times the 1\.05 MB it is known to hold\)"):
        extract_archive(archive, tmp_path / "dest2", content_bytes=1 << 20)
    assert not list((tmp_path / "dest2").iterdir())
