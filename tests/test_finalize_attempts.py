"""Finalize's final tars under task retries: an attempt writes a name of its own and renames it whole into place.

A task attempt killed mid-write (an executor lost, a retried or a duplicate attempt) is simulated by a child process
that writes half a tar and kills itself with SIGKILL, as the executor's end would: no ``finally`` runs.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from witbuild import schemas
from witbuild.stages import finalize
from witbuild.stages.finalize import (
    ATTEMPT_MARK,
    ShardRecord,
    check_final_tars,
    keys_digest,
    remove_attempt_leftovers,
    rewrite_shard,
)

ROOT = Path(__file__).resolve().parent.parent
KEYS = [f"{k:07d}" for k in range(510, 518)]

# run in a child: rewrite_shard whose tar writer dies (SIGKILL) after writing half the members
KILLED_ATTEMPT = """
import os, signal, sys
from witbuild.stages import finalize
real = finalize.write_tar
def dying(out, members, mtime=0):
    members = list(members)
    real(out, members[: len(members) // 2], mtime)
    out.flush()
    os.kill(os.getpid(), signal.SIGKILL)
finalize.write_tar = dying
finalize.rewrite_shard(sys.argv[1], sys.argv[2], set(sys.argv[3].split(",")))
"""


def source_shard(path: Path, keys: list[str]) -> None:
    """A downloaded shard as img2dataset writes one (jpg, txt, json of each key in the order given; a key given
    twice is in it twice)."""
    with tarfile.open(path, "w") as tar:
        for key in keys:
            for ext, data in (("jpg", key.encode() * 40), ("txt", f"caption {key}".encode()), ("json", b"{}")):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 1_700_000_000.5
                tar.addfile(info, io.BytesIO(data))


def index_rows(shard: str, keys: list[str]) -> pa.Table:
    return pa.table({"shard": [shard] * len(keys), "key": keys})


class Records:
    """Stands in for the Spark accumulator ``_finish_shard`` adds its record to."""

    def __init__(self) -> None:
        self.value: dict[str, ShardRecord] = {}

    def add(self, more: dict[str, ShardRecord]) -> None:
        self.value.update(more)


def killed_attempt(src: Path, dst: Path, keys: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLED_ATTEMPT, str(src), str(dst), ",".join(keys)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]


def attempt_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ATTEMPT_MARK in p.name)


@pytest.fixture()
def shard(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(source folder with 00000.tar, an empty output folder, the bytes one attempt alone writes for KEYS)."""
    src, out, alone = tmp_path / "download", tmp_path / "out", tmp_path / "alone"
    for folder in (src, out, alone):
        folder.mkdir()
    source_shard(src / "00000.tar", list(reversed(KEYS)))
    assert rewrite_shard(str(src / "00000.tar"), str(alone / "00000.tar"), set(KEYS)) == len(KEYS)
    return src, out, (alone / "00000.tar").read_bytes()


def test_an_attempt_killed_after_another_finished_leaves_the_tar_whole(shard):
    """A late attempt (a retry whose first try had finished, a duplicate) killed mid-write: the tar the finished
    attempt wrote stays whole; the late one leaves only its own file, which the driver removes."""
    src, out, alone = shard
    assert rewrite_shard(str(src / "00000.tar"), str(out / "00000.tar"), set(KEYS)) == len(KEYS)
    killed_attempt(src / "00000.tar", out / "00000.tar", KEYS)
    assert (out / "00000.tar").read_bytes() == alone
    left = attempt_files(out)
    assert len(left) == 1 and left[0].startswith(".00000.tar" + ATTEMPT_MARK)
    assert remove_attempt_leftovers(str(out)) == left
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar"]


def test_a_retry_after_a_killed_attempt_writes_the_whole_tar(shard):
    src, out, alone = shard
    killed_attempt(src / "00000.tar", out / "00000.tar", KEYS)
    assert not (out / "00000.tar").exists()  # the killed attempt never wrote the tar's own name
    written = Records()
    passed = list(finalize._finish_shard(index_rows("00000.tar", KEYS), str(src), str(out), written))
    assert sum(b.num_rows for b in passed) == len(KEYS)
    assert (out / "00000.tar").read_bytes() == alone
    assert written.value == {"00000.tar": ShardRecord(len(KEYS), len(alone), keys_digest(KEYS))}
    remove_attempt_leftovers(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar"]
    check_final_tars(str(out), written.value, {"00000.tar": (len(KEYS), keys_digest(KEYS))})


def test_an_attempt_that_fails_removes_its_own_file(shard, monkeypatch):
    src, out, _ = shard

    def failing(out_file, members, mtime=0):
        out_file.write(b"x" * 1000)
        raise OSError("disk full")

    monkeypatch.setattr(finalize, "write_tar", failing)
    with pytest.raises(OSError, match="disk full"):
        rewrite_shard(str(src / "00000.tar"), str(out / "00000.tar"), set(KEYS))
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("in_tar", "in_index", "says"), [
    # img2dataset's tar holding 0000512 twice and 0000515 not at all: as many images as index rows
    ([k for k in KEYS if k != "0000515"] + ["0000512"], KEYS, ["several images: 0000512",
                                                               "index rows without an image: 0000515"]),
    (KEYS, [*KEYS[:3], KEYS[1]], ["several index rows: 0000511"]),
])
def test_a_shard_whose_keys_are_not_each_index_row_once_is_refused(tmp_path, in_tar, in_index, says):
    src, out = tmp_path / "download", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    source_shard(src / "00000.tar", in_tar)
    with pytest.raises(RuntimeError, match=r"finalize: 00000\.tar: ") as err:
        list(finalize._finish_shard(index_rows("00000.tar", in_index), str(src), str(out)))
    for text in says:
        assert text in str(err.value)
    assert list(out.iterdir()) == []  # refused before anything was written


def test_final_tars_are_checked_against_their_writers_and_the_index(tmp_path):
    src, out = tmp_path / "download", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    shards = {"00000.tar": KEYS[:5], "00001.tar": KEYS[5:]}
    written = Records()
    for name, keys in shards.items():
        source_shard(src / name, keys)
        list(finalize._finish_shard(index_rows(name, keys), str(src), str(out), written))
    index = {name: (len(keys), keys_digest(keys)) for name, keys in shards.items()}
    check_final_tars(str(out), written.value, index)

    def refused(records: dict, rows: dict, says: str) -> None:
        with pytest.raises(RuntimeError, match="stage is not published") as err:
            check_final_tars(str(out), records, rows)
        assert says in str(err.value)

    whole = (out / "00001.tar").read_bytes()
    (out / "00001.tar").write_bytes(whole[:-1024])  # cut short after its writer's check
    refused(written.value, index, f"00001.tar: {len(whole) - 1024} bytes on disk, {len(whole)} written")
    (out / "00001.tar").unlink()
    refused(written.value, index, "00001.tar: written")
    (out / "00001.tar").write_bytes(whole)
    check_final_tars(str(out), written.value, index)
    refused(written.value, {**index, "00001.tar": (len(shards["00001.tar"]), keys_digest(KEYS[4:7]))},
            "00001.tar: 3 images written, 3 index rows")
    refused({"00000.tar": written.value["00000.tar"]}, index, "00001.tar: not written by a task")
    (out / "00002.tar").write_bytes(whole)
    refused(written.value, index, "00002.tar: not in the index nor written by a task")


@pytest.mark.spark
def test_written_by_spark_with_a_killed_attempts_leftover(spark, tmp_path):
    """The whole write in Spark: the tasks' records reach the driver, Spark's digest of each shard's index keys is
    the writer's, and a file a killed attempt left in the folder is gone before the stage is listed."""
    src, out = tmp_path / "download", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    shards = {"00000.tar": KEYS[:5], "00001.tar": KEYS[5:]}
    for name, keys in shards.items():
        source_shard(src / name, keys)
    (out / f".00001.tar{ATTEMPT_MARK}7").write_bytes(b"half a tar")
    index = schemas.load("index")
    rows = [{"key": k, "shard": name, "url": f"http://127.0.0.1/{k}.jpg", "text": f"caption {k}", "uid": k,
             "sha256": k, "phash": "0" * 16} for name, keys in shards.items() for k in keys]
    table = pa.Table.from_pylist(rows, schema=index.arrow())
    kept = spark.createDataFrame(table).repartition(1)
    sizes = finalize._write_index_and_shards(kept, str(src), str(out), len(shards), in_place_drops={KEYS[0]})
    assert sizes == {"00000.tar": 4, "00001.tar": 3}
    assert attempt_files(out) == []
    with tarfile.open(out / "00000.tar") as tar:
        assert sorted({m.name.partition(".")[0] for m in tar.getmembers()}) == KEYS[1:5]
