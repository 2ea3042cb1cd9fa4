"""The whole build at N images: seconds, rows/s and peak memory per stage, and how they grow with N.

For each N of ``--sizes`` (N: distinct images the download stage's URL list should hold):

1. a demo-like web is generated (``witbuild.demo.web.generate_pages``) until about N distinct images with an
   English natural caption are on it (those are what the filter and match stages keep), and written as
   gzip WARC files of at most ``PAGES_PER_WARC`` pages, at least two per core (the extract stage reads one file
   per task);
2. its images are served on 127.0.0.1 by ``DemoWebServer`` on a port the OS assigns (``--port`` fixes it: the
   URLs carry it, so only runs on one port see the same input), every image drawn beforehand (see below);
3. the real job runs through ``spark-submit`` (``local[2]``, 1 GB driver and executor, configs/demo.yaml,
   ``demo_job_settings`` and ``balance.t`` so large that balancing keeps every matched pair), from the WARC
   files through every stage, while the summed RSS of the spark-submit process tree (driver JVM, Python driver,
   Python workers) is sampled every ``SAMPLE_S`` seconds;
4. plain img2dataset (``distributor="multiprocessing"``, one process per core, the build's download settings)
   fetches the same URL list the download stage gave img2dataset, from the same server;
5. with ``--rounds K``, K - 1 more rounds of both on that input, alternately (the build again from balance),
   and post / plain over all rounds: one round's ratio moves with the machine's speed between its two runs.

More distinct images. The demo draws a picture from its name (shape, colour, count, background, layout), and
names are chosen Zipf-like among 4 layouts: distinct drawings saturate (20,000 pages show ~26,000 distinct
images in ~96,000 tags), and the ~1,400 web digits are used up after ~2,000 pages. So the benchmark renames
every drawing of page ``p`` from layout ``L`` to ``L + 4 * (p // PAGES_PER_GROUP)`` (in the HTML and in the page
records): each group of pages repeats its pictures across its own pages as the demo web does, and each group
shows drawings no other group shows. ``draw_shapes`` seeds the positions and sizes from the whole name, so every
layout number is a picture of its own, and the demo server draws it from the URL as any other.

The server. ``demo_image`` keeps 8,192 images in an LRU cache keyed by the URL path; at 100,000 images (each
under two paths, /pages/img and /cdn/img) almost every request would draw and encode (~0.6 ms for a drawing,
~7 ms for a digit) in the server's thread, on the cores the build runs on. The benchmark draws every image of
the web once before the build (in a process pool), keeps the bytes in a dict by name, and serves from it (the
server module's ``demo_image`` is replaced in this process only, for the benchmark's duration).

Stage times. The job prints ``[<stage>] done in <s>s`` the moment each stage ends (flushed); a reader thread
stamps each such line with the monotonic clock, and the stage ran from that stamp minus its seconds (taken from
``build_report.json``, which holds them to the millisecond) to the stamp. A memory sample belongs to the stage
whose window holds it; samples before the first stage are "startup" (JVM, Spark session), after the last
"shutdown", between two stages "between". "cores" is the CPU time of the tree over the stage's wall time (2.0:
both cores all along), "machine" the same for the whole machine (the image server in this process, and
anything else running, included). The Python driver's role includes the processes it spawns (img2dataset's
logger process). The match stage's query-list part ends when ``<build>/querylist/_fingerprint.json`` is
written (the folder's last file before it takes its final name).

The download stage's input. ``prepare_input`` writes the rows img2dataset may fetch to
``stages/_tmp/download.input`` and removes it when img2dataset is done; a watcher thread copies the folder out
as soon as its ``_SUCCESS`` appears. Should the copy be missed, the dedup stage's output is the same rows when
the download stage dropped none before fetching (no address or robots.txt refusal here); that is checked.

``--pool P`` generates (and caches in benchmarks/_data, keyed by P, seed, grouping and a hash of
witbuild/demo/web.py) a web whose WARC files yield at least P extracted pairs, runs the build up to dedup
(``--until-stage dedup``; no image is served or fetched) and reports rows/s per CPU stage and the peak RSS of
the JVM (in local mode driver and executors share it), the Python driver and the Python workers.

Run: ``.venv/bin/python benchmarks/bench_build.py [--sizes 10000,30000,100000] [--pool 1000000]``.
Figures go to ``benchmarks/_data/bench_build.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT / "benchmarks" / "_data"
JOB = ROOT / "jobs" / "build_wit.py"
CONFIG = ROOT / "configs" / "demo.yaml"

STAGES = ("extract", "filter", "match", "balance", "dedup", "download", "finalize")
CPU_STAGES = STAGES[:5]
POST_STAGES = ("dedup", "download", "finalize")  # what witbuild adds around img2dataset
RERUN_FROM = "balance"  # --rounds: the stage a round's build starts from (the one before POST_STAGES)
DEMO_LAYOUTS = 4  # layouts witbuild.demo.web._drawn_params draws from (rng.randrange(4))
PAGES_PER_GROUP = 250  # pages that share their drawings; each group of pages has drawings of its own
PAGES_PER_WARC = 5000
KEEP_ALL_T = 1_000_000_000  # balance.t: p_e = min(1, t / c_e) = 1 for every entry, no pair is cut
SAMPLE_S = 0.5
REWRITE_VERSION = 1  # part of the pool cache key: bump when the page rewriting changes
DONE_LINE = re.compile(r"^\[(\w+)\] done in ([0-9.]+)s$")
MB = 1e6


# --------------------------------------------------------------------------------------------------------------------
# the web: demo pages with more distinct drawings, written as WARC files
# --------------------------------------------------------------------------------------------------------------------


def regrouped_stem(stem: str, group: int) -> str:
    """A drawing's stem with its layout moved into ``group``'s range; other stems unchanged."""
    if group == 0 or not stem.startswith("draw-"):
        return stem
    head, layout = stem.rsplit("-", 1)
    return f"{head}-{int(layout) + DEMO_LAYOUTS * group}"


def regroup_page(page: Any, group: int) -> Any:
    """The page with every drawing renamed into ``group`` (HTML bytes and image records alike)."""
    if group == 0:
        return page
    html, images = page.html, []
    for img in page.images:
        new = regrouped_stem(img.content, group)
        if new != img.content:
            old_name, new_name = f"/{img.content}.jpg", f"/{new}.jpg"
            html = html.replace(old_name.encode("ascii"), new_name.encode("ascii"))
            img = dataclasses.replace(img, url=img.url.replace(old_name, new_name),
                                      src=img.src.replace(old_name, new_name), content=new)
        images.append(img)
    return dataclasses.replace(page, html=html, images=images)


@dataclasses.dataclass
class WebStats:
    """What the generated web holds; ``likely_kept`` approximates the distinct images the build will fetch."""

    pages: int = 0
    img_tags: int = 0
    downloadable: int = 0
    likely_pairs: int = 0  # <img> tags with a URL and a caption, svg aside: about what extract yields
    stems: set[str] = dataclasses.field(default_factory=set)
    likely_kept: set[str] = dataclasses.field(default_factory=set)

    def add(self, page: Any) -> None:
        self.pages += 1
        for img in page.images:
            self.img_tags += 1
            self.likely_pairs += bool(img.url and img.text and img.kind != "svg")
            if img.content:
                self.downloadable += 1
                self.stems.add(img.content)
                if img.kind == "natural" and page.lang == "en":
                    self.likely_kept.add(img.content)

    def to_dict(self) -> dict[str, int]:
        return {"pages": self.pages, "img_tags": self.img_tags, "downloadable": self.downloadable,
                "distinct_images": len(self.stems), "likely_kept_images": len(self.likely_kept),
                "likely_pairs": self.likely_pairs}


def scaled_pages(site: str, seed: int, max_pages: int, stats: WebStats,
                 done: Callable[[WebStats], bool]) -> Iterator[Any]:
    """Demo pages with regrouped drawings until ``done(stats)``; ``max_pages`` only bounds the generator (a page's
    navigation links point up to it: unused, the build reads the WARC files)."""
    from witbuild.demo.web import generate_pages

    for i, page in enumerate(generate_pages(max_pages, site=site, seed=seed)):
        if done(stats):
            return
        page = regroup_page(page, i // PAGES_PER_GROUP)
        stats.add(page)
        yield page


def write_web(pages: Iterator[Any], folder: Path, pages_per_file: int) -> list[Path]:
    """The pages as numbered gzip WARC files of ``pages_per_file`` pages each."""
    from witbuild.demo.web import write_warc

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in itertools.count():
        path = folder / f"web-{k:05d}.warc.gz"
        if write_warc(itertools.islice(pages, pages_per_file), path) == 0:
            path.unlink()
            return files
        files.append(path)
    return files


def pages_per_file(expected_pages: int, cores: int) -> int:
    """At most PAGES_PER_WARC pages a file, and at least two files per core."""
    files = max(2 * cores, math.ceil(expected_pages / PAGES_PER_WARC))
    return max(1, math.ceil(expected_pages / files))


# ~2.4 likely-kept distinct images and ~4.6 pairs a page once the digits are used up (seed 0); a little less here,
# so that the expected page count, which sets the pages per WARC file, errs on the low side
KEPT_PER_PAGE, PAIRS_PER_PAGE = 2.2, 4.4
POOL_MARGIN = 1.0  # likely pairs (tags with a URL and a caption, no svg) equal extract's count (2k, 6k, 12k)


def generate_web(folder: Path, site: str, seed: int, cores: int, *, images: int = 0, pairs: int = 0) -> dict:
    """Writes a web with about ``images`` likely-kept distinct images, or at least ``pairs`` likely pairs."""
    expected = math.ceil(images / KEPT_PER_PAGE if images else pairs / PAIRS_PER_PAGE)
    stats = WebStats()

    def done(s: WebStats) -> bool:
        return len(s.likely_kept) >= images if images else s.likely_pairs >= POOL_MARGIN * pairs

    started = time.perf_counter()
    pages = scaled_pages(site, seed, max(10, 3 * expected), stats, done)
    files = write_web(pages, folder, pages_per_file(expected, cores))
    seconds = time.perf_counter() - started
    return {**stats.to_dict(), "warc_files": len(files), "warc_mb": round(sum(f.stat().st_size for f in files) / MB, 1),
            "generate_seconds": round(seconds, 1), "stems": stats.stems}


def _generator_hash() -> str:
    from witbuild.demo import web

    return hashlib.sha1(Path(web.__file__).read_bytes()).hexdigest()[:10]


def cached_pool_web(pairs: int, seed: int, cores: int, data: Path) -> tuple[Path, dict]:
    """The pool's WARC folder under ``data``, generated on first use; meta.json is written last."""
    key = f"build-pool-{pairs}-seed{seed}-g{PAGES_PER_GROUP}-w{PAGES_PER_WARC}-c{cores}-r{REWRITE_VERSION}"
    folder = data / f"{key}-{_generator_hash()}"
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        print(f"pool web: cached in {folder}", flush=True)
        return folder, json.loads(meta_path.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    print(f"pool web: generating >= {pairs:,} pairs into {folder} ...", flush=True)
    meta = generate_web(folder, "http://demo.witbuild.test", seed, cores, pairs=pairs)
    meta.pop("stems")
    meta_path.write_text(json.dumps(meta, indent=1))
    return folder, meta


# --------------------------------------------------------------------------------------------------------------------
# the image server, with every image drawn beforehand
# --------------------------------------------------------------------------------------------------------------------


def _render(stem: str) -> bytes | None:
    from witbuild.demo import server as server_mod

    draw = server_mod.demo_image
    draw = getattr(draw, "fallback", draw)  # the demo's own function, also while PrerenderedImages stands in for it
    return draw.__wrapped__(f"/pages/img/{stem}.jpg")  # not through the LRU cache: each is drawn once


def prerender(stems: set[str], cores: int) -> dict[str, bytes]:
    """Every image's JPEG bytes by stem, drawn in ``cores`` processes."""
    ordered = sorted(stems)
    with ProcessPoolExecutor(max_workers=cores) as pool:
        return {s: b for s, b in zip(ordered, pool.map(_render, ordered, chunksize=256), strict=True)
                if b is not None}


class PrerenderedImages:
    """Looks a demo image path up among prerendered bytes; draws (and counts) the rare one that is missing."""

    def __init__(self, images: dict[str, bytes], fallback: Callable[[str], bytes | None]):
        self.images, self.fallback, self.misses = images, fallback, 0

    def __call__(self, path: str) -> bytes | None:
        from witbuild.demo.server import IMAGE_PREFIXES

        for prefix in IMAGE_PREFIXES:
            if path.startswith(prefix) and path.endswith(".jpg"):
                found = self.images.get(path[len(prefix):-len(".jpg")])
                if found is not None:
                    return found
        image = self.fallback(path)
        self.misses += image is not None  # a broken link (404) is no miss
        return image


@contextlib.contextmanager
def image_server(port: int = 0, image_delay_s: float = 0.0) -> Iterator[tuple[Any, PrerenderedImages]]:
    """``DemoWebServer`` on ``port`` of 127.0.0.1 (0: one the OS assigns), serving what the yielded lookup holds
    (fill its ``images`` once the web, whose URLs carry the port, is generated); each image answered after
    ``image_delay_s``, as a distant host would."""
    from witbuild.demo import server as server_mod

    lookup = PrerenderedImages({}, server_mod.demo_image)
    original, server_mod.demo_image = server_mod.demo_image, lookup
    try:
        with server_mod.DemoWebServer(n_pages=1, port=port, image_delay_s=image_delay_s) as web:
            yield web, lookup
    finally:
        server_mod.demo_image = original


# --------------------------------------------------------------------------------------------------------------------
# the job: spark-submit, its stage windows, the memory of its process tree
# --------------------------------------------------------------------------------------------------------------------


def _cpu_busy() -> float:
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class TreeSampler(threading.Thread):
    """Every ``SAMPLE_S`` s: the RSS of each process of a tree by role, the tree's CPU seconds and the machine's
    busy CPU seconds.

    The tree's CPU seconds are each process's own, as last seen, summed over every process seen so far: a
    process that has ended keeps counting what it used, so the sum never goes back (summing the live processes'
    times with their reaped children's went negative when workers ended whose parent had not reaped them: -8.5
    cores over a 100k finalize). A process that lives less than ``SAMPLE_S`` is missed."""

    def __init__(self, pid: int):
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.samples, self.roles, self.others = pid, [], {}, set()
        self.cpu_seen: dict[tuple, float] = {}
        self.stopped = threading.Event()

    def role(self, proc: Any) -> str:
        key = (proc.pid, proc.create_time(), proc.name())  # the name too: spark-submit's shell execs the JVM
        if key not in self.roles:
            cmd = " ".join(proc.cmdline())
            # the driver's spawned helpers (img2dataset's logger process) count with the driver
            driver = JOB.name in cmd or "multiprocessing" in cmd
            self.roles[key] = ("jvm" if key[2] == "java" else "python_driver" if driver
                               else "python_workers" if "pyspark" in cmd else "other")
            if self.roles[key] == "other":
                self.others.add(f"{key[2]}: {cmd[:100]}")
        return self.roles[key]

    def sample(self, root: Any) -> tuple[dict[str, float], float]:
        import psutil

        by_role: dict[str, float] = {}
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                with proc.oneshot():
                    rss, t = proc.memory_info().rss, proc.cpu_times()
                    role = self.role(proc)
                    key = (proc.pid, proc.create_time())
                by_role[role] = by_role.get(role, 0) + rss / MB
                self.cpu_seen[key] = t.user + t.system
        return by_role, sum(self.cpu_seen.values())

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self.stopped.is_set():
            by_role, cpu = self.sample(root)
            if by_role:
                self.samples.append((time.monotonic(), sum(by_role.values()), by_role, cpu, _cpu_busy()))
            self.stopped.wait(SAMPLE_S)


def copy_when_ready(src: Path, dst: Path, stop: threading.Event) -> None:
    """Copies ``src`` to ``dst`` once ``src/_SUCCESS`` exists (the download stage's input, before it is removed)."""
    while not stop.wait(0.1):
        if (src / "_SUCCESS").is_file():
            try:
                shutil.copytree(src, dst)
                return
            except (OSError, shutil.Error):
                shutil.rmtree(dst, ignore_errors=True)


@dataclasses.dataclass
class JobRun:
    rc: int
    wall: float
    started: float  # monotonic
    done_at: dict[str, float]  # stage -> monotonic time its "done" line arrived
    samples: list  # (monotonic, RSS MB, RSS MB by role, tree CPU s, machine busy CPU s)
    stdout: str
    stderr_tail: str
    other_processes: list[str]  # processes of the tree that are neither the JVM nor Python
    wall_offset: float  # time.time() - time.monotonic() while it ran: file times to the monotonic clock


def job_command(web: Path, build: Path, sets: list[str], master: str, until: str, conf: list[str] = ()) -> list[str]:
    return [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
            "--driver-memory", "1g", "--executor-memory", "1g", *(a for c in conf for a in ("--conf", c)),
            str(JOB), "--config", str(CONFIG),
            "--input", str(web), "--output", str(build), "--until-stage", until, *sets]


def run_job(cmd: list[str], log: Path, watch: tuple[Path, Path] | None) -> JobRun:
    """Runs the job, stamping its stage lines and sampling its process tree; copies ``watch[0]`` to ``watch[1]``."""
    from witbuild.spark import spark_submit_env

    done_at, lines = {}, []
    stop = threading.Event()
    copier = threading.Thread(target=copy_when_ready, args=(*watch, stop), daemon=True) if watch else None
    started = time.monotonic()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=spark_submit_env(),
                                cwd=ROOT)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        if copier:
            copier.start()
        for line in proc.stdout:
            if m := DONE_LINE.match(line.strip()):
                done_at[m.group(1)] = time.monotonic()
            lines.append(line)
        rc = proc.wait()
    wall = time.monotonic() - started
    sampler.stopped.set()
    stop.set()
    sampler.join()
    if copier:
        copier.join()
    log.with_suffix(".out").write_text("".join(lines))  # the job's own output, beside Spark's log
    return JobRun(rc, wall, started, done_at, sampler.samples, "".join(lines), log.read_text()[-4000:],
                  sorted(sampler.others), time.time() - time.monotonic())


def stage_windows(run: JobRun, report: dict) -> dict[str, tuple[float, float]]:
    """Each stage's (start, end) on the monotonic clock: end when its line arrived, start its seconds earlier."""
    out = {}
    for name, end in run.done_at.items():
        seconds = report["stages"].get(name, {}).get("seconds")
        out[name] = (end - float(seconds), end)
    return out


def querylist_seconds(build: Path, run: JobRun, windows: dict[str, tuple[float, float]]) -> float | None:
    """Seconds from the match stage's start until its query list was ready: the list's folder gets its
    fingerprint file last, just before it takes its final name (witbuild/curate/querylist_artifact.py)."""
    from witbuild import layout

    done = Path(layout.querylist_dir(str(build))) / layout.FINGERPRINT_FILE
    if "match" not in windows or not done.is_file():
        return None
    return round(done.stat().st_mtime - run.wall_offset - windows["match"][0], 2)


def phase_of(t: float, windows: dict[str, tuple[float, float]]) -> str:
    for name, (start, end) in windows.items():
        if start <= t <= end:
            return name
    if not windows or t < min(s for s, _ in windows.values()):
        return "startup"
    return "shutdown" if t > max(e for _, e in windows.values()) else "between"


def phase_figures(samples: list, windows: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Per stage (and startup/between/shutdown): peak RSS of the tree and of each role, in MB, and cores busy."""
    out: dict[str, dict] = {}
    for t, total, by_role, *_ in samples:
        f = out.setdefault(phase_of(t, windows), {"samples": 0, "peak_rss_mb": 0.0, "peak_by_role_mb": {}})
        f["samples"] += 1
        f["peak_rss_mb"] = max(f["peak_rss_mb"], round(total, 1))
        for role, mb in by_role.items():
            f["peak_by_role_mb"][role] = max(f["peak_by_role_mb"].get(role, 0.0), round(mb, 1))
    for name, (start, end) in windows.items():
        inside = [(t, cpu, busy) for t, _, _, cpu, busy in samples if start <= t <= end]
        if len(inside) >= 2 and inside[-1][0] > inside[0][0]:
            (t0, cpu0, busy0), (t1, cpu1, busy1) = inside[0], inside[-1]
            out.setdefault(name, {}).update(cores_used=round((cpu1 - cpu0) / (t1 - t0), 2),
                                            machine_cores_busy=round((busy1 - busy0) / (t1 - t0), 2))
    return out


def stage_table(report: dict, phases: dict[str, dict], total: float, names: tuple[str, ...]) -> dict[str, dict]:
    """Per stage: rows in/out, seconds, rows/s (rows in / seconds), share of the build, peak RSS, cores busy."""
    out = {}
    for name in names:
        st = report["stages"].get(name)
        if st is None:
            continue
        sec, ph = st["seconds"], phases.get(name, {})
        out[name] = {"rows_in": st["rows_in"], "rows_out": st["rows_out"], "unit": st.get("unit", "rows"),
                     "seconds": round(sec, 2), "rows_per_s": round(st["rows_in"] / sec, 1) if sec else None,
                     "share": round(sec / total, 4), "peak_rss_mb": ph.get("peak_rss_mb"),
                     "peak_by_role_mb": ph.get("peak_by_role_mb", {}), "cores_used": ph.get("cores_used"),
                     "machine_cores_busy": ph.get("machine_cores_busy"),
                     "dropped": st.get("dropped", {})}
    return out


# --------------------------------------------------------------------------------------------------------------------
# plain img2dataset on the same URL list
# --------------------------------------------------------------------------------------------------------------------


def run_plain(url_list: Path, out: Path, cfg: Any, processes: int) -> float:
    """img2dataset as bench_download.py runs it: multiprocessing, one process per core, the build's settings."""
    from bench_download import run_plain as plain

    return plain(url_list, out, cfg, processes)


def plain_successes(out: Path) -> int:
    return sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))


def url_list_figures(url_list: Path) -> dict[str, int]:
    """Rows, distinct URLs and distinct images (the name after /img/: /pages/img/X and /cdn/img/X are one image)."""
    import pyarrow.parquet as pq

    urls = pq.read_table(url_list, columns=["url"]).column("url").to_pylist()
    stems = {u.split("?", 1)[0].rsplit("/img/", 1)[-1].removesuffix(".jpg") for u in urls}
    return {"rows": len(urls), "distinct_urls": len(set(urls)), "distinct_images": len(stems)}


def download_input(copied: Path, build: Path, report: dict) -> tuple[Path, str]:
    """The download stage's img2dataset input: the copy, else the dedup output when nothing was dropped first."""
    from witbuild.layout import PRE_DOWNLOAD_DROPS

    if (copied / "_SUCCESS").is_file():
        return copied, "copy of stages/_tmp/download.input"
    dropped = report["stages"]["download"].get("dropped", {})
    if any(dropped.get(r) for r in PRE_DOWNLOAD_DROPS):
        raise RuntimeError("the download input was not copied and the download stage dropped rows before "
                           "fetching: no way to rebuild the same URL list")
    return build / "stages" / "dedup", "stages/dedup (nothing dropped before fetching)"


# --------------------------------------------------------------------------------------------------------------------
# one size, the pool
# --------------------------------------------------------------------------------------------------------------------


def build_sets(pages: int, per_shard: int | None, balance_t: int) -> list[str]:
    from witbuild.demo.server import demo_job_settings

    sets = [*demo_job_settings(pages), "--set", f"balance.t={balance_t}"]
    if per_shard:
        sets += ["--set", f"download.number_sample_per_shard={per_shard}"]
    return sets


def finished_job(run: JobRun, build: Path, names: tuple[str, ...]) -> dict:
    """The build report, after checking that the job succeeded and every stage of ``names`` ran."""
    if run.rc != 0:
        raise RuntimeError(f"the build failed (exit {run.rc}):\n{run.stdout[-3000:]}\n{run.stderr_tail}")
    report = json.loads((build / "build_report.json").read_text())
    missing = [n for n in names if n not in run.done_at or report["stages"].get(n, {}).get("skipped", True)]
    if missing:
        raise RuntimeError(f"stages did not run: {missing}")
    return report


def timed_build(web: Path, build: Path, sets: list[str], args: argparse.Namespace, until: str,
                watch: tuple[Path, Path] | None) -> tuple[JobRun, dict, dict]:
    names = STAGES[: STAGES.index(until) + 1]
    cmd = job_command(web, build, sets, args.master, until, args.spark_conf)
    print("$ " + " ".join(cmd), flush=True)
    log = build.parent / f"{build.name}.log"
    run = run_job(cmd, log, watch)
    report = finished_job(run, build, names)
    windows = stage_windows(run, report)
    phases = phase_figures(run.samples, windows)
    stages = stage_table(report, phases, run.wall, names)
    stages["match"]["querylist_seconds"] = querylist_seconds(build, run, windows)
    return run, report, {"stages": stages, "phases": phases, "windows": windows}


def bench_size(n: int, args: argparse.Namespace, cores: int, work: Path) -> dict:
    """One N: generate, serve, build, then plain img2dataset on the same list."""
    from witbuild import layout
    from witbuild.config import load_config
    from witbuild.download import apply_env

    with image_server(args.port, args.image_delay_ms / 1000.0) as (server, lookup):
        web_fig = generate_web(work / "web", server.site, args.seed, cores, images=n)
        stems = web_fig.pop("stems")
        print(f"N={n:,}: web of {web_fig['pages']:,} pages, {web_fig['distinct_images']:,} distinct images "
              f"({web_fig['warc_files']} WARC files, {web_fig['warc_mb']} MB) in {web_fig['generate_seconds']} s; "
              f"drawing them ...", flush=True)
        started = time.perf_counter()
        lookup.images = prerender(stems, cores)
        web_fig.update(prerender_seconds=round(time.perf_counter() - started, 1),
                       image_mb=round(sum(map(len, lookup.images.values())) / MB, 1))
        build, copied = work / "build", work / "download-input"
        sets = build_sets(web_fig["pages"], args.per_shard, args.balance_t)
        # where witbuild/stages/download.py's prepare_input writes img2dataset's input
        fed = Path(layout.stage_tmp_dir(str(build), "download") + ".input")
        run, report, fig = timed_build(work / "web", build, sets, args, STAGES[-1], (fed, copied))
        url_list, source = download_input(copied, build, report)
        cfg = load_config(layout.config_path(str(build))).download
        apply_env(cfg)
        print(f"plain img2dataset on the same list ({source}) ...", flush=True)
        plain = timed_plain(url_list, work / "plain", cfg, cores)
        rounds = [round_figures(1, "build first", fig["stages"], plain)]
        for r in range(2, args.rounds + 1):
            rounds.append(repeat_round(r, work, sets, args, url_list, cfg, cores))
        misses = lookup.misses
    out = size_figures(n, web_fig, run, fig, url_list, source, plain["seconds"], plain["successes"], misses)
    out["plain_img2dataset"]["machine_cpu_seconds"] = plain["machine_cpu_seconds"]
    out["rounds"] = {"each": rounds, **rounds_summary(rounds)}
    return out


def timed_plain(url_list: Path, out: Path, cfg: Any, cores: int) -> dict:
    """Plain img2dataset's seconds and the whole machine's busy CPU seconds meanwhile (the server's included)."""
    busy = _cpu_busy()
    seconds = run_plain(url_list, out, cfg, cores)
    return {"seconds": round(seconds, 2), "machine_cpu_seconds": round(_cpu_busy() - busy, 1),
            "successes": plain_successes(out)}


def repeat_round(r: int, work: Path, sets: list[str], args: argparse.Namespace, url_list: Path, cfg: Any,
                 cores: int) -> dict:
    """Round ``r`` on the same input: plain img2dataset and the build again from the stage before dedup
    (``--from-stage balance``: dedup then starts in a warm session as in a whole build; run first, it took
    31 s instead of 13 at 100k), the order alternating (even rounds plain first) so that a drift of the
    machine's speed during the rounds weighs on both alike."""
    build, folder = work / "build", work / f"plain-{r}"
    order = ("plain", "build") if r % 2 == 0 else ("build", "plain")
    stages: dict[str, dict] = {}
    plain: dict = {}
    for step in order:
        print(f"round {r}/{args.rounds}: {step} ...", flush=True)
        if step == "plain":
            plain = timed_plain(url_list, folder, cfg, cores)
            shutil.rmtree(folder, ignore_errors=True)
        else:
            cmd = [*job_command(work / "web", build, sets, args.master, STAGES[-1], args.spark_conf),
                   "--from-stage", RERUN_FROM]
            run = run_job(cmd, work / f"build-{r}.log", None)
            report = finished_job(run, build, POST_STAGES)
            windows = stage_windows(run, report)
            stages = stage_table(report, phase_figures(run.samples, windows), run.wall, POST_STAGES)
    return round_figures(r, f"{order[0]} first", stages, plain)


def round_figures(r: int, order: str, stages: dict[str, dict], plain: dict) -> dict:
    """One round's dedup, download and finalize seconds (and busy CPU seconds of the machine) against plain's."""
    post = sum(stages[s]["seconds"] for s in POST_STAGES)
    cpu = [stages[s]["machine_cores_busy"] and stages[s]["machine_cores_busy"] * stages[s]["seconds"]
           for s in POST_STAGES]
    return {"round": r, "order": order, **{s: stages[s]["seconds"] for s in POST_STAGES}, "post": round(post, 2),
            "plain": plain["seconds"], "post_over_plain": round(post / plain["seconds"], 3),
            "download_over_plain": round(stages["download"]["seconds"] / plain["seconds"], 3),
            "post_machine_cpu_seconds": round(sum(cpu), 1) if all(cpu) else None,
            "plain_machine_cpu_seconds": plain["machine_cpu_seconds"],
            "kept": stages["finalize"]["rows_out"], "plain_successes": plain["successes"]}


def rounds_summary(rounds: list[dict]) -> dict:
    """post / plain over all rounds: of the summed seconds, the median of the rounds, the lowest and highest."""
    ratios = sorted(r["post_over_plain"] for r in rounds)
    cpu = [(r["post_machine_cpu_seconds"], r["plain_machine_cpu_seconds"]) for r in rounds]
    return {"post_over_plain_summed": round(sum(r["post"] for r in rounds) / sum(r["plain"] for r in rounds), 3),
            "post_over_plain_median": round(statistics.median(ratios), 3),
            "post_over_plain_min": ratios[0], "post_over_plain_max": ratios[-1],
            "machine_cpu_post_over_plain": round(sum(a for a, _ in cpu) / sum(b for _, b in cpu), 3)
            if all(a and b for a, b in cpu) else None}


def run_figures(run: JobRun, fig: dict) -> dict:
    """The whole run: wall seconds, the seconds outside any stage, peak RSS of the tree and by role."""
    stage_s = sum(s["seconds"] for s in fig["stages"].values())
    starts, ends = [s for s, _ in fig["windows"].values()], [e for _, e in fig["windows"].values()]
    peak_by_role: dict[str, float] = {}
    for _, _, by_role, *_ in run.samples:
        for role, mb in by_role.items():
            peak_by_role[role] = max(peak_by_role.get(role, 0.0), round(mb, 1))
    return {"seconds": round(run.wall, 2), "stage_seconds": round(stage_s, 2),
            "startup_seconds": round(min(starts) - run.started, 2) if starts else None,
            "shutdown_seconds": round(run.started + run.wall - max(ends), 2) if ends else None,
            "peak_rss_mb": round(max((s[1] for s in run.samples), default=0.0), 1),
            "peak_by_role_mb": peak_by_role, "samples": len(run.samples), "other_processes": run.other_processes}


def size_figures(n: int, web: dict, run: JobRun, fig: dict, url_list: Path, source: str, plain_s: float,
                 plain_ok: int, misses: int) -> dict:
    stages = fig["stages"]
    post = sum(stages[s]["seconds"] for s in POST_STAGES)
    download = stages["download"]["seconds"]
    urls = {**url_list_figures(url_list), "source": source}
    return {
        "n": n, "web": web, "download_url_list": urls, "build": run_figures(run, fig), "stages": stages,
        "phases": {k: v for k, v in fig["phases"].items() if k not in STAGES},
        "plain_img2dataset": {"seconds": round(plain_s, 2), "rows_per_s": round(urls["rows"] / plain_s, 1),
                              "successes": plain_ok},
        "overhead": {"post_seconds": round(post, 2), "post_over_plain": round(post / plain_s, 3),
                     "download_seconds": round(download, 2), "download_over_plain": round(download / plain_s, 3)},
        "server_prerender_misses": misses,
    }


def bench_pool(pairs: int, args: argparse.Namespace, cores: int, work: Path) -> dict:
    """The CPU stages on a pool of at least ``pairs`` extracted pairs, up to dedup (nothing fetched)."""
    web, meta = cached_pool_web(pairs, args.seed, cores, args.data_dir)
    sets = build_sets(meta["pages"], None, args.balance_t)
    run, _, fig = timed_build(web, work / "pool-build", sets, args, CPU_STAGES[-1], None)
    if fig["stages"]["extract"]["rows_out"] < pairs:
        print(f"warning: extract yielded {fig['stages']['extract']['rows_out']:,} pairs, under {pairs:,}", flush=True)
    return {"pairs_target": pairs, "web": meta, "build": run_figures(run, fig), "stages": fig["stages"],
            "phases": {k: v for k, v in fig["phases"].items() if k not in STAGES}}


def growth(sizes: list[dict]) -> list[dict]:
    """t(N2)/t(N1) per stage for consecutive sizes, with the size ratio and the exponent log(t ratio)/log(size ratio)
    (1: linear)."""
    out = []
    for a, b in itertools.pairwise(sorted(sizes, key=lambda s: s["n"])):
        size_ratio = b["n"] / a["n"]
        row = {"from": a["n"], "to": b["n"], "size_ratio": round(size_ratio, 3),
               "images_ratio": round(b["download_url_list"]["distinct_images"]
                                     / max(1, a["download_url_list"]["distinct_images"]), 3), "stages": {}}
        pairs = [(s, a["stages"][s]["seconds"], b["stages"][s]["seconds"]) for s in STAGES]
        pairs += [("build", a["build"]["seconds"], b["build"]["seconds"]),
                  ("plain_img2dataset", a["plain_img2dataset"]["seconds"], b["plain_img2dataset"]["seconds"])]
        for name, ta, tb in pairs:
            ratio = tb / ta if ta else None
            exponent = math.log(ratio) / math.log(size_ratio) if ratio and size_ratio != 1 else None
            row["stages"][name] = {"ratio": round(ratio, 3) if ratio else None,
                                   "exponent": round(exponent, 2) if exponent is not None else None}
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------------------------------


def _f(v: float | int | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_stages(stages: dict[str, dict], by_role: bool = False) -> None:
    extra = f"{'jvm / py driver / py workers MB':>34}" if by_role else ""
    print(f"{'stage':<10}{'rows in':>11}{'rows out':>11}{'seconds':>9}{'rows/s':>10}{'share':>8}"
          f"{'peak RSS MB':>13}{'cores':>7}{'machine':>9}{extra}")
    for name, s in stages.items():
        line = (f"{name:<10}{s['rows_in']:>11,}{s['rows_out']:>11,}{s['seconds']:>9.1f}"
                f"{_f(s['rows_per_s'], ',.0f'):>10}{s['share']:>8.1%}{_f(s['peak_rss_mb'], ',.0f'):>13}"
                f"{_f(s['cores_used'], '.2f'):>7}{_f(s['machine_cores_busy'], '.2f'):>9}")
        if by_role:
            r = s["peak_by_role_mb"]
            line += f"{' / '.join(_f(r.get(k), ',.0f') for k in ('jvm', 'python_driver', 'python_workers')):>34}"
        print(line)


def print_notes(stages: dict[str, dict]) -> None:
    q = stages["match"].get("querylist_seconds")
    if q is not None:
        print(f"match: {q:.1f} s building the query list (wordfreq, WordNet, bigrams over the pool), "
              f"{stages['match']['seconds'] - q:.1f} s matching")
    print("cores: CPU seconds of the build's processes per wall second; machine: of the whole machine")


def print_size(fig: dict) -> None:
    w, u, b = fig["web"], fig["download_url_list"], fig["build"]
    print(f"\n=== N = {fig['n']:,}: web of {w['pages']:,} pages ({w['warc_files']} WARC files, {w['warc_mb']} MB), "
          f"{w['img_tags']:,} <img> tags, {w['downloadable']:,} downloadable, {w['distinct_images']:,} distinct "
          f"images ({w['image_mb']} MB drawn in {w['prerender_seconds']} s); generated in {w['generate_seconds']} s")
    print(f"download URL list: {u['rows']:,} rows, {u['distinct_urls']:,} distinct URLs, "
          f"{u['distinct_images']:,} distinct images")
    print_stages(fig["stages"])
    print_notes(fig["stages"])
    print(f"{'whole build':<10}{'':>22}{b['seconds']:>9.1f}{'':>18}{b['peak_rss_mb']:>13,.0f}   "
          f"(startup {_f(b['startup_seconds'], '.1f')} s, shutdown {_f(b['shutdown_seconds'], '.1f')} s, "
          f"stages {b['stage_seconds']:.1f} s)")
    p, o = fig["plain_img2dataset"], fig["overhead"]
    print(f"{'plain img2dataset':<21}{u['rows']:>11,}{p['successes']:>11,}{p['seconds']:>9.1f}"
          f"{p['rows_per_s']:>10,.0f}")
    print(f"dedup+download+finalize {o['post_seconds']:.1f} s over plain img2dataset {p['seconds']:.1f} s: "
          f"{o['post_over_plain']:.2f}x ({o['post_over_plain'] - 1:+.0%}); download stage alone "
          f"{o['download_seconds']:.1f} s: {o['download_over_plain']:.2f}x ({o['download_over_plain'] - 1:+.0%})")
    print_rounds(fig["rounds"])
    if fig["server_prerender_misses"]:
        print(f"note: {fig['server_prerender_misses']:,} requests were not prerendered (drawn on request)")


def print_rounds(rounds: dict) -> None:
    each = rounds["each"]
    if len(each) < 2:
        return
    print(f"\n{'round':>5}  {'order':<12}{'dedup':>8}{'download':>10}{'finalize':>10}{'post':>8}{'plain':>8}"
          f"{'post/plain':>12}{'download/plain':>16}{'CPU s post/plain':>18}{'kept':>9}")
    for r in each:
        cpu = (f"{r['post_machine_cpu_seconds']:.0f}/{r['plain_machine_cpu_seconds']:.0f}"
               if r["post_machine_cpu_seconds"] else "-")
        print(f"{r['round']:>5}  {r['order']:<12}{r['dedup']:>8.1f}{r['download']:>10.1f}{r['finalize']:>10.1f}"
              f"{r['post']:>8.1f}{r['plain']:>8.1f}{r['post_over_plain']:>11.2f}x{r['download_over_plain']:>15.2f}x"
              f"{cpu:>18}{r['kept']:>9,}")
    print(f"post / plain over {len(each)} rounds: {rounds['post_over_plain_summed']:.2f}x of the summed seconds, "
          f"median {rounds['post_over_plain_median']:.2f}x (from {rounds['post_over_plain_min']:.2f}x to "
          f"{rounds['post_over_plain_max']:.2f}x); busy CPU seconds of the machine "
          f"{_f(rounds['machine_cpu_post_over_plain'], '.2f')}x")


def print_summary(sizes: list[dict], rows: list[dict]) -> None:
    print(f"\n{'N':>9}{'distinct images':>17}{'build s':>9}{'peak RSS MB':>13}{'plain s':>9}{'post/plain':>12}")
    for f in sorted(sizes, key=lambda s: s["n"]):
        print(f"{f['n']:>9,}{f['download_url_list']['distinct_images']:>17,}{f['build']['seconds']:>9.1f}"
              f"{f['build']['peak_rss_mb']:>13,.0f}{f['plain_img2dataset']['seconds']:>9.1f}"
              f"{f['overhead']['post_over_plain']:>11.2f}x")
    for row in rows:
        print(f"\ngrowth {row['from']:,} -> {row['to']:,} (size x{row['size_ratio']}, distinct images "
              f"x{row['images_ratio']}): time ratio, exponent (1 = linear)")
        for name, g in row["stages"].items():
            print(f"  {name:<18}{_f(g['ratio'], '.2f'):>8}x{_f(g['exponent'], '.2f'):>8}")


def print_pool(fig: dict) -> None:
    w, b = fig["web"], fig["build"]
    print(f"\n=== pool >= {fig['pairs_target']:,} pairs: web of {w['pages']:,} pages ({w['warc_files']} WARC files, "
          f"{w['warc_mb']} MB; generated in {w['generate_seconds']} s), up to dedup")
    print_stages(fig["stages"], by_role=True)
    print_notes(fig["stages"])
    r = b["peak_by_role_mb"]
    print(f"whole run {b['seconds']:.1f} s (startup {_f(b['startup_seconds'], '.1f')} s); peak RSS "
          f"{b['peak_rss_mb']:,.0f} MB: JVM (driver and executors, local mode) {_f(r.get('jvm'), ',.0f')}, "
          f"Python driver {_f(r.get('python_driver'), ',.0f')}, Python workers {_f(r.get('python_workers'), ',.0f')}")


# --------------------------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip() and int(x.replace("_", "")) > 0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("10000,30000,100000"),
                   help="comma-separated N (distinct images); '' or 0 for none")
    p.add_argument("--pool", type=int, default=0, help="also run the CPU stages on >= this many extracted pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--port", type=int, default=0,
                   help="the image server's port (default: any free one). Every URL carries it, and with them the "
                        "pairs' uids, the shuffle and the shards' keys: give one to compare two runs on the same input")
    p.add_argument("--rounds", type=int, default=1,
                   help="at each N, run plain img2dataset and the build from balance again, alternately, until this "
                        "many rounds of both (same server, same input): post / plain from several runs")
    p.add_argument("--image-delay-ms", type=float, default=0.0,
                   help="the image server waits this long before each image (default 0: loopback speed, where the "
                        "download is CPU-bound; a few hundred ms makes it wait on the network, as on the web)")
    p.add_argument("--per-shard", type=int, default=None,
                   help="download.number_sample_per_shard (default: the config's, 250)")
    p.add_argument("--balance-t", type=int, default=KEEP_ALL_T, help="balance.t (default: keep every pair)")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for the build's spark-submit (repeatable), e.g. "
                        "spark.eventLog.enabled=true to see where a stage's time goes")
    p.add_argument("--json", type=Path, default=DATA / "bench_build.json")
    p.add_argument("--data-dir", type=Path, default=DATA, help="where the pool's WARC files are cached")
    p.add_argument("--keep", action="store_true", help="keep the work folders (webs, builds, shards)")
    return p.parse_args(argv)


def versions() -> dict[str, str]:
    from importlib import metadata

    return {d: metadata.version(d) for d in ("pyspark", "img2dataset", "psutil")}


def main(argv: list[str] | None = None) -> int:
    from _machine import machine_info

    args = parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out: dict[str, Any] = {"machine": machine_info(), "versions": versions(), "config": str(CONFIG.relative_to(ROOT)),
                           "master": args.master, "balance_t": args.balance_t, "image_delay_ms": args.image_delay_ms,
                           "sizes": [], "pool": None}
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"bench-build-{n}-"))
        try:
            out["sizes"].append(bench_size(n, args, cores, work))
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print_size(out["sizes"][-1])
    out["growth"] = growth(out["sizes"])
    if out["sizes"]:
        print_summary(out["sizes"], out["growth"])
    if args.pool:
        work = Path(tempfile.mkdtemp(prefix="bench-build-pool-"))
        try:
            out["pool"] = bench_pool(args.pool, args, cores, work)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
        print_pool(out["pool"])
    out["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1))
    print(f"\nfigures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
