"""witbuild.tar_io against tars written by other tools: GNU tar in each of its formats, Python's tarfile in each
of its formats and webdataset's TarWriter. ``tarfile`` is the reference listing; the fast reader must agree
with it member for member, and fall back to it for what it does not read itself."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from witbuild import tar_io

FILES = {
    "000001.jpg": b"\xff\xd8" + bytes(range(256)) * 7,
    "000001.txt": "a caption with ünïcode".encode(),
    "000001.json": b"{}",
    "000002.jpg": b"x" * 512,  # exactly one block: no padding
    "000002.txt": b"",  # empty member
    "sub/dir/000003.png": b"\x89PNG" + b"y" * 1000,
    "d" * 120 + ".txt": b"a name longer than the 100 bytes of a ustar name field",
    "ünïcode-näme.txt": b"non-ascii name",
}
SHORT = {k: v for k, v in FILES.items() if len(k.encode()) <= 100}


def _tree(root: Path, files: dict[str, bytes]) -> list[str]:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "a-link").symlink_to("000001.txt")
    return [*files, "a-link"]


def _reference(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _listed(path: Path) -> dict[str, bytes]:
    with open(path, "rb") as fh:
        return {e.name: data for e, data in tar_io.iter_files(fh)}


def _fast_works(path: Path) -> bool:
    with open(path, "rb") as fh:
        try:
            tar_io._fast_entries(fh)
        except tar_io._Unsupported:
            return False
    return True


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar not installed")
@pytest.mark.parametrize(("fmt", "long_names", "fast"), [
    ("posix", True, True), ("ustar", False, True), ("gnu", False, True), ("gnu", True, False), ("v7", False, False),
])
def test_gnu_tar_archives_list_as_tarfile_lists_them(tmp_path, fmt, long_names, fast):
    files = FILES if long_names else SHORT
    if fmt == "v7":
        files = {k: v for k, v in files.items() if k.isascii()}
    src = tmp_path / "src"
    names = _tree(src, files)
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(archive), "-C", str(src), *names, "sub"], check=True)
    listed = _listed(archive)
    assert listed == _reference(archive)
    assert set(listed) == set(files)
    assert _fast_works(archive) is fast  # GNU long names (type L) and v7 headers go through tarfile


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_python_tarfile_archives_list_as_tarfile_lists_them(tmp_path, fmt):
    files = FILES if fmt != tarfile.USTAR_FORMAT else {k: v for k, v in SHORT.items() if k.isascii()}
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w", format=fmt) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.uname = len(data), 1_700_000_000.25, "someone"
            tar.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("a-directory")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
    assert _listed(archive) == _reference(archive) == files
    assert _fast_works(archive) is (fmt != tarfile.GNU_FORMAT)  # GNU: long names as type-L members


def test_webdataset_tarwriter_shards(tmp_path):
    import webdataset as wds

    archive = tmp_path / "shard.tar"
    with wds.TarWriter(str(archive)) as sink:
        for i in range(20):
            sink.write({"__key__": f"{i:09d}", "jpg": bytes([i]) * (100 + 37 * i), "txt": f"caption {i}"})
    listed = _listed(archive)
    assert listed == _reference(archive) and len(listed) == 40
    assert _fast_works(archive)


def test_unreadable_files_raise_a_tar_error(tmp_path):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(tarfile.TarError), open(junk, "rb") as fh:
        tar_io.tar_entries(fh)
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("big.jpg")
        info.size = 5000
        tar.addfile(info, io.BytesIO(b"z" * 5000))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:3000])  # the data stops mid-member
    with pytest.raises(tarfile.TarError), open(cut, "rb") as fh:
        list(tar_io.iter_files(fh))


@pytest.mark.parametrize("member", [0, 1, 2])
def test_a_header_with_a_wrong_checksum_is_left_to_tarfile(tmp_path, member):
    """The fast reader checks every header's checksum (all at once, after its walk): one wrong header, wherever
    it is, hands the file to ``tarfile``, which stops there as it does."""
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"{i:06d}.txt")
            info.size = 700
            tar.addfile(info, io.BytesIO(bytes([65 + i]) * 700))
    data = bytearray(whole.read_bytes())
    header = member * 3 * tarfile.BLOCKSIZE  # each member: its header and two data blocks
    data[header] ^= 1  # its name's first byte: the stored checksum no longer matches
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    assert _fast_works(whole)
    assert not _fast_works(bad)
    with open(bad, "rb") as fh:
        try:
            listed = [e.name for e in tar_io.tar_entries(fh)]
        except tarfile.TarError:
            listed = None
    with tarfile.open(bad) if member else contextlib.nullcontext() as tar:
        expected = [m.name for m in tar.getmembers()] if member else None
    assert listed == expected


def test_write_tar_is_what_tarfile_writes_and_gnu_tar_reads(tmp_path):
    entries = [(tar_io.TarEntry(name, 0, len(data), 0o444, 7, 8, "u", "g"), data)
               for name, data in sorted(FILES.items())]
    ours = io.BytesIO()
    assert tar_io.write_tar(ours, entries, mtime=0) == len(FILES)
    theirs = io.BytesIO()
    with tarfile.open(fileobj=theirs, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry, data in entries:
            info = tarfile.TarInfo(entry.name)
            info.size, info.mtime, info.mode = len(data), 0, entry.mode
            info.uid, info.gid, info.uname, info.gname = entry.uid, entry.gid, entry.uname, entry.gname
            tar.addfile(info, io.BytesIO(data))
    assert ours.getvalue() == theirs.getvalue()
    archive = tmp_path / "out.tar"
    archive.write_bytes(ours.getvalue())
    if shutil.which("tar"):
        out = tmp_path / "x"
        out.mkdir()
        subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
        assert {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()} == FILES


@pytest.mark.parametrize("seed", [0, 1])
def test_filled_headers_equal_tarfiles_own(seed):
    """Every header write_tar fills from a template is the one ``TarInfo.tobuf`` builds; members that need a PAX
    record (long or non-ASCII names and owners, huge ids or sizes) are left to tarfile."""
    import random

    rng = random.Random(seed)
    templates: dict = {}
    filled = 0
    for _ in range(3000):
        name = rng.choice(["a", "000012345.jpg", "x" * 100, "x" * 101, "dir/sub/ü.txt", "sp ace.txt",
                           "k" * rng.randint(1, 120)])
        size = rng.choice([0, 1, 511, 512, 513, rng.randint(0, 10**7), 8**11 - 1, 8**11])
        entry = tar_io.TarEntry(name, 0, size, rng.choice([0o644, 0o600, 0o755]), rng.choice([0, 1000, 8**7 + 5]),
                                rng.choice([0, 50]), rng.choice(["", "root", "u" * 40, "é"]), rng.choice(["", "g"]))
        mtime = rng.choice([0, 1_700_000_000])
        header = tar_io._filled_header(templates, entry, size, mtime)
        if header is not None:
            filled += 1
            assert header == tar_io._tarfile_header(entry, size, mtime), (entry, size, mtime)
    assert 500 < filled < 2500  # both ways taken
