"""Retrieval pairs held out by a share of samples (a stable hash of each key): any build, one shard included, trains
with the defaults; the split is the same in every process; no sample is both trained on and held out."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT, VENV_BIN
from tests.helpers.shards import write_shards
from trainer.config import load_train_config
from trainer.data import (
    DataError,
    StreamSpec,
    TrainStream,
    find_shards,
    is_heldout,
    iter_pairs,
    read_captions,
    split_data,
)

KEYS = [f"{i:09d}" for i in range(1000)]


def write_keyed(folder: Path, n_shards: int, per_shard: int) -> list[str]:
    """Shards whose captions name their sample's key ("caption of KEY"); the keys, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tf:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                buf = io.BytesIO()
                Image.new("RGB", (20, 16), (j * 2 % 256, s * 40, 90)).save(buf, "PNG")
                for ext, data in (("png", buf.getvalue()), ("txt", f"caption of {key}".encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                keys.append(key)
    return keys


def test_the_split_is_a_fixed_function_of_the_key_in_every_process():
    """Not Python's salted hash(): other processes (other PYTHONHASHSEEDs: other ranks, a resumed run, evaluate.py)
    hold out the same keys, and the split never changes under a run that is resumed after an upgrade."""
    held = [k for k in KEYS if is_heldout(k, 0.1)]
    assert len(held) == 101 and held[:5] == ["000000005", "000000015", "000000016", "000000018", "000000036"]
    code = ("import json; from trainer.data import is_heldout; "
            "print(json.dumps([k for k in [f'{i:09d}' for i in range(1000)] if is_heldout(k, 0.1)]))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert json.loads(out) == held
    assert not any(is_heldout(k, 0.0) for k in KEYS)
    assert set(held) <= {k for k in KEYS if is_heldout(k, 0.2)}  # a larger share holds out more of the same


def test_default_config_holds_out_a_share_and_shards_turn_it_off():
    data = load_train_config(None).data
    assert (data.holdout_shards, data.holdout_fraction) == (0, 0.02)
    assert load_train_config(None, ["data.holdout_shards=1"]).data.holdout_fraction == 0.0
    assert load_train_config("tiny-cpu").data.holdout_fraction == 0.0  # the demo keeps its last shard
    with pytest.raises(ValueError, match="set one of them to 0"):
        load_train_config(None, ["data.holdout_shards=1", "data.holdout_fraction=0.1"])
    with pytest.raises(ValueError, match="holdout_fraction"):
        load_train_config(None, ["data.holdout_fraction=1.0"])
    # a run saved before the share existed held out whole shards or nothing: resumed, it keeps doing that
    old = load_train_config(None, ["data.holdout_shards=0"]).model_dump(mode="json")
    del old["data"]["holdout_fraction"]
    assert load_train_config(None, base=old).data.holdout_fraction == 0.0


def test_one_shard_splits_by_key_and_no_sample_is_on_both_sides(tmp_path):
    keys = write_keyed(tmp_path, n_shards=1, per_shard=120)
    shards = find_shards(tmp_path)
    with pytest.raises(DataError, match="cannot leave 1 held out"):
        split_data(shards, 1, 0.0)
    split = split_data(shards, 0, 0.25)
    assert split.train == split.heldout == shards and split.fraction == 0.25
    expected = {k for k in keys if is_heldout(k, 0.25)}
    assert 15 <= len(expected) <= 45  # about a quarter of 120

    heldout = {key for _, _, key in iter_pairs(split.heldout, holdout_fraction=split.fraction)}
    assert heldout == expected
    assert {key for _, _, key in iter_pairs(shards)} == set(keys)  # no share: every pair

    spec = StreamSpec(shards=[str(s) for s in split.train], batch_size=10, batches_per_worker=30, image_size=16,
                      shuffle_buffer=20, holdout_fraction=split.fraction)
    stream = iter(TrainStream(spec, tokenizer=list))  # captions come through as text: they name their key
    trained = {text.removeprefix("caption of ") for _, (_, texts, _) in zip(range(30), stream, strict=False)
               for text in texts}
    assert not trained & heldout
    assert trained == set(keys) - heldout  # 300 draws over the ~90 training samples reach every one

    captions = read_captions(split.train, holdout_fraction=split.fraction)
    assert sorted(captions) == sorted(f"caption of {k}" for k in set(keys) - heldout)


def test_a_stream_of_only_held_out_samples_is_an_error_not_a_hang(tmp_path):
    keys = write_keyed(tmp_path, n_shards=1, per_shard=40)
    held = [k for k in keys if is_heldout(k, 0.3)]
    folder = tmp_path / "only_held"
    folder.mkdir()
    with tarfile.open(tmp_path / "00000.tar") as src, tarfile.open(folder / "00000.tar", "w") as dst:
        for m in src.getmembers():
            if m.name.split(".")[0] in held:
                dst.addfile(m, src.extractfile(m))
    spec = StreamSpec(shards=[str(folder / "00000.tar")], batch_size=4, batches_per_worker=2, image_size=16,
                      shuffle_buffer=4, holdout_fraction=0.3, max_consecutive_skips=200)
    with pytest.raises(DataError, match="held out for evaluation"):
        next(iter(TrainStream(spec, tokenizer=list)))


@pytest.mark.slow  # trains in a subprocess
def test_a_one_shard_build_trains_with_the_default_holdout_on_two_ranks(tmp_path):
    """No --config, no holdout setting: a one-shard build (any build under 10,000 pairs) trains with 2 gloo ranks,
    both taking every step, and retrieval scores exactly the pairs whose keys are held out."""
    data = tmp_path / "build"
    write_shards(data, n_shards=1, per_shard=200)
    run = tmp_path / "run"
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(ROOT / "trainer" / "train.py"),
           "--data", str(data), "--output", str(run), "--set", "steps=4", "--set", "data.batch_size=16",
           "--set", "data.workers=1", "--set", "tokenizer.vocab_size=300", "--set", "log_every=1",
           "--set", "data.shuffle_buffer=50", "--set", "optim.warmup_steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    with (run / "log.csv").open() as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4]
    held = sum(is_heldout(f"00000{j:04d}", 0.02) for j in range(200))
    assert held == 3
    assert json.loads((run / "eval.json").read_text())["retrieval"]["pairs"] == held
    assert f"retrieval on {held} held-out pairs" in proc.stdout
    assert "2.0% of the samples held out by key" in proc.stderr
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, str(ROOT / "trainer" / "evaluate.py"), "--checkpoint", str(run),
                           "--data", str(data), "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(out.read_text())["retrieval"]["pairs"] == held  # the evaluation script finds the same pairs
