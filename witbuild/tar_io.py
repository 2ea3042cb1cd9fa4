"""Reading and writing WebDataset tars at the speed finalize needs.

``tarfile`` parses every header field in Python and img2dataset writes a PAX header before each member (its
float write time), so listing a 1,000-sample shard with ``tarfile`` cost ~0.5 ms per sample, as much as
decoding the image. :func:`tar_entries` reads only what finalize uses (member name, size, where its data
starts) from the POSIX ustar and PAX headers and seeks over the data; anything it does not know how to read
exactly (GNU long names, sparse files, base-256 sizes, a bad checksum) hands the whole file to ``tarfile``,
which stays the reference: both must list the same members (``tests/test_tar_io.py``, on tars written by
GNU tar, Python's ``tarfile`` in its three formats and img2dataset).

:func:`write_tar` writes members with headers that ``tarfile`` itself builds (``TarInfo.tobuf``), so the
output is what ``tarfile.addfile`` would write. A member that needs no PAX record (an ASCII name of at most 100
bytes, a size under 8 GiB) gets a copy of one such header, built once per owner and mode, with its name, size
and checksum filled in: ``tobuf`` per member cost more than copying the member's data.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_POSIX_MAGIC, _GNU_MAGIC = b"ustar\x0000", b"ustar  \x00"
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_SKIPPED_TYPES = (tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                  tarfile.FIFOTYPE)


class _Unsupported(Exception):
    """A header the fast reader does not handle: ``tarfile`` reads the file instead."""


@dataclass(frozen=True)
class TarEntry:
    """A regular file member: its name, where its data starts in the tar, its size, and the header fields a
    copy keeps (permissions and owner)."""

    name: str
    offset_data: int
    size: int
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""


def _octal(field: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if field[:1] and field[0] & 0x80:
        raise _Unsupported("base-256 number")
    return int(text, 8) if text else 0


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records (POSIX.1-2001)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise _Unsupported("bad PAX record length")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _fast_entries(fh: IO[bytes]) -> list[TarEntry]:
    """The walk over the headers; their checksums are checked together at the end (:func:`_check_sums`), and any
    header that fails makes the whole listing fail, as it would have failed at that header."""
    entries: list[TarEntry] = []
    pax: dict[str, str] = {}
    owners: dict[bytes, tuple[int, int, int, str, str]] = {}
    headers: list[bytes] = []
    pos = fh.tell()
    while True:
        header = fh.read(BLOCK)
        if len(header) < BLOCK or header == tarfile.NUL * BLOCK:
            _check_sums(headers)
            return entries  # end of archive (two zero blocks; a missing end is tolerated as tarfile does)
        headers.append(header)
        kind, magic, size = header[156:157], header[257:265], _octal(header[124:136])
        data_at = pos + BLOCK
        if magic not in (_POSIX_MAGIC, _GNU_MAGIC):
            raise _Unsupported(f"magic {magic!r}")
        if kind == tarfile.XHDTYPE:  # PAX header of the next member
            pax = _pax_records(fh.read(size))
            pos = data_at + _padded(size)
            fh.seek(pos)
            continue
        if kind not in _FILE_TYPES + _SKIPPED_TYPES:
            raise _Unsupported(f"member type {kind!r}")
        name = _text(header[0:100])
        prefix = _text(header[345:500]) if magic == _POSIX_MAGIC else ""
        name = pax.get("path", f"{prefix}/{name}" if prefix else name)
        if kind in _FILE_TYPES and not name.endswith("/"):
            size = int(pax.get("size", size))
            owner = header[100:124] + header[265:329]  # mode, uid, gid, uname, gname: one or two kinds per tar
            if owner not in owners:
                owners[owner] = (_octal(header[100:108]), _octal(header[108:116]), _octal(header[116:124]),
                                 _text(header[265:297]), _text(header[297:329]))
            mode, uid, gid, uname, gname = owners[owner]
            entries.append(TarEntry(name, data_at, size, mode, int(pax.get("uid", uid)), int(pax.get("gid", gid)),
                                    pax.get("uname", uname), pax.get("gname", gname)))
            pos = data_at + _padded(size)
        else:
            pos = data_at  # directories and links carry no data
        pax = {}
        fh.seek(pos)


def _check_sums(headers: list[bytes]) -> None:
    """Each header's stored checksum against the sum of its bytes, the checksum field counted as spaces; summed
    in one numpy step (two Python ``sum`` calls a header were a third of listing a shard)."""
    if not headers:
        return
    blocks = np.frombuffer(b"".join(headers), np.uint8).reshape(len(headers), BLOCK)
    sums = blocks.sum(axis=1, dtype=np.int64) - blocks[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    for header, computed in zip(headers, sums.tolist(), strict=True):
        if _octal(header[148:156]) != computed:
            raise _Unsupported("header checksum")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _tarfile_entries(fh: IO[bytes]) -> list[TarEntry]:
    with tarfile.open(fileobj=fh, mode="r:") as tar:
        return [TarEntry(m.name, m.offset_data, m.size, m.mode, m.uid, m.gid, m.uname, m.gname)
                for m in tar.getmembers() if m.isfile()]


def tar_entries(fh: IO[bytes]) -> list[TarEntry]:
    """The regular file members of an uncompressed tar opened for reading (seekable), in archive order.

    Raises ``tarfile.TarError`` (or ``OSError``) when the file is not a readable tar."""
    start = fh.tell()
    try:
        return _fast_entries(fh)
    except (_Unsupported, ValueError):
        fh.seek(start)
        return _tarfile_entries(fh)


def entries_match(fh: IO[bytes], entries: list[TarEntry]) -> bool:
    """Whether each of ``entries`` (saved by another process) lies in the tar as saved: right after a ustar header
    with its size and, where the name fits the header's name field, its name. A list that does not match its tar
    would copy the wrong bytes without a word; this costs ~1 µs a member, against ~7 to read the headers. The
    file's position is left where it was."""
    start = fh.tell()
    try:
        for entry in entries:
            if entry.offset_data < BLOCK or entry.size < 0:
                return False
            fh.seek(entry.offset_data - BLOCK)
            header = fh.read(BLOCK)
            if len(header) < BLOCK or header[257:265] not in (_POSIX_MAGIC, _GNU_MAGIC):
                return False
            if entry.size < _MAX_SIZE and header[_SIZE] != b"%011o\0" % entry.size:
                return False
            name = entry.name.encode("utf-8", "surrogateescape")
            if len(name) < 100 and header[: len(name) + 1] != name + tarfile.NUL:
                return False
        return True
    finally:
        fh.seek(start)


def read_entry(fh: IO[bytes], entry: TarEntry) -> bytes:
    """The data of ``entry`` (from :func:`tar_entries` of the same file)."""
    fh.seek(entry.offset_data)
    data = fh.read(entry.size)
    if len(data) != entry.size:
        raise tarfile.ReadError(f"{entry.name}: truncated ({len(data)} of {entry.size} bytes)")
    return data


def iter_files(fh: IO[bytes]) -> Iterator[tuple[TarEntry, bytes]]:
    """Each regular file member with its data, in archive order."""
    for entry in tar_entries(fh):
        yield entry, read_entry(fh, entry)


def write_tar(out: IO[bytes], members: Iterable[tuple[TarEntry, bytes]], mtime: int = 0) -> int:
    """Write a tar of ``members`` (entry, data) to ``out`` in the order given, every member with time ``mtime``
    and no other PAX record than ``tarfile`` needs for the name; returns the members written."""
    n = 0
    written = 0
    templates: _Templates = {}
    pending: list[bytes] = []  # written ~1 MB at a time: three writes a member cost more than joining them
    held = 0
    for entry, data in members:
        header = _filled_header(templates, entry, len(data), mtime) or _tarfile_header(entry, len(data), mtime)
        pad = -len(data) % BLOCK
        pending += (header, data, _PADS[pad])
        held += len(header) + len(data) + pad
        if held >= _WRITE_BYTES:
            out.write(b"".join(pending))
            written, pending, held = written + held, [], 0
        n += 1
    written += held
    end = 2 * BLOCK
    pending.append(tarfile.NUL * (end + (-(written + end) % RECORD)))
    out.write(b"".join(pending))
    return n


def _tarfile_header(entry: TarEntry, size: int, mtime: int, name: str | None = None) -> bytes:
    info = tarfile.TarInfo(entry.name if name is None else name)
    info.size, info.mtime, info.mode = size, mtime, entry.mode
    info.uid, info.gid, info.uname, info.gname = entry.uid, entry.gid, entry.uname, entry.gname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_NAME, _SIZE, _CHKSUM = slice(0, 100), slice(124, 136), slice(148, 156)  # ustar header fields
_PADS = [tarfile.NUL * n for n in range(BLOCK)]
_WRITE_BYTES = 1 << 20
_MAX_SIZE = 8**11  # an 11-digit octal size; larger ones need a PAX record


_Templates = dict[tuple, tuple[bytes, int] | None]  # (owner, mode, time) -> blank header and its sum


def _filled_header(templates: _Templates, entry: TarEntry, size: int, mtime: int) -> bytes | None:
    """``tarfile``'s header for ``entry`` from a template of the same owner, mode and time (name, size and
    checksum replaced, as ``tarfile`` writes them); None when the member needs a PAX record."""
    name = entry.name.encode("ascii", "replace")
    if len(name) > 100 or not entry.name.isascii() or size >= _MAX_SIZE:
        return None
    key = (entry.mode, entry.uid, entry.gid, entry.uname, entry.gname, mtime)
    if key not in templates:
        template = _tarfile_header(entry, 0, mtime, name="t")
        templates[key] = _blank(template) if len(template) == BLOCK else None  # owner fields needing PAX: tarfile's
    found = templates[key]
    if found is None:
        return None
    blank, blank_sum = found
    header = bytearray(blank)
    header[_NAME] = name.ljust(100, tarfile.NUL)
    size_field = b"%011o\0" % size
    header[_SIZE] = size_field
    header[148:155] = b"%06o\0" % (blank_sum + sum(name) + sum(size_field))  # the sum of this header's bytes
    return bytes(header)


def _blank(template: bytes) -> tuple[bytes, int]:
    """A template header with its name and size zeroed and its checksum field spaces, and the sum of its bytes:
    a member's checksum is that plus the sums of its own name and size fields (NUL bytes add nothing)."""
    header = bytearray(template)
    header[_NAME] = tarfile.NUL * 100
    header[_SIZE] = tarfile.NUL * 12
    header[_CHKSUM] = b" " * 8
    return bytes(header), sum(header)
