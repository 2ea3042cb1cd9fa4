"""What the training stream reads in an epoch: every training sample, one share per worker of every rank.

Before shares, each worker drew shards with replacement and read each from its start every epoch, so a build of one
shard (any build under ``download.number_sample_per_shard`` rows) never trained on the back 40-64% of its samples,
and most global batches held one pair twice (a positive scored as its own negative)."""

from __future__ import annotations

import io
import random
import tarfile
from collections import Counter
from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from trainer.data import StreamSpec, epoch_steps, random_resized_square, samples_from, train_batches, training_sizes


def write_shards(folder: Path, sizes: list[int]) -> list[Path]:
    """Shards whose captions are the sample keys, so a batch says which samples it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (120, 30, 200)).save(buf, "JPEG")
    paths = []
    for s, n in enumerate(sizes):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for i in range(n):
                key = f"s{s}_{i:04d}"
                for ext, data in (("jpg", buf.getvalue()), ("txt", key.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def epoch_batches(shards: list[Path], world: int, workers: int, batch: int, epochs: int = 1,
                  holdout: float = 0.0) -> tuple[list[list[str]], int]:
    """The global batches (every rank's texts of each step) of ``epochs`` epochs, as the trainer builds its streams."""
    sizes = training_sizes(shards, "txt", holdout)
    spe = epoch_steps(sum(sizes.values()), batch * world, workers)
    per_rank = []
    for rank in range(world):
        spec = StreamSpec(shards=[str(s) for s in shards], sizes=[sizes[s.name] for s in shards], batch_size=batch,
                          batches_per_worker=spe // max(1, workers), image_size=8, seed=3, rank=rank, world=world,
                          shuffle_buffer=40, holdout_fraction=holdout)
        per_rank.append([texts for _, texts, _ in islice(train_batches(spec, list, workers), spe * epochs)])
    return [[k for r in per_rank for k in r[i]] for i in range(spe * epochs)], spe


@pytest.mark.parametrize(("world", "workers"), [(1, 0), (2, 2), (3, 1)])
def test_one_shard_is_read_whole_in_every_epoch(tmp_path, world, workers):
    shards = write_shards(tmp_path, [300])
    steps, spe = epoch_batches(shards, world, workers, batch=8, epochs=2)
    keys = {f"s0_{i:04d}" for i in range(300)}
    for e in range(2):
        seen = Counter(k for b in steps[e * spe:(e + 1) * spe] for k in b)
        assert set(seen) == keys, f"epoch {e}: {len(keys - set(seen))} samples never read"
        # an epoch rounds up to whole rounds of workers' batches: that overflow, and nothing more, is read twice
        assert sum(seen.values()) - len(keys) == spe * 8 * world - 300
    assert all(len(set(b)) == len(b) for b in steps), "a global batch holds one sample twice"


def test_uneven_shards_give_every_sample_once_an_epoch(tmp_path):
    sizes = [1, 13, 200, 3, 57, 0, 90]
    shards = write_shards(tmp_path, sizes)
    keys = {f"s{s}_{i:04d}" for s, n in enumerate(sizes) for i in range(n)}
    for world, workers in ((1, 1), (2, 0), (2, 3), (3, 2)):
        steps, spe = epoch_batches(shards, world, workers, batch=6)
        seen = Counter(k for b in steps for k in b)
        assert set(seen) == keys, (world, workers, len(keys - set(seen)))
        assert sum(seen.values()) - len(keys) == spe * 6 * world - len(keys)
        assert all(len(set(b)) == len(b) for b in steps), (world, workers)


def test_held_out_samples_are_never_read_and_the_rest_are(tmp_path):
    from trainer.data import is_heldout

    shards = write_shards(tmp_path, [150, 150])
    steps, spe = epoch_batches(shards, 2, 1, batch=8, holdout=0.2)
    train = {f"s{s}_{i:04d}" for s in range(2) for i in range(150) if not is_heldout(f"s{s}_{i:04d}", 0.2)}
    assert training_sizes(shards, "txt", 0.2) == {"00000.tar": 119, "00001.tar": 128}
    seen = Counter(k for b in steps for k in b)
    assert set(seen) == train and sum(seen.values()) - len(train) == spe * 16 - len(train)


def test_each_epoch_orders_the_data_anew_and_the_same_seed_repeats_it(tmp_path):
    shards = write_shards(tmp_path, [40, 40, 40, 40])
    a, spe = epoch_batches(shards, 2, 1, batch=8, epochs=2)
    b, _ = epoch_batches(shards, 2, 1, batch=8, epochs=2)
    assert a == b
    assert a[:spe] != a[spe:]


def test_a_share_may_start_inside_a_shard_and_runs_on_past_the_last(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path, [5, 0, 4])]
    got = [s["txt"].decode() for s in islice(samples_from(shards, [5, 0, 4], 3, "txt", lambda e: True), 9)]
    assert got == ["s0_0003", "s0_0004", "s2_0000", "s2_0001", "s2_0002", "s2_0003", "s0_0000", "s0_0001", "s0_0002"]
    starts_in_third = [s["txt"].decode() for s in islice(samples_from(shards, [5, 0, 4], 6, "txt", lambda e: True), 2)]
    assert starts_in_third == ["s2_0001", "s2_0002"]


def test_a_shard_with_more_samples_than_its_size_says_loses_none(tmp_path):
    shards = [str(p) for p in write_shards(tmp_path, [6, 3])]
    got = [s["txt"].decode() for s in islice(samples_from(shards, [4, 3], 0, "txt", lambda e: True), 9)]
    assert got[:6] == [f"s0_{i:04d}" for i in range(6)] and got[6:] == ["s1_0000", "s1_0001", "s1_0002"]


def test_shards_without_samples_are_an_error_not_a_hang(tmp_path):
    from trainer.data import DataError

    shards = [str(p) for p in write_shards(tmp_path, [0, 0])]
    with pytest.raises(DataError, match="no training samples in the 2 training shard"):
        next(samples_from(shards, [0, 0], 0, "txt", lambda e: True))


@pytest.mark.parametrize(("size", "box"), [((300, 200), (16, 0, 283, 200)),  # 3:2 → its 4:3 centre
                                           ((100, 400), (0, 133, 100, 266)),  # 1:4 → its 3:4 centre
                                           ((64, 60), None)])  # fits: a random box
def test_the_crop_falls_back_as_torchvision_does(size, box):
    """torchvision's ``RandomResizedCrop``: when no draw fits, the centre at the nearest allowed aspect, resized
    to the square as it is (``int(round(h * 4/3))`` wide, offsets ``(W - w) // 2``)."""
    img = Image.effect_noise(size, 60).convert("RGB")
    got = random_resized_square(img, 32, random.Random(0), (0.9, 1.0))
    if box is None:
        assert got.size == (32, 32)
        return
    want = img.resize((32, 32), Image.Resampling.BICUBIC, box=box)
    assert got.tobytes() == want.tobytes()


def test_a_resume_says_when_the_shares_or_the_stream_differ(caplog):
    """Another worker count cuts other shares; a checkpoint of the earlier stream saw other batches. Both go on, and
    say so."""
    from trainer.train import warn_if_data_changed

    now = {"shards": 3, "shards_digest": "d", "steps_per_epoch": 10, "workers": 2}
    with caplog.at_level("WARNING", logger="trainer"):
        warn_if_data_changed(dict(now), now)
        assert caplog.text == ""
        warn_if_data_changed({**now, "workers": 1}, now)
        assert "data.workers 1 → 2" in caplog.text
        caplog.clear()
        warn_if_data_changed({k: v for k, v in now.items() if k != "workers"}, now)
        assert "earlier data stream" in caplog.text
