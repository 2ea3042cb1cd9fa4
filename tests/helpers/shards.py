"""Small WebDataset shards in the layout the build writes (``key.jpg``, ``key.txt``, ``key.json``)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from witbuild.demo.images import digit_image, digit_label, encode

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_caption(index: int) -> str:
    label = digit_label(index)
    forms = (f"a handwritten digit {WORDS[label]}", f"the number {label} written by hand",
             f"scan of a handwritten {WORDS[label]} on paper")
    return forms[index % len(forms)]


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, n_shards: int, per_shard: int, *, captions: bool = True, size: int = 64,
                 first_index: int = 0) -> list[Path]:
    """Digit image-caption shards 00000.tar …, plus sizes.json as a build's finalize stage writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, sizes, index = [], {}, first_index
    for s in range(n_shards):
        path = folder / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tf:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                _add(tf, f"{key}.jpg", encode(digit_image(index % 1797, (size, size)), "jpg", 90))
                if captions:
                    _add(tf, f"{key}.txt", digit_caption(index % 1797).encode())
                _add(tf, f"{key}.json", json.dumps({"key": key, "label": digit_label(index % 1797)}).encode())
                index += 1
        paths.append(path)
        sizes[path.name] = per_shard
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return paths
