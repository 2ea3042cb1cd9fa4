"""The build under spark-submit on a cluster, from the driver's side: spark-submit's ``--master`` and ``--conf``
reach the session, paths executors read are absolute or refused, speculation is refused, task counters that went
missing fail the stage, and a failed Spark job is one ``error:`` line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from py4j.protocol import Py4JJavaError

from tests.conftest import VENV_BIN, job_command
from witbuild import job
from witbuild.config import load_config
from witbuild.demo.web import generate_pages, write_warc
from witbuild.spark import CountsMissing, absolute_local, counted, is_local_master, read_task_counts

CLUSTER = "spark://127.0.0.1:7077"  # never contacted: the checks are functions of the master's name


def tiny_warc(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    warc = folder / "demo.warc.gz"
    write_warc(list(generate_pages(20, seed=1)), warc)
    return warc


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_master_is_the_sessions_master(tmp_path):
    """get_session() under ``spark-submit --master local[1]`` gives a local[1] session, not local[*]."""
    script = tmp_path / "which_master.py"
    script.write_text("from witbuild.spark import get_session\nspark = get_session()\n"
                      "print('master:', spark.sparkContext.master)\nspark.stop()\n")
    proc = subprocess.run([str(VENV_BIN / "spark-submit"), "--master", "local[1]", str(script)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "master: local[1]" in proc.stdout.splitlines(), proc.stdout


@pytest.mark.slow
@pytest.mark.spark
def test_speculation_from_spark_submit_is_refused_before_any_stage(tmp_path):
    warc = tiny_warc(tmp_path / "web")
    out = tmp_path / "out"
    cmd = job_command("--input", str(warc), "--output", str(out), "--until-stage", "extract", master="local[1]",
                      spark_args=("--conf", "spark.speculation=true"))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    said = proc.stdout + proc.stderr  # spark-submit passes the Python driver's stderr on its stdout
    assert [line.split(":")[1].strip() for line in error_lines(said)] == ["spark.speculation=true is refused"], said
    assert not (out / "stages").exists()


@pytest.mark.slow
@pytest.mark.spark
def test_a_relative_output_on_executors_with_their_own_working_directory(tmp_path):
    """local-cluster's executors run in their own work folders, as a cluster's do: a relative output is made
    absolute in the driver, so the stage's files and its task counters land in the build."""
    warc = tiny_warc(tmp_path / "web")
    env = {**os.environ, "SPARK_WORKER_DIR": str(tmp_path / "work")}
    cmd = job_command("--input", str(warc), "--output", "out", "--until-stage", "extract",
                      master="local-cluster[1,1,1024]", spark_args=("--driver-memory", "1g"))
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    stage = tmp_path / "out" / "stages" / "extract"
    report = json.loads((tmp_path / "out" / "build_report.json").read_text())
    rows = report["stages"]["extract"]["rows_out"]
    assert rows > 0 and pq.read_table(stage).num_rows == rows
    assert report["stages"]["extract"]["events"]["files_read"] == 1
    assert yaml.safe_load((tmp_path / "out" / "build_config.yaml").read_text())["output"] == str(tmp_path / "out")


@pytest.mark.parametrize(("master", "local"), [
    ("local", True), ("local[1]", True), ("local[*]", True), ("local[4,2]", True), ("local[*, 3]", True),
    ("local-cluster[2,1,1024]", False), (CLUSTER, False), ("yarn", False), ("k8s://https://127.0.0.1:6443", False)])
def test_which_masters_run_tasks_in_the_drivers_working_directory(master, local):
    assert is_local_master(master) is local


def test_relative_paths_executors_read_are_refused_on_a_cluster(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "clip.json").write_text("{}")
    cfg = load_config(inputs=["web/a.warc.gz", str(tmp_path / "b.warc.gz"), "s3://bucket/c.warc.gz"], output="out",
                      sets=["langid.model_path=models/lid.176.bin", "download.cache_dir=cache",
                            "clip_score.checkpoint=runs/a/model.pt", "clip_score.model_json=models/clip.json",
                            "clip_score.bpe_vocab=/abs/vocab.txt.gz", "dedup.decontaminate=eval"])
    problem = job.session_problem(CLUSTER, {}, cfg, "finalize")
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"relative paths on a cluster (spark.master {CLUSTER}): ")
    assert problem.endswith("give an absolute path every machine reaches, or a URL")
    for named in ("input.paths web/a.warc.gz", "langid.model_path models/lid.176.bin", "download.cache_dir cache",
                  "clip_score.checkpoint runs/a/model.pt", "clip_score.model_json models/clip.json"):
        assert named in problem
    # absolute paths and URLs are read alike everywhere; the driver reads the decontamination folder itself
    for fine in ("b.warc.gz", "s3://", "vocab", "decontaminate"):
        assert fine not in problem
    assert job.relative_executor_paths(cfg, "extract") == ["input.paths web/a.warc.gz"]
    for local in ("local[2]", "local[*]", "local"):
        assert job.session_problem(local, {}, cfg, "finalize") is None
    named_model = load_config(inputs=["/abs/a.warc.gz"], output="out", sets=["clip_score.checkpoint=/abs/c.pt",
                                                                               "clip_score.model_json=ViT-B-32",
                                                                               "clip_score.bpe_vocab=/abs/v.gz"])
    assert job.session_problem(CLUSTER, {}, named_model, "finalize") is None  # a trainer model name, not a file


def test_speculation_is_refused_in_any_spelling(tmp_path):
    cfg = load_config(inputs=["/abs/a.warc.gz"], output=str(tmp_path / "out"))
    for value in ("true", "True", " TRUE "):
        problem = job.session_problem("local[2]", {"spark.speculation": value}, cfg, "finalize")
        assert problem and problem.startswith("spark.speculation=true is refused: the download (img2dataset)")
    assert job.session_problem("local[2]", {"spark.speculation": "false"}, cfg, "finalize") is None


def test_the_output_and_the_crawl_folder_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(inputs=["web/a.warc.gz"], output="out/", sets=["crawl.warc_dir=crawl"])
    job.absolute_execution_paths(cfg)
    assert (cfg.output, cfg.crawl.warc_dir) == (str(tmp_path / "out"), str(tmp_path / "crawl"))
    assert cfg.input.paths == ["web/a.warc.gz"]  # fingerprinted as spelt: a clone elsewhere redoes nothing
    assert absolute_local("s3://bucket/out") == "s3://bucket/out"


def _count_rows(batches, counts):
    for batch in batches:
        counts.rows_in += batch.num_rows
        counts.rows_out += batch.num_rows
        yield batch


@pytest.mark.spark
def test_counters_a_task_stored_out_of_the_drivers_reach_fail_the_stage(spark, tmp_path):
    counts_dir = str(tmp_path / "counts")
    (spark.range(40, numPartitions=4).mapInArrow(counted(_count_rows, counts_dir), "id long")
     .write.mode("overwrite").parquet(str(tmp_path / "rows")))
    assert read_task_counts(counts_dir).rows_out == 40
    (tmp_path / "counts" / "part-000002.json").unlink()  # as if an executor wrote it on its own machine
    with pytest.raises(CountsMissing, match=r"^1 of the stage's Spark tasks stored their counters where the driver "
                       r"cannot read them \(partitions 2; expected in "):
        read_task_counts(counts_dir)


# Py4J's text of a job whose Python worker was killed (Spark 4, abridged: each "at" line stands for dozens)
CRASH = """An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 3 in stage 7.0 failed 4 times, most recent \
failure: Lost task 3.3 in stage 7.0 (TID 41) (127.0.0.1 executor 1): org.apache.spark.SparkException: Python worker \
exited unexpectedly (crashed). Consider setting 'spark.sql.execution.pyspark.udf.faulthandler.enabled' or\
'spark.python.worker.faulthandler.enabled' configuration to 'true' for the better Python traceback.
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator$$anonfun$1.applyOrElse(PythonRunner.scala:624)
Caused by: java.io.EOFException
\tat java.base/java.io.DataInputStream.readInt(DataInputStream.java:386)
\t... 22 more
Driver stacktrace:
\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2935)
Caused by: org.apache.spark.SparkException: Python worker exited unexpectedly (crashed). Consider setting \
'spark.sql.execution.pyspark.udf.faulthandler.enabled' or'spark.python.worker.faulthandler.enabled' configuration to \
'true' for the better Python traceback.
\t... 1 more
Caused by: java.io.EOFException
\t... 22 more
"""
# PySpark's text of a Python exception raised in a task
RAISED = """An exception was thrown from the Python worker:
Traceback (most recent call last):
  File "/x/pyspark/worker.py", line 4327, in invoke_udf
    run_process()
  File "/work/main/witbuild/stages/finalize.py", line 309, in _finish_shard
    raise RuntimeError(f"finalize: {shard}: {written} images written for {len(keys)} index rows")
RuntimeError: finalize: 00005.tar: 19 images written for 40 index rows
"""
# a Java failure with a cause that says why
JAVA = """An error occurred while calling o87.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 2.0 failed 1 times, most recent \
failure: Lost task 0.0 in stage 2.0 (TID 2) (localhost executor driver): org.apache.spark.SparkException: \
[TASK_WRITE_FAILED] Task failed while writing rows.
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:1)
Caused by: java.io.IOException: Connection reset by peer
Caused by: org.apache.hadoop.fs.FileAlreadyExistsException: /out/stages/_tmp/extract/part-00000.parquet already exists
\t... 3 more
"""


class JavaFailure(Py4JJavaError):
    """A Py4JJavaError whose Java text is given (a real one asks the JVM for it)."""

    def __init__(self, text: str | None, errmsg: str = "An error occurred while calling o1.run.") -> None:
        Exception.__init__(self, errmsg)
        self.errmsg, self.text = errmsg, text

    def __str__(self) -> str:
        if self.text is None:
            raise ConnectionError("the JVM is gone")
        return self.text


@pytest.mark.parametrize(("exc", "said"), [
    (JavaFailure(CRASH), "a Python worker exited unexpectedly (crashed): killed, out of memory or a native library's "
     "crash (task 3 in stage 7.0 failed 4 times, last on 127.0.0.1 executor 1)"),
    (RuntimeError(RAISED), "RuntimeError: finalize: 00005.tar: 19 images written for 40 index rows"),
    (JavaFailure(JAVA), "FileAlreadyExistsException: /out/stages/_tmp/extract/part-00000.parquet already exists "
     "(task 0 in stage 2.0 failed 1 times, last on localhost executor driver)"),
    (JavaFailure(None), "An error occurred while calling o1.run."),
    (ValueError("download: 2 shards missing"), "download: 2 shards missing"),
])
def test_a_spark_failure_is_its_innermost_message_on_one_line(exc, said):
    assert job._one_line(exc, limit=500) == said


class FakeContext:
    master = "local[2]"

    def getConf(self):
        return self

    def getAll(self):
        return []


class FakeSpark:
    sparkContext = FakeContext()

    def stop(self) -> None:
        pass


def test_a_crashed_python_worker_fails_the_build_on_one_line(tmp_path, monkeypatch, capsys, caplog):
    def fails(*args, **kwargs):
        raise JavaFailure(CRASH)

    monkeypatch.setattr("witbuild.spark.get_session", lambda *a, **k: FakeSpark())
    monkeypatch.setattr("witbuild.pipeline.run_build", fails)
    cfg = load_config(inputs=["/abs/a.warc.gz"], output=str(tmp_path / "out"))
    with caplog.at_level(logging.DEBUG, logger="build_wit"):
        rc = job.build(cfg, argparse.Namespace(until_stage="finalize", from_stage=None))
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("error: build failed: a Python worker exited unexpectedly "
                                                   "(crashed)"), err
    assert "the stage it was in is left unfinished, and a re-run goes on from there" in err
    assert any(r.exc_info and r.levelno == logging.ERROR for r in caplog.records)  # the traceback, in the log
