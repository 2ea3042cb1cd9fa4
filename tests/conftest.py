"""Shared fixtures: a local Spark session, the real web-archive samples, the job runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_WARC = ROOT.parent / "shared" / "data" / "warc"
VENV_BIN = Path(sys.executable).parent

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("SPARK_CONF_DIR", str(ROOT / "witbuild" / "spark_conf"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# every Spark JVM the tests start (in-process sessions and spark-submit runs, which read SPARK_SUBMIT_OPTS) compiles
# with the JIT's first tier only: a test build of a few hundred rows spends its JVM seconds compiling code it runs a
# few times, and this takes 10-15% off the Spark tests' time (tests/test_job.py and test_fingerprints.py: 59 -> 52 s).
# It changes how fast the JVM's code runs, not what it computes; builds outside the tests keep the JVM's defaults.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test session."""
    from witbuild.config import SparkConfig
    from witbuild.download import DownloadConfig
    from witbuild.spark import get_session

    session = get_session(SparkConfig(master="local[2]", app_name="witbuild-tests",
                                      conf={"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"}),
                          executor_env=DownloadConfig().opencv_env)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def shared_warc() -> Path:
    """../shared/data/warc, the real Common Crawl and ClueWeb samples. When absent, the tests that need them skip;
    under CI (the environment variable CI set, not to 0 or false) they fail: a CI run never passes unread."""
    if not SHARED_WARC.is_dir():
        why = f"real WARC samples not found at {SHARED_WARC} (they live in ../shared beside the checkout)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"{why}; CI is set, so they are required", pytrace=False)
        pytest.skip(why)
    return SHARED_WARC


def job_command(*args: str, master: str = "local[2]", spark_args: tuple[str, ...] = ()) -> list[str]:
    return [str(VENV_BIN / "spark-submit"), "--master", master, *spark_args, str(ROOT / "jobs" / "build_wit.py"),
            *args]


def run_job(*args: str, timeout: float = 300, master: str = "local[2]",
            spark_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """``spark-submit jobs/build_wit.py ARGS`` in a subprocess, as a user runs it."""
    cmd = job_command(*args, master=master, spark_args=spark_args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=os.environ.copy())


DEMO_BUILD_PAGES = 600  # enough for several hundred digit pairs; the whole build takes ~2 minutes on 2 cores
MEMORY_1G = ("--driver-memory", "1g", "--executor-memory", "1g")
# the demo build's port is fixed (witbuild.demo.DEMO_PORT) so that its dataset, and the training tests' figures,
# are the same on every run; another test session's demo build may hold the port for a few minutes: wait for it
DEMO_PORT_WAIT_S = 900


@dataclass
class DemoBuild:
    """A finished build of the demo web (configs/demo.yaml): what tests of the dataset and of training read."""

    build: Path  # the build output; the dataset is build/stages/finalize (*.tar, index.parquet/, sizes.json)
    eval_dir: Path  # the held-out digits: <label>/<index>.png and zeroshot.json
    stdout: str  # what the job printed (the funnel)
    pages: list  # the demo web's DemoPage objects, to tell what each image URL shows
    site: str  # scheme://host:port the pages were served under


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> DemoBuild:
    """The demo web (600 pages) served at the demo's fixed origin (127.0.0.1:DEMO_PORT) while the real job builds
    a dataset from its WARC file with configs/demo.yaml, as ``witbuild demo`` does; the server is stopped once the
    build ends. The fixed origin makes it the same build on every run, so the tests that train on it see the
    dataset their thresholds were measured on."""
    import errno
    import time

    from witbuild.demo.eval_images import write_eval_digits
    from witbuild.demo.server import DEMO_PORT, DemoWebServer, demo_job_settings
    from witbuild.demo.web import write_warc

    root = tmp_path_factory.mktemp("demo")
    eval_dir = root / "eval" / "digits"
    write_eval_digits(eval_dir)
    (root / "web").mkdir()
    warc = root / "web" / "demo-00000.warc.gz"
    deadline = time.monotonic() + DEMO_PORT_WAIT_S
    while True:
        try:
            server = DemoWebServer(n_pages=DEMO_BUILD_PAGES, seed=0, port=DEMO_PORT)
            break
        except OSError as exc:  # never another port: the build, and every figure the tests expect, would differ
            if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                pytest.fail(f"cannot serve the demo web on 127.0.0.1:{DEMO_PORT}: {exc} (waited "
                            f"{DEMO_PORT_WAIT_S}s for another demo build to release it)", pytrace=False)
            time.sleep(5)
    with server as web:
        pages = list(web.pages.values())
        write_warc(pages, warc)
        proc = run_job("--config", str(ROOT / "configs" / "demo.yaml"), "--input", str(warc),
                       "--output", str(root / "build"), *demo_job_settings(DEMO_BUILD_PAGES),
                       spark_args=MEMORY_1G, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return DemoBuild(root / "build", eval_dir, proc.stdout, pages, web.site)
