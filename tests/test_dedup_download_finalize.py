"""Stages dedup, download (img2dataset, pyspark distributor) and finalize, against images served on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from witbuild import layout, schemas
from witbuild.config import load_config
from witbuild.counters import StageCounts
from witbuild.demo.images import FAULT_EXPECT, FAULTS, ImageServer, encode, skimage_image
from witbuild.extract import uid_of
from witbuild.pipeline import COUNTS_FILE, run_build
from witbuild.stages.finalize import ATTEMPT_MARK

pytestmark = [pytest.mark.slow, pytest.mark.spark]

DISTINCT = ["astronaut", "chelsea", "coffee", "rocket", "camera"]


def pair(url: str, text: str) -> dict:
    return {"uid": uid_of(url, text), "url": url, "text": text, "text_source": "alt", "url_source": "src",
            "page_url": "http://127.0.0.1/page.html", "page_lang": "en", "source_file": "test.warc.gz",
            "source_format": "warc", "record_offset": 0, "crawl_date": None, "lang": "en", "lang_score": 0.9,
            "matched": [1], "keep_probability": 1.0}


@pytest.fixture(scope="module")
def server():
    # A 5 s read timeout: at 2 s, valid images failed as timeouts in 2 of 4 runs on a 2-core machine at load ~10.
    # The stall (20 s) and the drip's total (7 s, 0.5 s gaps) stay longer than it, so both still test what they say.
    with ImageServer(stall_s=20.0, drip_s=7.0) as srv:
        for name in DISTINCT:
            srv.add(f"/img/{name}.jpg", encode(skimage_image(name), "jpg", 92), "image/jpeg")
        astro = skimage_image("astronaut")
        # planted duplicates: the same bytes under another URL, and a resized, re-encoded copy
        srv.add("/img/astronaut-mirror.jpg", encode(astro, "jpg", 92), "image/jpeg")
        small = astro.resize((300, 300), Image.LANCZOS)
        srv.add("/img/astronaut-small.jpg", encode(small, "jpg", 70), "image/jpeg")
        srv.add("/img/coffee.png", encode(skimage_image("coffee"), "png"), "image/png")
        yield srv


def seed_balanced(out, rows: list[dict]) -> None:
    """A finished balance stage, so that the build starts at dedup."""
    stage = out / "stages" / "balance"
    stage.mkdir(parents=True)
    pq.write_table(schemas.load("balanced").table({k: [r[k] for r in rows] for k in rows[0]}), stage / "part-0.parquet")
    (stage / "_SUCCESS").touch()
    (stage / COUNTS_FILE).write_text(json.dumps(StageCounts(rows_in=len(rows), rows_out=len(rows)).to_dict()))
    for name in ("extract", "filter", "match"):
        (out / "stages" / name).mkdir()
        (out / "stages" / name / "_SUCCESS").touch()
        (out / "stages" / name / COUNTS_FILE).write_text(json.dumps(StageCounts().to_dict()))


def tar_samples(path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def built(spark, server, tmp_path_factory):
    out = tmp_path_factory.mktemp("dl") / "out"
    rows = [pair(server.url(f"/img/{n}.jpg"), f"a photo of the {n} sample image") for n in DISTINCT]
    rows += [
        pair(server.url("/img/astronaut-mirror.jpg"), "the same astronaut photo at another address"),
        pair(server.url("/img/astronaut-small.jpg"), "a smaller copy of the astronaut photo"),
        pair(server.url("/img/coffee.png"), "a cup of coffee saved as png"),
        # exact pair duplicates: the same URL (in another spelling) and the same text
        pair(server.url("/img/chelsea.jpg").replace("http://", "HTTP://") + "#top",
             "a photo of the chelsea sample image"),
        pair(server.url("/img/chelsea.jpg"), "a photo of the chelsea sample image"),
        # the same image with a second, distinct text: one_text_per_image is off, but exact_image is on, so the URL
        # is fetched once, with the text first in the shuffled order (the sample finalize would keep)
        pair(server.url("/img/rocket.jpg"), "a rocket on the launch pad"),
    ]
    rows += [pair(server.url(path), f"fault image {path}") for path in FAULTS]
    seed_balanced(out, rows)
    cfg = load_config(inputs=["unused.warc.gz"], output=str(out), sets=[
        "download.timeout=5", "download.retries=0", "download.number_sample_per_shard=6",
        "download.thread_count=8", "download.image_size=128", "download.max_aspect_ratio=10",
        "download.min_image_size=100", "network.allow_addresses=['127.0.0.1']"])
    results = {r.name: r for r in run_build(spark, cfg)}
    return out, cfg, results, rows


def test_dedup_layers_and_shuffle(spark, built):
    from pyspark.sql import functions as F

    out, cfg, results, rows = built
    c = results["dedup"].counts
    assert c.rows_in == len(rows)
    assert c.dropped == {"duplicate_url_text": 2, "repeated_url": 1}
    assert c.info["fetch_url_once"] is True
    kept = pq.read_table(out / "stages" / "dedup").to_pylist()
    assert len(kept) == len(rows) - 3 and len({r["uid"] for r in kept}) == len(kept)
    rockets = [r["uid"] for r in rows if r["url"].endswith("/rocket.jpg")]
    order = spark.createDataFrame([(u,) for u in rockets], ["uid"]).select(
        "uid", F.xxhash64("uid", F.lit(cfg.dedup.shuffle_seed)).alias("h")).collect()
    first = min(order, key=lambda r: (r["h"], r["uid"]))["uid"]
    assert [r["uid"] for r in kept if r["url"].endswith("/rocket.jpg")] == [first]
    assert [r["uid"] for r in kept] != sorted(r["uid"] for r in kept)  # shuffled, not in uid order


def test_every_fault_is_a_failed_row_with_its_reason(built):
    out, _, results, _ = built
    meta = [r for p in sorted((out / "stages" / "download").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    by_path = {"/" + r["url"].split("/", 3)[3]: r for r in meta}
    for path, expected in FAULT_EXPECT.items():
        row = by_path[path]
        assert row["status"] == expected, (path, row["error_message"])
        if expected != "success":
            assert row["error_message"], path
    c = results["download"].counts
    assert c.rows_in == len(meta)
    assert c.rows_out == sum(r["status"] == "success" for r in meta)
    assert "unknown" not in c.dropped and c.dropped.get("other", 0) == 0, c.dropped
    for tar in (out / "stages" / "download").glob("*.tar"):  # no partial tar
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                assert len(t.extractfile(m).read()) == m.size


def test_final_shards_index_and_sizes_agree(built):
    out, _, results, _ = built
    final = out / "stages" / "finalize"
    sizes = json.loads((final / "sizes.json").read_text())
    index = pq.read_table(final / "index.parquet").to_pylist()
    tar_keys = {}
    for tar in sorted(final.glob("*.tar")):
        samples = tar_samples(tar)
        assert sizes[tar.name] == len(samples)
        for key, files in samples.items():
            assert {"jpg", "txt", "json"} <= set(files), key
            tar_keys[key] = (tar.name, files["txt"].decode())
    assert sorted(sizes) == sorted(t.name for t in final.glob("*.tar"))
    assert sorted(tar_keys) == sorted(r["key"] for r in index)
    for r in index:
        assert tar_keys[r["key"]] == (r["shard"], r["text"])
        assert len(r["phash"]) == 16 and len(r["sha256"]) == 64
    c = results["finalize"].counts
    assert c.rows_out == len(index) == sum(sizes.values())
    # each tar was written under a name of its task attempt and renamed: none of those names is left or listed
    listed = json.loads((final / layout.FILES_FILE).read_text())
    assert not [n for n in (*listed, *os.listdir(final)) if ATTEMPT_MARK in n]
    assert {n: s for n, s in listed.items() if n.endswith(".tar")} == {
        t.name: t.stat().st_size for t in final.glob("*.tar")}


def test_planted_duplicates_removed_distinct_kept(built):
    out, _, results, _ = built
    name = lambda url: url.rsplit("/", 1)[1].split("#")[0]  # noqa: E731
    meta = [r for p in sorted((out / "stages" / "download").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]
    ok = [r for r in meta if r["status"] == "success"]
    # downloaded, by hand: the 5 distinct photos, the mirror, the small copy, coffee.png and
    # the 4 faults that decode (cmyk, animated, alpha, drip)
    assert sorted(name(r["url"]) for r in ok) == sorted(
        [f"{n}.jpg" for n in DISTINCT] + ["astronaut-mirror.jpg", "astronaut-small.jpg", "coffee.png",
                                          "cmyk.jpg", "animated.gif", "alpha.png", "drip.jpg"])
    # one picture each, by hand: astronaut and its mirror are the same bytes; astronaut-small and coffee.png are
    # near copies. Each group keeps the
    # sample with the smallest key (the download's keys follow the seeded shuffle).
    groups = [{"astronaut.jpg", "astronaut-mirror.jpg", "astronaut-small.jpg"}, {"coffee.jpg", "coffee.png"}]
    survivors = {min((r["key"], name(r["url"]), r["caption"]) for r in ok if name(r["url"]) in g) for g in groups}
    survivors |= {(r["key"], name(r["url"]), r["caption"]) for r in ok if not any(name(r["url"]) in g for g in groups)}
    index = pq.read_table(out / "stages" / "finalize" / "index.parquet").to_pylist()
    assert sorted((r["key"], name(r["url"]), r["text"]) for r in index) == sorted(survivors)
    assert len(index) == 12 - 3
    c = results["finalize"].counts
    assert (c.rows_in, c.rows_out) == (12, 9)
    assert c.dropped == {"duplicate_image_sha256": 1, "near_duplicate_phash": 2}
    # each near-duplicate removal is recorded with the kept sample it duplicates, a picture of its own group
    record = pq.read_table(out / "stages" / "finalize" / "near_duplicates.parquet").to_pylist()
    kept_keys = {r["key"] for r in index}
    assert len(record) == 2
    for r in record:
        assert r["key"] not in kept_keys and r["duplicate_of"] in kept_keys, r
        assert any({name(r["url"]), name(r["duplicate_of_url"])} <= g for g in groups), r
        assert r["phash_distance"] <= 4 and r["colour_mean"] <= 5.0 and r["colour_tail"] <= 20.0, r
        assert (out / "stages" / "download" / r["shard"]).is_file()


def test_shards_decode_with_webdataset_and_a_torch_dataloader(built):
    import torch
    import webdataset as wds

    out, _, _, _ = built
    final = out / "stages" / "finalize"
    urls = [str(p) for p in sorted(final.glob("*.tar"))]
    n = json.loads((final / "sizes.json").read_text())
    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "txt")
    samples = list(ds)
    assert len(samples) == sum(n.values())
    assert all(isinstance(img, Image.Image) and text for img, text in samples)

    def to_tensor(sample):
        img, text = sample
        return torch.from_numpy(__import__("numpy").asarray(img.convert("RGB").resize((32, 32)))), text

    ds2 = (wds.WebDataset(urls, shardshuffle=False, empty_check=False, nodesplitter=wds.split_by_node)
           .decode("pil").to_tuple("jpg", "txt").map(to_tensor))
    loader = torch.utils.data.DataLoader(ds2, batch_size=2, num_workers=2)
    seen = sum(len(texts) for _, texts in loader)
    assert seen == sum(n.values())  # each shard read by one worker, every sample once


def test_killed_download_resumes_without_losing_or_repeating(spark, built, server, tmp_path):
    out, cfg, _, _ = built
    final_before = pq.read_table(out / "stages" / "finalize" / "index.parquet").to_pylist()
    other = tmp_path / "resumed"
    shutil.copytree(out / "stages", other / "stages", ignore=shutil.ignore_patterns("finalize"))
    # the state a kill mid-download leaves: the stage unfinished in its temporary folder, one shard
    # with a cut tar and no stats file
    tmp = other / "stages" / "_tmp" / "download"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    (other / "stages" / "download").rename(tmp)
    (tmp / "_SUCCESS").unlink(missing_ok=True)
    (tmp / COUNTS_FILE).unlink()
    # the fingerprint a killed attempt leaves beside its temporary folder (a config change would start over)
    (tmp / layout.FINGERPRINT_FILE).rename(layout.stage_resume_fingerprint(str(other), "download"))
    (tmp / "00001_stats.json").unlink()
    data = (tmp / "00001.tar").read_bytes()
    (tmp / "00001.tar").write_bytes(data[: len(data) // 2])
    # and shard 2 killed while its stats file was being written: a JSON cut short
    stats2 = (tmp / "00002_stats.json").read_text()
    (tmp / "00002_stats.json").write_text(stats2[: len(stats2) // 2])
    before = len(server.requests)
    cfg2 = cfg.model_copy(update={"output": str(other)})
    results = run_build(spark, cfg2)
    assert [r.skipped for r in results] == [True] * 5 + [False, False]
    # robots.txt may be asked again: a redirect's target has its robots.txt asked once per Python worker
    # (witbuild.download._HOP_ANSWERS), and Spark ends a worker idle for a minute (the tests before this one, on a
    # loaded machine); only the images asked again say what the resume redid
    refetched = {r.path for r in server.requests[before:]} - {"/robots.txt"}
    shard1 = [u for n in ("00001", "00002")
              for u in pq.read_table(other / "stages" / "download" / f"{n}.parquet").column("url").to_pylist()]
    shard2 = pq.read_table(other / "stages" / "download" / "00002.parquet").column("url").to_pylist()
    assert refetched & {"/" + u.split("/", 3)[3].split("#")[0] for u in shard2}  # the damaged shard was redone
    # (the server never sees a fragment: "#top" is cut before the request)
    assert refetched and refetched <= {"/" + u.split("/", 3)[3].split("#")[0] for u in shard1} | {"/fault/loop?hop=1"}
    final_after = pq.read_table(other / "stages" / "finalize" / "index.parquet").to_pylist()
    key = lambda r: r["key"]  # noqa: E731
    assert sorted(final_after, key=key) == sorted(final_before, key=key)
    for tar in (out / "stages" / "finalize").glob("*.tar"):
        assert tar_samples(tar).keys() == tar_samples(other / "stages" / "finalize" / tar.name).keys()
        for k, files in tar_samples(tar).items():
            assert files["jpg"] == tar_samples(other / "stages" / "finalize" / tar.name)[k]["jpg"]


def test_decontamination_and_both_ways_of_writing_the_shards_agree(spark, built, tmp_path, monkeypatch):
    """An evaluation image's re-encoded copy among the downloads is dropped; the shards written in place (the
    drops sent to each shard's task) and through a shuffle by shard (the path of scored builds and of more
    than ``BROADCAST_KEYS`` drops) are the same bytes."""
    from witbuild.stages import finalize

    out, cfg, _, _ = built
    evals = tmp_path / "eval"
    evals.mkdir()
    rocket = skimage_image("rocket")
    rocket.resize((rocket.width // 2, rocket.height // 2), Image.LANCZOS).save(evals / "rocket.png")
    (evals / "notes.txt").write_text("not an image: skipped")
    runs = {}
    for name, limit in (("in_place", finalize.BROADCAST_KEYS), ("shuffled", 0)):
        copy = tmp_path / name
        shutil.copytree(out, copy)
        monkeypatch.setattr(finalize, "BROADCAST_KEYS", limit)
        dedup = cfg.dedup.model_copy(update={"decontaminate": str(evals)})
        counts = {r.name: r for r in run_build(spark, cfg.model_copy(update={"output": str(copy), "dedup": dedup}),
                                               from_stage="finalize")}["finalize"].counts
        final = copy / "stages" / "finalize"
        runs[name] = (counts, pq.read_table(final / "index.parquet").sort_by("key").to_pylist(),
                      (final / "sizes.json").read_text(), {t.name: t.read_bytes() for t in sorted(final.glob("*.tar"))})
    counts, index, _, tars = runs["in_place"]
    assert counts.dropped == {"duplicate_image_sha256": 1, "near_duplicate_phash": 2, "eval_contamination": 1}
    assert (counts.rows_in, counts.rows_out) == (12, 8)
    before = pq.read_table(out / "stages" / "finalize" / "index.parquet").to_pylist()
    gone = {r["key"] for r in before} - {r["key"] for r in index}
    assert [r["url"].rsplit("/", 1)[1] for r in before if r["key"] in gone] == ["rocket.jpg"]
    assert not any(k.startswith(tuple(gone)) for data in tars.values() for k in tar_samples_of(data))
    assert runs["shuffled"][0].dropped == counts.dropped
    assert runs["shuffled"][1:] == runs["in_place"][1:]


def test_decontamination_never_removes_a_kept_near_duplicate(spark, built, tmp_path):
    """The astronaut photo as the evaluation set: each of its copies (same bytes elsewhere, a smaller re-encoded
    one) is contaminated, so none is kept to represent the others; every duplicate_of in the near-duplicate
    record is in the dataset (decided before dedup, it used to keep one copy and then remove it)."""
    out, cfg, _, _ = built
    evals = tmp_path / "eval"
    evals.mkdir()
    skimage_image("astronaut").save(evals / "astronaut.png")
    copy = tmp_path / "build"
    shutil.copytree(out, copy)
    dedup = cfg.dedup.model_copy(update={"decontaminate": str(evals)})
    counts = {r.name: r for r in run_build(spark, cfg.model_copy(update={"output": str(copy), "dedup": dedup}),
                                           from_stage="finalize")}["finalize"].counts
    final = copy / "stages" / "finalize"
    index = pq.read_table(final / "index.parquet").to_pylist()
    assert not [r["url"] for r in index if "astronaut" in r["url"]]
    assert counts.dropped["eval_contamination"] == 3 and counts.info["eval_images"] == 1
    record = pq.read_table(final / "near_duplicates.parquet").to_pylist()
    assert {r["duplicate_of"] for r in record} <= {r["key"] for r in index}
    assert all(r["duplicate_of_in_dataset"] for r in record)


def tar_samples_of(data: bytes) -> dict[str, dict[str, bytes]]:
    import io

    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def test_signatures_saved_at_download_are_what_decoding_the_tars_gives(spark, built, tmp_path):
    """Each shard's pHashes and thumbnails, saved as img2dataset wrote it, spare finalize a decode of every image;
    without them (shards from another tool or an older download) finalize decodes the tars and writes the same
    bytes, index and near-duplicate record."""
    from witbuild.dedup.shard_signatures import signatures_path

    out, cfg, results, _ = built
    tars = sorted((out / "stages" / "download").glob("*.tar"))
    assert len(tars) > 1 and all(os.path.exists(signatures_path(str(t))) for t in tars)
    assert results["finalize"].counts.events["shards_signed_at_download"] == len(tars)
    copy = tmp_path / "decoded"
    shutil.copytree(out, copy)
    for saved in (copy / "stages" / "download").glob("*_signatures.arrow"):
        saved.unlink()
    # as a download made before signatures (and listings) were written: with its listing kept, the files gone
    # would redo the download instead
    (copy / "stages" / "download" / layout.FILES_FILE).unlink()
    counts = {r.name: r for r in run_build(spark, cfg.model_copy(update={"output": str(copy)}),
                                           from_stage="finalize")}["finalize"].counts
    assert "shards_signed_at_download" not in counts.events
    assert (counts.rows_in, counts.rows_out, counts.dropped) == (
        results["finalize"].counts.rows_in, results["finalize"].counts.rows_out, results["finalize"].counts.dropped)

    def outputs(root):
        final = root / "stages" / "finalize"
        near = pq.read_table(final / layout.NEAR_DUPLICATES_DIR).sort_by("key").to_pylist()
        return (pq.read_table(final / "index.parquet").sort_by("key").to_pylist(), near,
                (final / "sizes.json").read_text(), {t.name: t.read_bytes() for t in sorted(final.glob("*.tar"))})

    assert outputs(copy) == outputs(out)


def test_exact_duplicates_alone_when_near_duplicates_are_off(spark, built, tmp_path):
    """``dedup.near_dup`` off: the exact duplicates have a job of their own (with near duplicates on they come
    from the LSH pass) and the same one sample goes; the near copies stay."""
    out, cfg, _, _ = built
    copy = tmp_path / "exact_only"
    shutil.copytree(out, copy)
    dedup = cfg.dedup.model_copy(update={"near_dup": False})
    counts = {r.name: r for r in run_build(spark, cfg.model_copy(update={"output": str(copy), "dedup": dedup}),
                                           from_stage="finalize")}["finalize"].counts
    assert counts.dropped == {"duplicate_image_sha256": 1}
    assert (counts.rows_in, counts.rows_out) == (12, 11)
    both = pq.read_table(out / "stages" / "finalize" / "index.parquet").to_pylist()
    alone = pq.read_table(copy / "stages" / "finalize" / "index.parquet").to_pylist()
    near = {r["key"] for r in pq.read_table(out / "stages" / "finalize" / "near_duplicates.parquet").to_pylist()}
    assert sorted(r["key"] for r in alone) == sorted([r["key"] for r in both] + list(near))
