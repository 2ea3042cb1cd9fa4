"""Training data: WebDataset shards read as one sequence per epoch, cut into one share per worker of every rank.

Why shares: each epoch permutes the shards (seeded by seed and epoch, the same on every rank) and gives each
(rank, worker) one contiguous share of the samples, so an epoch reads every training sample once, whatever the
shard count (one shard included) and sizes, and no sample is in two workers' batches of one step. Why a fixed
number of batches per worker: every rank takes the same number of steps whatever the shares hold, so no rank runs
dry and waits forever in an all-reduce; a worker whose share is used up before its last batch reads on into the
next share (an epoch is rounded up to whole rounds of batches, and held-out and unusable samples shorten a share).
Why seeded by (seed, epoch, rank, worker): an epoch's batches do not depend on earlier epochs, so a resumed run sees
exactly the batches an uninterrupted one would. Damaged shards and samples are skipped and counted; the counts
travel with each batch to the training loop.

Retrieval evaluation needs pairs training never saw: either the last whole shards, or a share of
every shard's samples chosen by a stable hash of the sample's key (``Split``), which works on a
build of any size, one shard included.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import math
import random
import re
import tarfile
import unicodedata
import zlib
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from witbuild.layout import IMAGE_EXTS, INDEX_DIR, SIZES_FILE

log = logging.getLogger(__name__)

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)  # CLIP's normalisation
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGE_KEYS = IMAGE_EXTS  # a sample's image member: the first of these extensions it has
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTS)
_META = re.compile(r"__[^/]*__($|/)")  # members WebDataset skips as metadata


class DataError(ValueError):
    """The data cannot be trained on (no shards, no captions); the message says what to fix."""


# ---------------------------------------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------------------------------------


def find_shards(data: str | Path) -> list[Path]:
    """The ``*.tar`` shards of a build output (``stages/finalize/``) or of a folder of shards."""
    root = Path(data)
    if not root.exists():
        raise DataError(f"data not found: {root}")
    final = root / "stages" / "finalize"
    folder = final if final.is_dir() else root
    shards = sorted(folder.glob("*.tar")) if folder.is_dir() else [root] if root.suffix == ".tar" else []
    if not shards:
        raise DataError(f"no WebDataset shards (*.tar) in {folder}; give a build output or a folder of shards")
    return shards


def split_shards(shards: list[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """(train, held-out): the last ``holdout`` shards are kept for retrieval evaluation."""
    if holdout and len(shards) <= holdout:
        raise DataError(f"{len(shards)} shard(s) cannot leave {holdout} held out for evaluation and some to train on; "
                        f"set data.holdout_shards=0 (then data.holdout_fraction of the samples is held out) "
                        f"or build more shards")
    return (shards[:-holdout], shards[-holdout:]) if holdout else (shards, [])


def holdout_share(key: str) -> float:
    """Where a sample's key falls in [0, 1): a keyed digest, not Python's per-process salted ``hash()``, so every
    rank, worker, run and the evaluation script split the same data the same way."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"witbuild-hold").digest()
    return int.from_bytes(digest, "big") / 2**64


def member_key(member: str) -> tuple[str, str] | None:
    """(sample key, lower-cased extension) of a tar member, by WebDataset's own rule: the key is the path up to the
    first dot of the file name (``a.b.jpg`` is key ``a``, extension ``b.jpg``; ``./x.jpg`` is key ``./x``). None for
    a member WebDataset never reads (no dot, a name starting with a dot, ``__meta__`` files). Counting and splitting
    by any other rule would size epochs and held-out shares on samples the stream does not see."""
    if _META.match(member) or ("/" not in member and member.startswith("__") and member.endswith("__")):
        return None
    key, ext = base_plus_ext(member)
    return None if key is None else (key, ext.lower())


def sample_key(member: str) -> str:
    """The sample key of a tar member, as WebDataset groups members (see ``member_key``)."""
    parsed = member_key(member)
    return parsed[0] if parsed else member


def is_heldout(key: str, fraction: float) -> bool:
    """Whether the sample ``key`` is kept out of training (and in retrieval evaluation) at this holdout share."""
    return fraction > 0 and holdout_share(key) < fraction


@dataclass(frozen=True)
class Split:
    """What training and retrieval evaluation read: with ``fraction`` 0 whole shards, else the same shards on both
    sides, each sample on the side its key's hash puts it, so that no sample is both trained on and held out."""

    train: list[Path]
    heldout: list[Path]
    fraction: float = 0.0


def shards_digest(shards: list[Path]) -> str:
    """The shards by name and size in one hash: what a checkpoint records of the shards it trained on, so that a
    resumed run or an evaluation can tell other data from the run's own."""
    names = [(s.name, s.stat().st_size) for s in shards]
    return hashlib.blake2b(json.dumps(names).encode(), digest_size=16).hexdigest()


def split_data(shards: list[Path], holdout_shards: int, holdout_fraction: float) -> Split:
    """The last ``holdout_shards`` shards held out when set, else ``holdout_fraction`` of every shard's samples."""
    if holdout_shards:
        train, heldout = split_shards(shards, holdout_shards)
        return Split(train, heldout)
    if not 0 <= holdout_fraction < 1:
        raise DataError(f"data.holdout_fraction must be in [0, 1), got {holdout_fraction}")
    return Split(shards, shards if holdout_fraction else [], holdout_fraction)


def list_samples(shard: Path) -> tuple[list[tuple[str, set[str]]], int]:
    """The key and extensions of each sample of a shard, in order, grouped as WebDataset groups them (adjacent
    members of one key), and how many keys come back after other keys (such members become separate, incomplete
    samples). A shard damaged part-way keeps the samples before the damage, less the member the damage cut: the
    stream reads those."""
    samples: list[tuple[str, set[str]]] = []
    seen: set[str] = set()
    current, scattered, last, plain = None, 0, None, False
    try:
        size = shard.stat().st_size
        with tarfile.open(shard) as tf:
            plain = isinstance(tf.fileobj, io.BufferedReader)  # not gzip, bz2 or xz: member offsets are file offsets
            for m in tf:
                last = None
                if plain and m.offset_data + m.size > size:
                    raise tarfile.ReadError(f"{m.name} runs past the end of the file")
                parsed = member_key(m.name) if m.isreg() else None
                if parsed is None:
                    continue
                key, ext = parsed
                if key != current:
                    scattered += key in seen
                    seen.add(key)
                    current = key
                    samples.append((key, set()))
                samples[-1][1].add(ext)
                last = ext
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if last is not None and not plain:  # compressed: the member listed before the damage may lack its data
            samples[-1][1].discard(last)
        log.warning("%s is damaged (%s): counted the %d sample(s) before the damage", shard,
                    " ".join(str(exc).split())[:300], sum(1 for _, exts in samples if exts))
    return [(key, exts) for key, exts in samples if exts], scattered


def usable(exts: Collection[str], caption_key: str | None) -> bool:
    """Whether a sample with these extensions has an image and its caption: the ``caption_key`` member, or when the
    caption's extension is not known, some member besides the image (a lone image is never a pair)."""
    image = next((k for k in IMAGE_KEYS if k in exts), None)
    return image is not None and (caption_key in exts if caption_key is not None else len(exts) > 1)


def shard_sizes(shards: list[Path], caption_key: str | None = None) -> dict[str, int]:
    """Samples per shard: from the build's ``sizes.json`` when there, else by listing each tar: the samples with an
    image and a caption (``usable``), grouped by WebDataset's rule, so an epoch is the samples the stream yields.
    Samples split over non-adjacent members are warned about: WebDataset reads them as pieces."""
    sizes: dict[str, int] = {}
    meta = shards[0].parent / SIZES_FILE
    known = read_sizes_file(meta) if meta.is_file() else {}
    for shard in shards:
        if shard.name in known:
            sizes[shard.name] = known[shard.name]
            continue
        samples, scattered = list_samples(shard)
        sizes[shard.name] = sum(usable(exts, caption_key) for _, exts in samples)
        if scattered:
            log.warning("%s: %d sample key(s) come back after other keys; WebDataset reads a sample from adjacent "
                        "members only, so these are read as incomplete pieces and skipped (write each sample's "
                        "files together, e.g. tar --sort=name)", shard, scattered)
    return sizes


def training_sizes(shards: list[Path], caption_key: str, holdout_fraction: float = 0.0) -> dict[str, int]:
    """Training samples per shard: ``shard_sizes``, or with a share held out by key, the usable samples whose key is
    not held out, counted exactly (from the build's index when it lists every shard, else by listing each tar), so
    that an epoch's shares are cut on the samples training reads."""
    if not holdout_fraction:
        return shard_sizes(shards, caption_key)
    index = shards[0].parent / INDEX_DIR
    names = {s.name for s in shards}
    if index.exists():
        import pyarrow.dataset as pads

        table = pads.dataset(index, format="parquet").to_table(columns=["shard", "key"])
        counts: Counter[str] = Counter()
        listed: set[str] = set()
        for shard, key in zip(table["shard"].to_pylist(), table["key"].to_pylist(), strict=True):
            name = Path(str(shard)).name
            listed.add(name)
            counts[name] += not is_heldout(str(key), holdout_fraction)
        if names <= listed:
            return {s.name: counts[s.name] for s in shards}
    return {s.name: sum(usable(exts, caption_key) and not is_heldout(key, holdout_fraction)
                        for key, exts in list_samples(s)[0]) for s in shards}


def read_sizes_file(path: Path) -> dict[str, int]:
    """``sizes.json``: shard name → samples; anything else is an error naming the file, not a traceback."""
    try:
        known = json.loads(path.read_text())
        if not isinstance(known, dict):
            raise ValueError("not an object")
        return {str(k): int(v) for k, v in known.items()}
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a map of shard name to sample count ({exc}); fix or remove it") from None


def check_captions(shards: list[Path], caption_key: str = "txt", members: int = 64) -> None:
    """Fail fast when the first samples carry no captions, or none pairs a caption with an image, instead of a stream
    that never yields a batch. Members are grouped by WebDataset's rule, so the extensions reported are the ones the
    stream sees (``a.b.txt`` is extension ``b.txt`` of key ``a``)."""
    seen: Counter[str] = Counter()
    samples: list[set[str]] = []  # adjacent members of one key, as WebDataset groups them
    for shard in shards[:4]:
        current = None
        try:
            with tarfile.open(shard, "r|*") as tf:
                for i, m in enumerate(tf):
                    if i >= members:
                        break
                    parsed = member_key(m.name) if m.isreg() else None
                    if parsed is None:
                        continue
                    seen[parsed[1]] += 1
                    if parsed[0] != current:
                        current = parsed[0]
                        samples.append(set())
                    samples[-1].add(parsed[1])
        except (tarfile.TarError, OSError, EOFError, zlib.error):
            continue
        if any(usable(exts, caption_key) for exts in samples):
            return
    found = ", ".join(f"{k}: {n}" for k, n in seen.most_common()) or "nothing readable"
    if not seen[caption_key] and not _scattered(shards[0], caption_key):
        raise DataError(f"no captions ('.{caption_key}' members) in the first samples of {shards[0].parent} "
                        f"(found {found}); train on a build's stages/finalize shards or set data.caption_key "
                        f"(a sample's key ends at the first dot of its file name: 'a.b.{caption_key}' is "
                        f"'b.{caption_key}' of sample 'a')")
    raise DataError(f"no sample in the first members of {shards[0].parent} has both an image and a "
                    f"'.{caption_key}' caption (found {found}); WebDataset groups a sample from adjacent members "
                    f"named key.ext: write each sample's files together (e.g. tar --sort=name)")


def _scattered(shard: Path, caption_key: str) -> bool:
    """Whether the shard holds captions, past the first members, but sample keys come back after other keys
    (``tar -cf x.tar *.jpg *.txt``: every image, then every caption): never next to their images."""
    samples, scattered = list_samples(shard)
    return scattered > 0 and any(caption_key in exts for _, exts in samples)


def read_captions(shards: list[Path], caption_key: str = "txt", limit: int = 2_000_000,
                  holdout_fraction: float = 0.0) -> list[str]:
    """The training captions of ``shards`` for fitting the tokenizer (held-out samples' captions left out, so no
    evaluation caption shapes the vocabulary): from the build's index when it has one, else from the tars."""
    index = shards[0].parent / INDEX_DIR
    names = {s.name for s in shards}
    if index.exists():
        import pyarrow.dataset as pads

        table = pads.dataset(index, format="parquet").to_table(columns=["shard", "key", "text"] if holdout_fraction
                                                               else ["shard", "text"])
        keys = table["key"].to_pylist() if holdout_fraction else [""] * table.num_rows
        texts = [t for s, k, t in zip(table["shard"].to_pylist(), keys, table["text"].to_pylist(), strict=True)
                 if Path(str(s)).name in names and t and not is_heldout(str(k), holdout_fraction)]
        if texts:
            return texts[:limit]
    texts = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r|*") as tf:
                for m in tf:
                    parsed = member_key(m.name) if m.isreg() else None
                    if parsed and parsed[1] == caption_key and not is_heldout(parsed[0], holdout_fraction):
                        texts.append(tf.extractfile(m).read().decode("utf-8", "replace"))
                        if len(texts) >= limit:
                            return texts
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            log.warning("skipping the rest of the captions of damaged shard %s: %s", shard, exc)
    return texts


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------


def random_resized_square(img: Image.Image, size: int, rng: random.Random, scale: tuple[float, float] = (0.9, 1.0),
                          ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """Inception-style crop (area share ``scale``, aspect ``ratio``) resized to size×size, as torchvision's
    ``RandomResizedCrop`` (open_clip's training view) draws it. When 10 draws find no box inside the image (at the
    default scale every photo wider than about 3:2 does), the centre at the aspect ``ratio`` allows nearest to the
    image's, resized to the square as it is (torchvision's fallback; the centre square, as this took before, cut a
    quarter of a 4:3 photo's width that open_clip keeps)."""
    w, h = img.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size, size), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))
    cw, ch = w, h
    if w / h < min(ratio):
        ch = round(w / min(ratio))
    elif w / h > max(ratio):
        cw = round(h * max(ratio))
    x, y = (w - cw) // 2, (h - ch) // 2
    return img.resize((size, size), Image.Resampling.BICUBIC, box=(x, y, x + cw, y + ch))


def center_square(img: Image.Image, size: int) -> Image.Image:
    """The evaluation view, pixel for pixel as open_clip's evaluation transform makes it from an RGB image (what
    a build stores; open_clip converts other modes after resizing, we before):
    torchvision's ``Resize(size)`` (the short side to ``size``, the long one to ``int(size * long / short)``,
    bicubic), then ``CenterCrop(size)`` (offsets ``round((side - size) / 2)``). Cropping first and resizing
    the square alone, as this did before, moved the view by a fraction of a pixel on images that are not square
    (a mean 1-3 levels from open_clip's, up to 110 at edges), so scores and evaluations were not open_clip's."""
    w, h = img.size
    rw, rh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if (rw, rh) != (w, h):
        img = img.resize((rw, rh), Image.Resampling.BICUBIC)
    left, top = round((rw - size) / 2.0), round((rh - size) / 2.0)  # Python 3 rounding, as torchvision
    return img.crop((left, top, left + size, top + size)) if (rw, rh) != (size, size) else img


def to_uint8(img: Image.Image) -> torch.Tensor:
    """(3, h, w) uint8: what loader workers send (a quarter of float32's bytes through shared memory)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy())


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (…, 3, h, w) → float, CLIP's mean and std; done on the training device."""
    mean = torch.as_tensor(MEAN, device=images.device).view(3, 1, 1)
    std = torch.as_tensor(STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def to_tensor(img: Image.Image) -> torch.Tensor:
    """The normalised float (3, h, w) tensor of one image (evaluation)."""
    return normalize(to_uint8(img))


def open_rgb(data: bytes, min_side: int = 0) -> Image.Image:
    """Decode to RGB; with ``min_side`` (training) a JPEG is decoded at the smallest DCT scale whose short side is
    still ≥ ``min_side``: faster, but not the pixels a full decode resized gives (a mean 1-4 levels off), so
    evaluation and scoring decode in full."""
    img = Image.open(io.BytesIO(data))
    if min_side and img.format == "JPEG":
        w, h = img.size
        k = min_side / min(w, h)
        if k < 1:
            img.draft("RGB", (math.ceil(w * k), math.ceil(h * k)))
    return img.convert("RGB")


# ---------------------------------------------------------------------------------------------------------------------
# the training stream
# ---------------------------------------------------------------------------------------------------------------------


def pair_parts(sample: dict, caption_key: str) -> tuple[str, str] | str:
    """(image member, caption) of a WebDataset sample, or why it has no pair to train or score on: ``missing_image``,
    ``missing_caption``, or ``empty_caption`` (no visible text: every such sample would share one text)."""
    image = next((k for k in IMAGE_KEYS if k in sample), None)
    if image is None:
        return "missing_image"
    if caption_key not in sample:
        return "missing_caption"
    caption = sample[caption_key].decode("utf-8", "replace")
    return "empty_caption" if blank(caption) else (image, caption)


def blank(caption: str) -> bool:
    """Whether a caption shows no text once its HTML entities are read (twice, as CLIP's cleaning reads them) and
    format characters (zero-width spaces and joiners, direction marks, a byte-order mark) are set aside: other
    tools' shards hold alt texts of ``&nbsp;`` alone, which every tokenizer kind trains as one shared text."""
    text = html.unescape(html.unescape(caption))
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def shard_samples(sources: Iterator[dict], handler) -> Iterator[dict]:
    """WebDataset's samples of each shard, grouped within that shard alone. WebDataset's own pipeline groups across
    shards: a shard that fails part-way ends without its end marker, so its last, unfinished sample took the members
    of the next shard's first sample when the keys were alike (one shard's caption paired with another's image)."""
    for source in sources:
        yield from wds.tarfile_to_samples(handler=handler)(iter([source]))


@dataclass
class StreamSpec:
    shards: list[str]
    batch_size: int
    batches_per_worker: int  # per epoch
    image_size: int
    seed: int = 0
    rank: int = 0
    world: int = 1
    start_epoch: int = 0
    skip_batches: int = 0  # global batches of start_epoch already trained on (resume mid-epoch)
    shuffle_buffer: int = 1000
    caption_key: str = "txt"
    crop_scale: tuple[float, float] = (0.9, 1.0)
    max_consecutive_skips: int = 2000
    holdout_fraction: float = 0.0  # the share of samples (by key) held out for evaluation: never yielded
    sizes: list[int] | None = None  # training samples of each shard (``training_sizes``): where shares are cut

    def __post_init__(self) -> None:
        if self.sizes is None:
            found = training_sizes([Path(s) for s in self.shards], self.caption_key, self.holdout_fraction)
            self.sizes = [found[Path(s).name] for s in self.shards]


class TrainStream(IterableDataset):
    """Yields (uint8 images, tokens, skipped-counts) batches; one instance per rank, split across workers."""

    def __init__(self, spec: StreamSpec, tokenizer):
        super().__init__()
        self.spec, self.tokenizer = spec, tokenizer

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        spec = self.spec
        epoch = spec.start_epoch
        # global batch i of an epoch comes from worker i % nworkers (the DataLoader reads workers in turn, always
        # starting at worker 0): each worker skips whole rounds, train_batches drops the rest of a round
        skip = spec.skip_batches // nworkers
        slot, slots = spec.rank * nworkers + wid, spec.world * nworkers
        while True:
            rng = random.Random(f"{spec.seed}/{epoch}/{spec.rank}/{wid}")
            order = epoch_order(len(spec.shards), spec.seed, epoch)
            sizes = [spec.sizes[i] for i in order]  # type: ignore[index]
            total = sum(sizes)
            share = (share_start(total, slots, slot), share_start(total, slots, slot + 1))
            batches = self._epoch_batches(rng, [spec.shards[i] for i in order], sizes, share)
            for i in range(spec.batches_per_worker):
                batch = next(batches)
                if i < skip:
                    continue
                yield batch
            skip, epoch = 0, epoch + 1

    def _epoch_batches(self, rng: random.Random, shards: list[str], sizes: list[int],
                       share: tuple[int, int]) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, int]]]:
        spec = self.spec
        skipped: Counter[str] = Counter()
        failures = [0]  # shard-level failures since the last usable sample

        def count(exn: Exception) -> bool:
            kind = "corrupt_tar" if isinstance(exn, tarfile.TarError) else type(exn).__name__
            skipped[kind] += 1
            failures[0] += 1
            if failures[0] >= spec.max_consecutive_skips:
                raise DataError(f"{failures[0]} shard reads in a row failed ({dict(skipped)}); last: {exn}")
            log.warning("skipped (%s): %s", kind, str(exn)[:300])
            return True

        source = self._share_samples(shards, sizes, share, rng, count)
        images, texts, consecutive = [], [], 0
        ahead: deque[dict] = deque()  # samples put off from the last batch, which already held them
        deferred: list[dict] = []
        in_batch: set[tuple[str, str]] = set()
        while True:
            sample = ahead.popleft() if ahead else next(source)
            ident = (sample.get("__url__", ""), sample.get("__key__", ""))
            if ident in in_batch and len(deferred) < spec.batch_size:
                deferred.append(sample)
                continue
            parts = pair_parts(sample, spec.caption_key)
            if isinstance(parts, str):
                skipped[parts] += 1
                consecutive += 1
            else:
                try:
                    img = open_rgb(sample[parts[0]], spec.image_size)
                    img = random_resized_square(img, spec.image_size, rng, spec.crop_scale)
                    images.append(to_uint8(img))
                    texts.append(parts[1])
                    in_batch.add(ident)
                    consecutive = failures[0] = 0
                except Exception as exc:
                    skipped["undecodable_image"] += 1
                    consecutive += 1
                    log.warning("skipped undecodable image %s: %s", sample.get("__key__"), exc)
            if consecutive >= spec.max_consecutive_skips:
                raise DataError(f"{consecutive} samples in a row were unusable ({dict(skipped)}); "
                                f"check the shards' '.{spec.caption_key}' captions and images")
            if len(images) == spec.batch_size:
                yield torch.stack(images), self.tokenizer(texts), dict(skipped)
                images, texts = [], []
                skipped.clear()
                in_batch.clear()
                ahead.extend(deferred)
                deferred.clear()

    def _share_samples(self, shards: list[str], sizes: list[int], share: tuple[int, int], rng: random.Random,
                       handler: Callable[[Exception], bool]) -> Iterator[dict]:
        """The worker's share of the epoch through a shuffle buffer emptied before anything else is read, so no
        sample of it is left behind in the buffer; then the share again, as long as batches are asked for (no other
        worker reads it, so no step holds one sample from two workers); a share with nothing in it reads on past its
        end."""
        spec = self.spec
        shuffle = wds.shuffle(spec.shuffle_buffer, initial=min(spec.shuffle_buffer, 100), rng=rng)

        def share_once() -> Iterator[dict]:
            return shuffle(read_positions(shards, sizes, share[0], share[1], spec.caption_key, handler,
                                          spec.holdout_fraction))

        yield from share_once()
        found = share[1] > share[0]
        while found:
            found = False
            for sample in share_once():
                found = True
                yield sample
        yield from shuffle(samples_from(shards, sizes, share[1], spec.caption_key, handler, spec.holdout_fraction))


def epoch_order(shards: int, seed: int, epoch: int) -> list[int]:
    """The shards' order in an epoch: one seeded permutation, the same on every rank and worker."""
    order = list(range(shards))
    random.Random(f"{seed}/{epoch}/shards").shuffle(order)
    return order


def share_start(total: int, slots: int, slot: int) -> int:
    """Where worker ``slot`` of ``slots`` (all ranks' workers) starts in an epoch's sequence of ``total`` samples:
    the shares are as equal as whole samples allow and follow one another."""
    return total * slot // slots


def read_positions(shards: list[str], sizes: list[int], start: int, stop: int | None, caption_key: str,
                   handler: Callable[[Exception], bool], holdout_fraction: float = 0.0) -> Iterator[dict]:
    """The training samples at positions [start, stop) of the sequence ``shards`` (``stop`` None: to its end),
    counting the training samples ``sizes`` says each shard has (``training_sizes``); held-out samples are passed
    over, and one without an image or a caption goes with the next training sample. A shard the range reaches the
    end of is read to its real end, so one holding more samples than its size says loses none; one holding fewer
    ends the range sooner."""
    lo, end = 0, sum(sizes) if stop is None else stop
    last = end == sum(sizes)  # shards without training samples at the very end go with the last share
    for shard, n in zip(shards, sizes, strict=True):
        hi, begin = lo + n, lo
        lo = hi
        if begin > end or (begin == end and (n or not last)):
            break
        if not (start <= begin if n == 0 else hi > start):
            continue
        skip, limit = max(0, start - begin), stop - begin if stop is not None and stop < hi else None
        seen = 0  # training samples of this shard so far: the position, in the shard, of the next one
        for sample in shard_samples(iter([{"url": shard}]), handler):
            if limit is not None and seen >= limit:
                break
            if is_heldout(sample["__key__"], holdout_fraction):
                continue
            if seen >= skip:
                yield sample
            seen += usable(sample.keys(), caption_key)  # counted as shard_sizes counts


def samples_from(shards: list[str], sizes: list[int], start: int, caption_key: str,
                 handler: Callable[[Exception], bool], holdout_fraction: float = 0.0) -> Iterator[dict]:
    """The training samples of the sequence ``shards`` from position ``start`` on, endlessly: after the last shard,
    the first comes again."""
    yield from read_positions(shards, sizes, start, None, caption_key, handler, holdout_fraction)
    while True:
        found = False
        for sample in read_positions(shards, sizes, 0, None, caption_key, handler, holdout_fraction):
            found = True
            yield sample
        if not found:
            held = (f": none that is not held out for evaluation (data.holdout_fraction={holdout_fraction}); lower it "
                    "or give more data" if holdout_fraction else "")
            raise DataError(f"no training samples in the {len(shards)} training shard(s) (first: {shards[0]}){held}")


def train_batches(spec: StreamSpec, tokenizer, workers: int,
                  pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """The rank's endless batch stream, starting exactly at global batch ``spec.skip_batches`` of its epoch."""
    loader = DataLoader(TrainStream(spec, tokenizer), batch_size=None, num_workers=workers,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None, pin_memory=pin_memory)
    it = iter(loader)
    for _ in range(spec.skip_batches % max(1, workers)):
        next(it)
    yield from it


def to_device_ahead(batches: Iterator[tuple[torch.Tensor, torch.Tensor, dict]],
                    device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """The batches on ``device``, each copied one batch ahead on a side stream, so that the copy of batch n + 1 runs
    while step n computes rather than at the head of step n + 1 (a batch of 512 images of 224 px is 77 MB of
    pixels). Off CUDA the batches pass through: the step copies them, and there is nothing to overlap."""
    if device.type != "cuda":
        yield from batches
        return
    stream = torch.cuda.Stream(device)

    def issue(batch: tuple[torch.Tensor, torch.Tensor, dict]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        images, tokens, skipped = batch
        with torch.cuda.stream(stream):  # pinned host memory: the copies return at once
            return images.to(device, non_blocking=True), tokens.to(device, non_blocking=True), skipped

    batch = next(batches, None)
    pending = issue(batch) if batch is not None else None
    while pending is not None:
        batch = next(batches, None)  # batch n + 1 from the loader before step n is enqueued: its copy overlaps step n
        current = torch.cuda.current_stream(device)
        current.wait_stream(stream)  # the step that uses batch n waits for its copy, on the device, not the host
        images, tokens, skipped = pending
        images.record_stream(current)  # allocated on the side stream, used and freed on the step's stream
        tokens.record_stream(current)
        pending = issue(batch) if batch is not None else None
        yield images, tokens, skipped


def epoch_steps(train_samples: int, global_batch: int, workers: int) -> int:
    """Steps per epoch: one pass worth of samples, rounded up so every worker yields the same count."""
    steps = max(1, math.ceil(train_samples / global_batch))
    per = max(1, workers)
    return math.ceil(steps / per) * per


# ---------------------------------------------------------------------------------------------------------------------
# evaluation data
# ---------------------------------------------------------------------------------------------------------------------


def iter_pairs(shards: list[Path], caption_key: str = "txt",
               holdout_fraction: float = 0.0) -> Iterator[tuple[bytes, str, str]]:
    """(image bytes, caption, key) of every usable sample of ``shards``, in order; damage is logged and skipped.
    With ``holdout_fraction`` only the held-out samples (the ones training leaves out)."""
    def warn(exn: Exception) -> bool:
        log.warning("evaluation data: skipped %s", str(exn)[:300])
        return True

    skipped: Counter[str] = Counter()
    try:
        for sample in shard_samples(({"url": str(s)} for s in shards), warn):
            if holdout_fraction and not is_heldout(sample["__key__"], holdout_fraction):
                continue
            parts = pair_parts(sample, caption_key)
            if isinstance(parts, str):
                skipped[parts] += 1
            else:
                yield sample[parts[0]], parts[1], sample["__key__"]
    finally:
        if skipped:
            log.warning("evaluation data: skipped %d sample(s) without a usable pair: %s", sum(skipped.values()),
                        dict(skipped))


def image_folder(root: str | Path) -> tuple[list[Path], list[str], list[int]]:
    """A labelled folder ``root/<class>/<image>``: (paths, class folder names, label per path)."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    paths, labels = [], []
    for i, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(p)
                labels.append(i)
    if not paths:
        raise DataError(f"no images under {root}/<class>/")
    return paths, classes, labels
