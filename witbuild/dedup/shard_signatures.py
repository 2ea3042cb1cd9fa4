"""Dedup signatures of downloaded images, computed while img2dataset writes them.

Finalize needs each image's pHash and colour thumbnail (:func:`~witbuild.dedup.near.image_signatures`). Read
back from the tars, that meant reading every shard again and decoding every image in a pass of its own
(~45% of finalize at 100,000 images, ``benchmarks/README.md``). :class:`SigningWriterClass` stands in for
img2dataset's sample writer class: each encoded image it writes into the tar is also decoded at reduced scale
right there, and when the shard closes ``{shard}_signatures.arrow`` is written beside it. The signatures are of
the very bytes in the tar, by the same function, so they are the numbers finalize would compute. (Decoding in a
thread of its own instead made the download stage take 1.21× plain img2dataset's time at 100,000 images on 2
cores, against 0.93× decoding in line: the download process's Python threads already compete for the GIL, and
one more busy thread delayed them all.)

The signatures file also records, in its metadata, what was done to the shard's images on the way
(witbuild/shard_events.py: images turned upright, converted to sRGB, images of more than 8 bits brought to 8), which the
download stage counts.

Finalize trusts a signatures file only when it matches its shard: same signature version
(:data:`~witbuild.dedup.near.SIGNATURE_VERSION`) and the tar's size as it was when the file was written.
Otherwise, or when there is none (shards from another tool or an older download), it decodes the tar.

The writer also saves where each member of the tar lies (``{shard}_members.arrow``, recorded as ``tarfile`` adds
them), so that finalize's rewrite of the shard copies them without reading every header again (~20 ms a
1,000-sample shard, most of the rewrite's own work). Trusted on the same terms: the tar's size as written;
otherwise the tar is listed.
"""

from __future__ import annotations

import json
import logging
import tarfile
from typing import Any

import pyarrow as pa

from witbuild import shard_events
from witbuild.dedup.near import SIGNATURE_VERSION, signature_inputs, signatures_from_inputs
from witbuild.dedup.phash import to_signed64, to_unsigned64
from witbuild.spark import fs_and_path
from witbuild.tar_io import TarEntry

log = logging.getLogger(__name__)

SUFFIX = "_signatures.arrow"  # beside {shard}.tar; not *.parquet, which readers take for shard metadata
MEMBERS_SUFFIX = "_members.arrow"  # beside {shard}.tar: where its members lie
SUFFIXES = (SUFFIX, MEMBERS_SUFFIX)  # every file saved beside a shard here
SCHEMA = pa.schema([("key", pa.string()), ("phash", pa.int64()), ("thumb", pa.binary())])  # null: undecodable
EVENTS_KEY = "events"  # the shard's events (witbuild/shard_events.py) in the signatures file's metadata, as JSON
MEMBERS_SCHEMA = pa.schema([("name", pa.string()), ("offset_data", pa.int64()), ("size", pa.int64()),
                            ("mode", pa.int64()), ("uid", pa.int64()), ("gid", pa.int64()), ("uname", pa.string()),
                            ("gname", pa.string())])  # TarEntry's fields


def signatures_path(shard_tar: str) -> str:
    return shard_tar[: -len(".tar")] + SUFFIX


def members_path(shard_tar: str) -> str:
    return shard_tar[: -len(".tar")] + MEMBERS_SUFFIX


class SigningWriterClass:
    """Called like img2dataset's sample writer class, it makes a :class:`SigningWriter` around one of its
    writers. An instance, not a class, because img2dataset pickles it to the download processes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, shard_id: int, output_folder: str, save_caption: bool, oom_shard_count: int,
                 schema: pa.Schema, encode_format: str) -> SigningWriter:
        writer = self.inner(shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format)
        shard_name = f"{shard_id:0{oom_shard_count}d}"
        return SigningWriter(writer, f"{output_folder.rstrip('/')}/{shard_name}.tar")


class SigningWriter:
    """img2dataset's writer, plus the signature of each image it writes (see the module docstring)."""

    def __init__(self, inner: Any, tar_path: str) -> None:
        self.inner = inner
        self.tar_path = tar_path
        self.entries = _entry_recorder(inner)
        self.keys: list[str] = []
        self.inputs: list[Any] = []
        self.events_before = shard_events.EVENTS.copy()  # this process's when the shard began
        fs, tar = fs_and_path(tar_path)
        for path in (signatures_path(tar), members_path(tar)):
            if fs.exists(path):  # an interrupted attempt's: never beside the tar written now
                fs.rm_file(path)

    def write(self, img_str: bytes | None, key: str, caption: Any, meta: dict[str, Any]) -> None:
        self.inner.write(img_str, key, caption, meta)
        if img_str is not None:  # written into the tar
            self.keys.append(key)
            self.inputs.append(signature_inputs(img_str))

    def close(self) -> None:
        self.inner.close()
        try:
            self._write_signatures()
        except Exception as exc:  # the shard is complete without them: finalize decodes it instead
            log.warning("cannot write the signatures of %s: %s", self.tar_path, exc)
        try:
            self._write_members()
        except Exception as exc:  # finalize lists the tar instead
            log.warning("cannot write the member list of %s: %s", self.tar_path, exc)

    def _write_signatures(self) -> None:
        signatures = signatures_from_inputs(self.inputs)
        fs, tar = fs_and_path(self.tar_path)
        meta = {"signature_version": SIGNATURE_VERSION, "tar_bytes": str(fs.size(tar)),
                EVENTS_KEY: json.dumps(shard_events.since(self.events_before), sort_keys=True)}
        table = pa.table({"key": pa.array(self.keys, pa.string()),
                          "phash": pa.array([to_signed64(s[0]) if s else None for s in signatures], pa.int64()),
                          "thumb": pa.array([s[1] if s else None for s in signatures], pa.binary())},
                         schema=SCHEMA.with_metadata(meta))
        _write_atomically(fs, signatures_path(tar), table)

    def _write_members(self) -> None:
        if self.entries is None:  # another writer than webdataset's over an uncompressed tar: finalize lists it
            return
        fs, tar = fs_and_path(self.tar_path)
        table = pa.table({name: [getattr(e, name) for e in self.entries] for name in MEMBERS_SCHEMA.names},
                         schema=MEMBERS_SCHEMA.with_metadata({"tar_bytes": str(fs.size(tar))}))
        _write_atomically(fs, members_path(tar), table)


def _entry_recorder(writer: Any) -> list[TarEntry] | None:
    """The entries of the members img2dataset's writer adds to its tar, filled as it adds them: where each one's
    data starts is where ``tarfile`` stands once it has written them, less their padded size (it keeps no offset
    of its own when writing). None when the writer is not webdataset's ``TarWriter`` over an uncompressed tar."""
    stream = getattr(getattr(writer, "tarwriter", None), "tarstream", None)
    if not isinstance(stream, tarfile.TarFile) or getattr(stream.fileobj, "comptype", None) != "tar":
        return None
    entries: list[TarEntry] = []
    add = stream.addfile

    def addfile(tarinfo: tarfile.TarInfo, fileobj: Any = None) -> None:
        add(tarinfo, fileobj)
        if tarinfo.isfile() and not tarinfo.name.endswith("/"):
            padded = -(-tarinfo.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            entries.append(TarEntry(tarinfo.name, stream.offset - padded, tarinfo.size, tarinfo.mode, tarinfo.uid,
                                    tarinfo.gid, tarinfo.uname, tarinfo.gname))

    stream.addfile = addfile  # type: ignore[method-assign]
    return entries


def _write_atomically(fs: Any, path: str, table: pa.Table) -> None:
    """``table`` as an Arrow IPC file at ``path``, appearing whole or not at all."""
    tmp = f"{path}.tmp"
    with fs.open(tmp, "wb") as fh, pa.ipc.new_file(fh, table.schema) as out:
        out.write_table(table)
    fs.mv(tmp, path)


def _saved(shard_tar: str, path: str, instead: str,
           whole: bool = True) -> tuple[pa.Table | None, dict[str, str]] | None:
    """The Arrow table saved at ``path`` beside the tar (only its schema's metadata when not ``whole``: the table
    is then None), and its metadata, when it is there, readable and written for the tar as it is now (its size);
    else None, logged, and the caller does ``instead``."""
    fs, tar = fs_and_path(shard_tar)
    try:
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            reader = pa.ipc.open_file(fh)
            table = reader.read_all() if whole else None
            schema = reader.schema
        meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        if meta.get("tar_bytes") != str(fs.size(tar)):
            log.info("%s does not match its shard (tar changed?): %s instead", path, instead)
            return None
    except Exception as exc:  # a damaged file costs the caller's way round, not the shard
        log.warning("cannot read %s (%s): %s instead", path, exc, instead)
        return None
    return table, meta


def read_signatures(shard_tar: str) -> dict[str, tuple[int, bytes] | None] | None:
    """{key: (unsigned pHash, thumbnail), or None when undecodable} for every image written into the tar, from
    its signatures file; None when there is no file, or it does not match the tar (then finalize decodes)."""
    saved = _saved(shard_tar, signatures_path(shard_tar), "decoding the tar")
    if saved is None:
        return None
    table, meta = saved
    if meta.get("signature_version") != SIGNATURE_VERSION or not table.schema.equals(SCHEMA):
        log.info("%s: signature version %s, not %s: decoding the tar instead", signatures_path(shard_tar),
                 meta.get("signature_version"), SIGNATURE_VERSION)
        return None
    keys, hashes, thumbs = (table.column(c).to_pylist() for c in ("key", "phash", "thumb"))
    return {k: (to_unsigned64(h), t) if h is not None and t is not None else None
            for k, h, t in zip(keys, hashes, thumbs, strict=True)}


def read_events(shard_tar: str) -> dict[str, int]:
    """The events the download recorded for the shard's images (witbuild/shard_events.py); empty when its
    signatures file is missing or does not match the tar."""
    saved = _saved(shard_tar, signatures_path(shard_tar), "counting no events for it", whole=False)
    if saved is None:
        return {}
    events = json.loads(saved[1].get(EVENTS_KEY, "{}"))
    return {str(k): int(n) for k, n in events.items() if int(n) > 0}


def read_members(shard_tar: str) -> list[TarEntry] | None:
    """The regular file members of the tar, as :func:`~witbuild.tar_io.tar_entries` lists them, from the file the
    download saved; None when there is none, or it does not match the tar (then the tar is listed)."""
    saved = _saved(shard_tar, members_path(shard_tar), "listing the tar")
    if saved is None or not saved[0].schema.equals(MEMBERS_SCHEMA):
        return None
    columns = [saved[0].column(f.name).to_pylist() for f in MEMBERS_SCHEMA]
    return [TarEntry(*fields) for fields in zip(*columns, strict=True)]
