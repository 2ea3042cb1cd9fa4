"""The same web and config build the same dataset whatever Spark's parallelism, and every row is accounted for.

Two whole builds of one small demo web, served on 127.0.0.1 for both: one on ``local[2]`` with Spark's default
settings, reading the web's two WARC files through two globs; the other on ``local[1]`` with 3 shuffle partitions
and 64 KB read splits, reading copies of the files in another folder, the globs given in the other order. Both use
options that change the funnel (``balance.target_size`` instead of a fixed t, a language score threshold, one text
per image, a wide pHash threshold that makes clusters of near duplicates for finalize to break ties in), so the
draws, the ties and the solved t all run on partitions of other sizes. Every stage must hold the same rows (the
input file's path aside: it names the folder the file was read from), dedup in the same order (img2dataset cuts its
shards from it), and the final shards must be the same bytes. Each build's numbers are then checked against disk:
rows in − rows out = the drops, each stage reads what the one before wrote, the index lists exactly the samples of
the tars, and ``witbuild stats`` reports the funnel the build recorded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from tests.conftest import MEMORY_1G, ROOT, VENV_BIN, run_job
from witbuild.config import STAGES
from witbuild.demo.server import DemoWebServer, demo_job_settings
from witbuild.demo.web import write_warc

pytestmark = [pytest.mark.slow, pytest.mark.spark]

PAGES = 240
PARQUET_STAGES = ("extract", "filter", "match", "balance", "dedup")
FUNNEL_OPTIONS = ("balance.t=null", "balance.target_size=300", "langid.min_score=0.5", "dedup.one_text_per_image=true",
                  "dedup.phash_threshold=8", "download.number_sample_per_shard=80")
SPLIT_FINELY = ("spark.conf.spark.sql.shuffle.partitions=3", "spark.conf.spark.sql.files.maxPartitionBytes=65536")


def _build(web: list[str], out: Path, master: str, extra: tuple[str, ...]) -> None:
    sets = [arg for option in (*FUNNEL_OPTIONS, *extra) for arg in ("--set", option)]
    inputs = [arg for glob in web for arg in ("--input", glob)]
    proc = run_job("--config", str(ROOT / "configs" / "demo.yaml"), *inputs, "--output", str(out),
                   *demo_job_settings(PAGES), *sets, master=master, spark_args=MEMORY_1G, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory) -> tuple[Path, Path]:
    """(the build on local[2] with Spark's defaults, the build on local[1] split finely from a copied folder)."""
    root = tmp_path_factory.mktemp("invariance")
    web, copy = root / "web", root / "elsewhere" / "copy"
    web.mkdir()
    with DemoWebServer(n_pages=PAGES, seed=3) as server:
        pages = list(server.pages.values())
        write_warc(pages[: PAGES // 2], web / "first-half.warc.gz")
        write_warc(pages[PAGES // 2:], web / "second-half.warc.gz")
        shutil.copytree(web, copy)
        _build([str(web / "first-*.warc.gz"), str(web / "second-*.warc.gz")], root / "wide", "local[2]", ())
        _build([str(copy / "second-*.warc.gz"), str(copy / "first-*.warc.gz")], root / "narrow", "local[1]",
               SPLIT_FINELY)
    return root / "wide", root / "narrow"


def _stage(build: Path, name: str) -> Path:
    return build / "stages" / name


def _rows(folder: Path) -> list[dict]:
    """A Parquet folder's rows in file-name order, the input file named by its file name only."""
    rows = []
    for path in sorted(folder.glob("part-*.parquet")):
        for row in pq.read_table(path).to_pylist():
            if "source_file" in row:
                row["source_file"] = row["source_file"].rsplit("/", 1)[-1]
            rows.append(row)
    return rows


def _json(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _table(folder: Path) -> list[str]:
    """A Parquet folder's rows as sorted JSON: the table whatever its files and row order."""
    table = pads.dataset(str(folder), format="parquet", exclude_invalid_files=True).to_table()
    return sorted(_json(r) for r in table.to_pylist())


def _counts(build: Path, name: str) -> dict:
    return json.loads((_stage(build, name) / "_counts.json").read_text())


def _tar_samples(folder: Path) -> dict[str, dict[str, str]]:
    """{tar name: {member name: sha256 of its bytes}} of every tar in a folder."""
    out = {}
    for path in sorted(folder.glob("*.tar")):
        with tarfile.open(path) as tar:
            out[path.name] = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                              for m in tar.getmembers() if m.isfile()}
    return out


def test_every_stage_holds_the_same_rows_whatever_the_parallelism(two_builds):
    wide, narrow = two_builds
    for name in PARQUET_STAGES:
        assert _counts(wide, name) == _counts(narrow, name), name
        a, b = _rows(_stage(wide, name)), _rows(_stage(narrow, name))
        assert len(a) == len(b) == _counts(wide, name)["rows_out"], name
        assert sorted(a, key=_json) == sorted(b, key=_json), name
    assert _rows(_stage(wide, "dedup")) == _rows(_stage(narrow, "dedup"))  # the order img2dataset cuts shards in
    assert _counts(wide, "balance")["info"]["t"] == _counts(narrow, "balance")["info"]["t"]
    entry_counts = "stages/balance/_entry_counts.parquet"
    assert pq.read_table(wide / entry_counts).equals(pq.read_table(narrow / entry_counts))
    assert (wide / "querylist" / "entries.txt").read_bytes() == (narrow / "querylist" / "entries.txt").read_bytes()


def test_the_dataset_is_the_same_bytes_whatever_the_parallelism(two_builds):
    wide, narrow = two_builds
    for name in ("download", "finalize"):
        assert _counts(wide, name) == _counts(narrow, name), name
    final_wide, final_narrow = _stage(wide, "finalize"), _stage(narrow, "finalize")
    tars = sorted(p.name for p in final_wide.glob("*.tar"))
    assert len(tars) >= 3 and tars == sorted(p.name for p in final_narrow.glob("*.tar"))
    for tar in tars:
        assert (final_wide / tar).read_bytes() == (final_narrow / tar).read_bytes(), tar
    for folder in ("index.parquet", "near_duplicates.parquet"):
        assert _table(final_wide / folder) == _table(final_narrow / folder), folder
    assert (final_wide / "sizes.json").read_text() == (final_narrow / "sizes.json").read_text()


def _check_accounts(build: Path) -> None:
    report = json.loads((build / "build_report.json").read_text())["stages"]
    assert list(report) == list(STAGES)
    previous_out = None
    for name in STAGES:
        counts = _counts(build, name)
        assert {k: v for k, v in report[name].items() if k not in ("seconds", "skipped")} == counts, name
        assert counts["rows_in"] - counts["rows_out"] == counts["rows_dropped"] == sum(counts["dropped"].values()), name
        assert previous_out is None or counts["rows_in"] == previous_out, name
        previous_out = counts["rows_out"]
    for name in PARQUET_STAGES:
        assert pads.dataset(str(_stage(build, name)), format="parquet").count_rows() == report[name]["rows_out"], name
    fetched = pads.dataset([str(p) for p in sorted(_stage(build, "download").glob("0*.parquet"))], format="parquet")
    assert fetched.to_table(columns=["status"])["status"].to_pylist().count("success") == report["download"]["rows_out"]

    final = _stage(build, "finalize")
    index = pads.dataset(str(final / "index.parquet"), format="parquet").to_table(columns=["shard", "key"]).to_pylist()
    listed = {(r["shard"], r["key"]) for r in index}
    in_tars = {(tar, member.rsplit(".", 1)[0]) for tar, members in _tar_samples(final).items() for member in members}
    assert len(index) == len(listed) == report["finalize"]["rows_out"]
    assert listed == in_tars
    sizes = json.loads((final / "sizes.json").read_text())
    assert sum(sizes.values()) == len(index)
    near = pads.dataset(str(final / "near_duplicates.parquet"), format="parquet").to_table().to_pylist()
    assert len(near) == report["finalize"]["dropped"].get("near_duplicate_phash", 0) > 0
    assert not {(r["shard"], r["key"]) for r in near} & listed
    assert {(r["duplicate_of_shard"], r["duplicate_of"]) for r in near} <= listed

    proc = subprocess.run([str(VENV_BIN / "witbuild"), "stats", "--json", str(build)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout)
    assert stats["totals"]["samples"] == len(index)
    def figures(stage: dict) -> tuple:
        return stage["rows_in"], stage["rows_out"], stage["rows_dropped"], stage["dropped"]

    assert {s["stage"]: figures(s) for s in stats["funnel"]["stages"]} == {n: figures(c) for n, c in report.items()}


def test_every_row_is_accounted_for_in_both_builds(two_builds):
    for build in two_builds:
        _check_accounts(build)
