"""Shards the build did not write: img2dataset's own output, webdataset's ShardWriter/TarWriter, GNU tar.

Why: ``--data`` takes any folder of ``*.tar``, so the trainer and the evaluation must read such shards as WebDataset
reads them — the same samples, sizes and held-out split without a ``sizes.json`` — pair every image with its own
caption, and skip and count what cannot be trained on. Each case is checked against an independent reader: Python's
``tarfile`` and WebDataset's grouping rule (a sample is the adjacent members whose path up to the first dot of the
file name is the same).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from tests.conftest import VENV_BIN
from trainer.data import (
    IMAGE_KEYS,
    DataError,
    StreamSpec,
    TrainStream,
    check_captions,
    find_shards,
    iter_pairs,
    read_captions,
    shard_sizes,
)

COLOURS = [(230, 30, 30), (30, 200, 40), (30, 40, 220), (240, 220, 30), (200, 40, 210), (20, 210, 220)]
NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan"]


def picture(i: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, COLOURS[i % len(COLOURS)]).save(buf, fmt)
    return buf.getvalue()


def colour_name(pixels) -> str:
    """The name of the colour nearest to a pixel (the pictures are flat colours, so any pixel will do)."""
    return NAMES[min(range(len(COLOURS)), key=lambda c: sum((a - b) ** 2 for a, b in zip(COLOURS[c], pixels,
                                                                                           strict=True)))]


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def reference_samples(shard: Path, caption_key: str = "txt") -> int:
    """Samples with an image and a caption, read by tarfile alone and grouped by WebDataset's rule."""
    groups: list[dict[str, bytes]] = []
    key = None
    try:
        with tarfile.open(shard, "r|*") as tf:
            for m in tf:
                match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", m.name) if m.isreg() else None
                if not match:
                    continue
                data = tf.extractfile(m).read()  # a member cut short raises here and is not counted
                if match.group(1) != key:
                    key = match.group(1)
                    groups.append({})
                groups[-1].setdefault(match.group(2).lower(), data)
    except (tarfile.TarError, OSError, EOFError):
        pass
    return sum(1 for g in groups if any(k in g for k in IMAGE_KEYS) and caption_key in g)


def gnu_tar(*args: str, cwd: Path) -> None:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    subprocess.run(["tar", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def picture_files(tmp_path) -> Path:
    """Files p000.jpg/p000.txt … and one sample under a 150-character name in a subfolder (a PAX/GNU long name)."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(12):
        (src / f"p{i:03d}.jpg").write_bytes(picture(i))
        (src / f"p{i:03d}.txt").write_text(f"a flat {NAMES[i % len(NAMES)]} picture")
    (src / "sub" / ("L" * 150 + ".jpg")).write_bytes(picture(2))
    (src / "sub" / ("L" * 150 + ".txt")).write_text("a flat blue picture")
    return src


# ---------------------------------------------------------------------------------------------------------------------
# sizes without sizes.json: the samples the stream reads
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_gnu_tar_of_a_folder_is_sized_by_its_samples_not_by_its_dot_slash_prefix(picture_files, tmp_path, fmt):
    """``tar -cf x.tar .`` names every member ``./key.ext``: counted up to the first dot of the path, all of them
    were one sample, and an epoch one step long."""
    shards = tmp_path / "shards"
    shards.mkdir()
    gnu_tar("--sort=name", f"--format={fmt}", "-cf", str(shards / "000.tar"), ".", cwd=picture_files)
    (shards / "001.tar").write_bytes((shards / "000.tar").read_bytes())
    found = find_shards(shards)
    assert shard_sizes(found) == {"000.tar": 13, "001.tar": 13} == {s.name: reference_samples(s) for s in found}
    pairs = list(iter_pairs(found[:1]))
    assert len(pairs) == 13 and all(key.startswith("./") for _, _, key in pairs)
    for data, text, _ in pairs:
        assert colour_name(Image.open(io.BytesIO(data)).convert("RGB").getpixel((3, 3))) in text


def test_shardwriter_shards_with_varied_extensions_and_odd_samples_are_sized_as_read(tmp_path):
    """ShardWriter with .jpg/.jpeg/.JPG/.png/.webp images, .json and .cls beside them; then a tar with keys in
    folders (the same name in two), samples missing their image or caption, and links, which WebDataset does not
    follow: the sizes are the samples with an image and a caption."""
    folder = tmp_path / "sw"
    folder.mkdir()
    exts = [("jpg", "JPEG"), ("jpeg", "JPEG"), ("JPG", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
    with wds.ShardWriter(str(folder / "shard-%04d.tar"), maxcount=10, verbose=0) as sink:
        for i in range(25):
            ext, fmt = exts[i % len(exts)]
            sink.write({"__key__": f"s{i:05d}", ext: picture(i, fmt), "txt": f"a flat {NAMES[i % 6]} picture",
                        "json": {"i": i}, "cls": i % 3})
    odd = [("dir/k0.jpg", picture(0)), ("dir/k0.txt", b"a flat red picture"),
           ("other/k0.jpg", picture(1)), ("other/k0.txt", b"a flat green picture"),
           ("k1.jpg", picture(2)), ("k2.txt", b"no picture"), ("k3.jpg", picture(3)), ("k3.txt", b"a flat yellow"),
           ("__meta__", b"{}")]
    buf = io.BytesIO(tar_bytes(odd))
    with tarfile.open(fileobj=buf, mode="a") as tf:
        link = tarfile.TarInfo("k4.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "k3.jpg"
        tf.addfile(link)
        caption = tarfile.TarInfo("k4.txt")
        caption.size = 5
        tf.addfile(caption, io.BytesIO(b"links"))
    (folder / "shard-9999.tar").write_bytes(buf.getvalue())
    found = find_shards(folder)
    sizes = shard_sizes(found)
    assert sizes == {s.name: reference_samples(s) for s in found}
    assert sizes == {"shard-0000.tar": 10, "shard-0001.tar": 10, "shard-0002.tar": 5, "shard-9999.tar": 3}
    assert sum(sizes.values()) == len(list(iter_pairs(found)))
    assert shard_sizes(found, "cls") == {"shard-0000.tar": 10, "shard-0001.tar": 10, "shard-0002.tar": 5,
                                         "shard-9999.tar": 0}


def test_damaged_and_foreign_files_are_sized_by_what_can_be_read(picture_files, tmp_path):
    """An empty tar, a tar cut short, a gzip-compressed tar named .tar, a text file and an empty file: each counts
    the samples a reader gets from it, and none stops the count of the others."""
    folder = tmp_path / "bad"
    folder.mkdir()
    names = [p.name for p in sorted(picture_files.glob("p*"))]
    gnu_tar("-cf", str(folder / "0_good.tar"), *names[:8], cwd=picture_files)
    gnu_tar("-cf", str(folder / "1_empty.tar"), "--files-from", "/dev/null", cwd=picture_files)
    whole = tar_bytes([(n, (picture_files / n).read_bytes()) for n in names[8:]])
    with tarfile.open(fileobj=io.BytesIO(whole)) as tf:
        cut_in = tf.getmembers()[4]  # p006.jpg, the image of the third sample
    (folder / "2_cut.tar").write_bytes(whole[:cut_in.offset_data + 100])
    (folder / "3_gz.tar").write_bytes(gzip.compress(whole))
    (folder / "4_text.tar").write_text("not a tar\n")
    (folder / "5_zero.tar").write_bytes(b"")
    found = find_shards(folder)
    sizes = shard_sizes(found)
    assert sizes == {s.name: reference_samples(s) for s in found}
    assert sizes == {"0_good.tar": 4, "1_empty.tar": 0, "2_cut.tar": 2, "3_gz.tar": 8, "4_text.tar": 0,
                     "5_zero.tar": 0}
    assert len(list(iter_pairs(found))) == sum(sizes.values())


def test_a_sizes_file_that_is_no_map_of_counts_is_a_clear_error(tmp_path):
    (tmp_path / "000.tar").write_bytes(tar_bytes([("a.jpg", picture(0)), ("a.txt", b"red")]))
    for text in ("{not json", "[1, 2]", '{"000.tar": "many"}'):
        (tmp_path / "sizes.json").write_text(text)
        with pytest.raises(DataError, match=r"sizes\.json is not a map of shard name to sample count"):
            shard_sizes(find_shards(tmp_path))


# ---------------------------------------------------------------------------------------------------------------------
# pairs: never one sample's caption with another's image
# ---------------------------------------------------------------------------------------------------------------------


def cut_then_whole(tmp_path: Path) -> list[Path]:
    """Shard a holds sample 0000 caption first, its image cut short; shard b holds a whole sample of the same key."""
    folder = tmp_path / "cut"
    folder.mkdir()
    a = tar_bytes([("0000.txt", b"a flat red picture"), ("0000.jpg", picture(0, size=(64, 64)))])
    (folder / "a.tar").write_bytes(a[:512 + 512 + 512 + 100])
    (folder / "b.tar").write_bytes(tar_bytes([("0000.jpg", picture(2, size=(64, 64))),
                                              ("0000.txt", b"a flat blue picture")]))
    return [folder / "a.tar", folder / "b.tar"]


def test_a_shard_cut_inside_a_sample_never_lends_its_caption_to_the_next_shard(tmp_path):
    shards = cut_then_whole(tmp_path)
    pairs = [(colour_name(Image.open(io.BytesIO(d)).convert("RGB").getpixel((5, 5))), t) for d, t, _ in
             iter_pairs(shards)]
    assert pairs == [("blue", "a flat blue picture")]
    spec = StreamSpec(shards=[str(s) for s in shards], batch_size=1, batches_per_worker=30, image_size=16,
                      shuffle_buffer=1)
    stream = iter(TrainStream(spec, tokenizer=list))
    skipped: Counter[str] = Counter()
    for _ in range(30):
        images, texts, counts = next(stream)
        skipped.update(counts)
        assert colour_name(images[0, :, 8, 8].tolist()) in texts[0]
    assert skipped["missing_image"] > 0  # shard a's caption alone: skipped and counted


def test_empty_captions_are_skipped_and_counted(tmp_path):
    """Samples whose caption shows no text would all share one text: skipped, and counted. That includes alt texts
    of HTML entities or zero-width characters alone, as other tools' shards hold them (``&nbsp;`` cleans to
    nothing in CLIP's tokenizer)."""
    members = []
    blank = [b"", b"  \n\t", "\u3000".encode(), b"&nbsp;", b"&amp;nbsp; &#8203;", "\u200b\ufeff\u200d".encode()]
    for i, caption in enumerate([*blank, b"a flat cyan picture", b"\xff\xfe cyan \xc3", b"&lt;3"]):
        members += [(f"{i:04d}.jpg", picture(5)), (f"{i:04d}.txt", caption)]
    (tmp_path / "000.tar").write_bytes(tar_bytes(members))
    shards = find_shards(tmp_path)
    assert [key for _, _, key in iter_pairs(shards)] == ["0006", "0007", "0008"]
    spec = StreamSpec(shards=[str(shards[0])], batch_size=3, batches_per_worker=1, image_size=16, shuffle_buffer=1)
    _, texts, skipped = next(iter(TrainStream(spec, tokenizer=list)))
    assert skipped == {"empty_caption": len(blank)} and texts[0] == "a flat cyan picture" and "cyan" in texts[1]
    assert texts[2] == "&lt;3"  # entities stay for the tokenizer to read as its kind does


# ---------------------------------------------------------------------------------------------------------------------
# captions: checked and read by WebDataset's rule
# ---------------------------------------------------------------------------------------------------------------------


def test_dotted_keys_are_refused_naming_the_extensions_webdataset_sees(tmp_path):
    """TarWriter keys with dots (``img.0.v2``): WebDataset reads ``v2.txt`` of sample ``img``, never a caption."""
    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"img.{i}.v2", "jpg": picture(i), "txt": f"a flat {NAMES[i]} picture"})
    shards = find_shards(tmp_path)
    with pytest.raises(DataError, match=r"no captions .*found 0\.v2\.jpg: 1, 0\.v2\.txt: 1.*first dot"):
        check_captions(shards)
    assert shard_sizes(shards) == {"a.tar": 0} and read_captions(shards) == []


def test_upper_case_caption_extensions_are_captions(tmp_path):
    (tmp_path / "000.tar").write_bytes(tar_bytes([("a.JPG", picture(0)), ("a.TXT", b"a flat red picture")]))
    shards = find_shards(tmp_path)
    check_captions(shards)
    assert read_captions(shards) == ["a flat red picture"] and shard_sizes(shards) == {"000.tar": 1}


def test_a_tar_of_scattered_sample_files_is_refused_before_training(picture_files, tmp_path, caplog):
    """``tar -cf x.tar *.jpg *.txt`` puts every image before every caption: WebDataset reads no pair from it."""
    names = sorted(p.name for p in picture_files.glob("p00*"))
    gnu_tar("-cf", str(tmp_path / "000.tar"), *[n for n in names if n.endswith(".jpg")],
            *[n for n in names if n.endswith(".txt")], cwd=picture_files)
    shards = find_shards(tmp_path)
    with pytest.raises(DataError, match=r"no sample .* has both an image and a '\.txt' caption .*adjacent"):
        check_captions(shards)
    assert shard_sizes(shards) == {"000.tar": 0} and "10 sample key(s) come back after other keys" in caplog.text


def type_by_type_shards(picture_files: Path, folder: Path, samples: int, second: str) -> list[Path]:
    """A folder with one tar of ``samples`` pictures written as ``tar -cf x.tar *.jpg *.<second>``: every image,
    then every ``second`` member."""
    files = folder / "files"
    files.mkdir(parents=True)
    jpg = (picture_files / "p000.jpg").read_bytes()
    for i in range(samples):
        (files / f"q{i:03d}.jpg").write_bytes(jpg)
        (files / f"q{i:03d}.{second}").write_text("a flat picture" if second == "txt" else "{}")
    names = sorted(p.name for p in files.iterdir())
    (folder / "shards").mkdir()
    gnu_tar("-cf", str(folder / "shards" / "000.tar"), *[n for n in names if n.endswith(".jpg")],
            *[n for n in names if not n.endswith(".jpg")], cwd=files)
    return find_shards(folder / "shards")


def test_a_scattered_tar_whose_first_members_are_all_images_says_so(picture_files, tmp_path):
    """With more images than the first members looked at, no caption is among them: the error is still that the
    sample files are apart, not that the shard has no captions."""
    with pytest.raises(DataError, match=r"no sample .* has both an image and a '\.txt' caption .*adjacent"):
        check_captions(type_by_type_shards(picture_files, tmp_path, 70, "txt"))


def test_a_tar_written_type_by_type_without_captions_says_there_are_none(picture_files, tmp_path):
    with pytest.raises(DataError, match=r"no captions \('\.txt' members\)"):
        check_captions(type_by_type_shards(picture_files, tmp_path, 3, "json"))


# ---------------------------------------------------------------------------------------------------------------------
# img2dataset's own output
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def served_pictures(tmp_path):
    """Twelve pictures in three formats served over HTTP on 127.0.0.1; a parquet url list with one missing URL."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(www))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    urls, captions = [], []
    for i in range(12):
        ext, fmt = [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")][i % 3]
        (www / f"img{i}.{ext}").write_bytes(picture(i, fmt, (48 + i, 40)))
        urls.append(f"{base}/img{i}.{ext}")
        captions.append(f"a flat {NAMES[i % 6]} picture number {i}")
    urls.append(f"{base}/missing.jpg")
    captions.append("a picture that is not there")
    pq.write_table(pa.table({"url": urls, "caption": captions}), tmp_path / "urls.parquet")
    yield tmp_path / "urls.parquet"
    httpd.shutdown()
    httpd.server_close()


def img2dataset(url_list: Path, out: Path, fmt: str) -> None:
    subprocess.run([str(VENV_BIN / "img2dataset"), f"--url_list={url_list}", "--input_format=parquet",
                    "--url_col=url", "--caption_col=caption", f"--output_format={fmt}", f"--output_folder={out}",
                    "--processes_count=1", "--thread_count=4", "--image_size=32", "--number_sample_per_shard=5",
                    "--distributor=multiprocessing", "--timeout=5", "--retries=0", "--enable_wandb=False"],
                   check=True, capture_output=True, timeout=120, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})


@pytest.mark.slow  # two real img2dataset runs: 10-30 s
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_img2dataset_output_is_read_sample_for_sample(served_pictures, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "wds"
    img2dataset(served_pictures, out, "webdataset")
    shards = find_shards(out)
    meta = [pq.read_table(p).to_pylist() for p in sorted(out.glob("*.parquet"))]
    successes = {f"{i:05d}.tar": sum(r["status"] == "success" for r in rows) for i, rows in enumerate(meta)}
    assert shard_sizes(shards) == successes == {s.name: reference_samples(s) for s in shards}
    assert sum(successes.values()) == 12
    check_captions(shards)
    pairs = list(iter_pairs(shards))
    assert len(pairs) == 12
    for data, text, _ in pairs:
        assert colour_name(Image.open(io.BytesIO(data)).convert("RGB").getpixel((16, 16))) in text  # white border
    files = tmp_path / "files"
    img2dataset(served_pictures, files, "files")
    with pytest.raises(DataError, match=r"no WebDataset shards \(\*\.tar\)"):
        find_shards(files)
    stats_count_only_what_has_metadata(out, successes)


def stats_count_only_what_has_metadata(out: Path, successes: dict[str, int]) -> None:
    """``witbuild stats`` counts img2dataset's samples from its Parquet metadata: true on the output as written;
    a tar whose metadata is gone, or another tool's tar put beside them, is named, not left out without a word."""
    from witbuild.stats import TarCheck, collect_stats

    r = collect_stats(out, tar_check=TarCheck.full)
    assert r["warnings"] == [] and r["totals"]["samples"] == 12 and r["totals"]["shards"] == len(successes)
    (out / "00001.parquet").unlink()
    (out / "other.tar").write_bytes(tar_bytes([("x.jpg", picture(0)), ("x.txt", b"a flat red picture")]))
    r = collect_stats(out, tar_check=TarCheck.full)
    assert r["totals"]["samples"] == 12 - successes["00001.tar"]
    assert [w for w in r["warnings"] if "no Parquet metadata" in w] == [
        f"2 of {len(successes) + 1} tar(s) have no Parquet metadata beside them, so their samples are not counted: "
        "00001.tar, other.tar"]


def test_sizes_json_beside_foreign_shards_is_used_as_given(tmp_path):
    (tmp_path / "000.tar").write_bytes(tar_bytes([("a.jpg", picture(0)), ("a.txt", b"red")]))
    (tmp_path / "sizes.json").write_text(json.dumps({"000.tar": 7}))
    assert shard_sizes(find_shards(tmp_path)) == {"000.tar": 7}


def test_retrieval_on_data_without_pairs_says_it_was_not_scored(tmp_path):
    """``evaluate.py --data`` on shards that give no pair printed nothing about retrieval, and exited 0."""
    from trainer.evaluate import format_results

    with wds.TarWriter(str(tmp_path / "a.tar")) as sink:
        sink.write({"__key__": "img.0.v2", "jpg": picture(0), "txt": "a flat red picture"})
    assert list(iter_pairs(find_shards(tmp_path))) == []
    assert format_results({"retrieval": {"pairs": 0}}) == ("retrieval not scored: 0 usable pair(s) in the scored "
                                                            "samples, at least 2 needed")
