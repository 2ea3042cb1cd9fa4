"""The build config (YAML + overrides, validation) and the schemas (one source, two renderings)."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from witbuild import schemas
from witbuild.config import BuildConfig, load_config, split_inputs
from witbuild.sources.inputs import InputError, expand_inputs


def test_split_inputs_tells_files_from_seeds():
    paths, seeds = split_inputs([
        "crawl/*.warc.gz", "s3://b/x.warc.wat.gz", "https://data.commoncrawl.org/a/b.warc.gz",
        "https://example.org/", "http://127.0.0.1:8000/index.html",
    ])
    assert paths == ["crawl/*.warc.gz", "s3://b/x.warc.wat.gz", "https://data.commoncrawl.org/a/b.warc.gz"]
    assert seeds == ["https://example.org/", "http://127.0.0.1:8000/index.html"]


def test_yaml_then_flags_then_sets(tmp_path):
    cfg_file = tmp_path / "build.yaml"
    cfg_file.write_text("output: out-a\ninput:\n  paths: [a.warc.gz]\nextract:\n  max_page_bytes: 5000\n")
    cfg = load_config(cfg_file)
    assert (cfg.output, cfg.input.paths, cfg.extract.max_page_bytes) == ("out-a", ["a.warc.gz"], 5000)
    cfg = load_config(cfg_file, inputs=["b.warc", "https://x.org/"], output="out-b",
                      sets=["extract.keep_empty_text=true", "network.allow_addresses=['127.0.0.1']"])
    assert cfg.output == "out-b" and cfg.input.paths == ["b.warc"] and cfg.input.seeds == ["https://x.org/"]
    assert cfg.extract.keep_empty_text is True and cfg.network.allow_addresses == ["127.0.0.1"]
    # the saved config loads back to the same model
    saved = tmp_path / "saved.yaml"
    saved.write_text(cfg.dump_yaml())
    assert load_config(saved) == cfg


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["extract.max_page_bytes=3"], "max_page_bytes"),
        (["extract.max_text_chars=500"], "filter.max_chars"),
        (["match.max_entries=10"], "querylist.max_entries"),
        (["match.max_entry_chars=10"], "querylist.max_entry_chars"),
        (["extract.no_such_field=1"], "no_such_field"),
        (["extract.url_attrs=[href]"], "url_attrs"),
        (["crawl.delay_seconds=-1"], "delay_seconds"),
        # a misspelt pair column failed img2dataset after every earlier stage; a list without uid lost every
        # sample's link to its pair (index.parquet's uid all ''); crawl_date failed img2dataset's reader
        (["download.extra_columns=[uid, pageurl]"], "not a column the download can carry: pageurl"),
        (["download.extra_columns=[page_url]"], "must include uid"),
        (["download.extra_columns=[uid, crawl_date]"], "not a column the download can carry: crawl_date"),
        (["download.extra_columns=[uid, lang, lang]"], "named twice"),
    ],
)
def test_invalid_values_are_errors_naming_the_field(sets, message):
    with pytest.raises(ValidationError, match=message):
        load_config(inputs=["a.warc.gz"], output="o", sets=sets)


def test_a_build_needs_input_and_output():
    with pytest.raises(ValidationError, match="no input"):
        BuildConfig(output="o")
    with pytest.raises(ValidationError, match="output"):
        load_config(inputs=["a.warc.gz"])


def test_expand_inputs(tmp_path):
    (tmp_path / "a.warc.gz").write_bytes(b"x")
    (tmp_path / "b.warc.wat.gz").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert expand_inputs([str(tmp_path / "*.gz")]) == [str(tmp_path / "a.warc.gz"), str(tmp_path / "b.warc.wat.gz")]
    assert expand_inputs([str(tmp_path)]) == [str(tmp_path / "a.warc.gz"), str(tmp_path / "b.warc.wat.gz")]
    assert expand_inputs([str(tmp_path / "a.warc.gz"), str(tmp_path / "a.warc.gz")]) == [str(tmp_path / "a.warc.gz")]
    with pytest.raises(InputError) as err:
        expand_inputs([str(tmp_path / "missing.warc.gz"), str(tmp_path / "*.warc"), str(tmp_path / "a.warc.gz")])
    assert "missing.warc.gz" in str(err.value) and "matches no file" in str(err.value)


def test_one_file_under_several_names_is_read_once(tmp_path, monkeypatch, caplog):
    """A symlinked folder, a hard link, a relative path and ``..`` name one file: read twice, its pairs would count
    twice in every stage's funnel."""
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "a.warc.gz").write_bytes(b"x")
    (tmp_path / "web" / "b.warc.gz").write_bytes(b"y")
    (tmp_path / "link").symlink_to(tmp_path / "web")
    (tmp_path / "hard.warc.gz").hardlink_to(tmp_path / "web" / "a.warc.gz")
    monkeypatch.chdir(tmp_path)
    first = [str(tmp_path / "web" / "a.warc.gz"), str(tmp_path / "web" / "b.warc.gz")]
    named = [str(tmp_path / "web"), str(tmp_path / "link"), "web/a.warc.gz", "link/../web/b.warc.gz",
             str(tmp_path / "hard.warc.gz"), f"file://{tmp_path}/web/a.warc.gz"]
    with caplog.at_level("WARNING", logger="witbuild.sources.inputs"):
        assert expand_inputs(named) == first
    assert sum("same file" in r.getMessage() for r in caplog.records) == 6
    (tmp_path / "x").mkdir()  # "::" is part of a file's name, not a chain of URLs
    for name in ("x::1.warc.gz", "x::2.warc.gz"):
        (tmp_path / name).write_bytes(b"z")
    assert expand_inputs(["x::1.warc.gz", "x::2.warc.gz"]) == ["x::1.warc.gz", "x::2.warc.gz"]
    (tmp_path / "c.warc.gz").write_bytes(b"y")  # same bytes, another file: two inputs
    assert expand_inputs(["web/b.warc.gz", "c.warc.gz"]) == ["web/b.warc.gz", "c.warc.gz"]


def test_candidates_schema_renders_to_arrow_and_spark():
    s = schemas.load("candidates")
    arrow = s.arrow()
    assert arrow.field("record_offset").type == pa.int64()
    assert arrow.field("crawl_date").type == pa.timestamp("us", tz="UTC")
    assert not arrow.field("uid").nullable and arrow.field("page_lang").nullable
    spark = s.spark()
    assert [f.name for f in spark.fields] == s.names
    assert spark["record_offset"].dataType.typeName() == "long"
    assert spark["crawl_date"].dataType.typeName() == "timestamp"
    assert "candidates" in schemas.available()


def test_schema_table_helper_rejects_missing_columns():
    with pytest.raises(ValueError, match="missing columns"):
        schemas.load("candidates").table({"uid": ["x"]})


def test_shipped_configs_are_valid():
    from pathlib import Path

    from witbuild.experiment.config import check_train_config, check_variants, load_experiment_config

    configs = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))
    assert configs
    experiments = [p for p in configs if p.name.startswith("experiment")]
    assert experiments
    for path in configs:
        if path in experiments:  # an experiment config names a build config and variants of it
            exp = load_experiment_config(path)
            check_variants(exp, ["any.warc.gz"])
            check_train_config(exp)
            continue
        cfg = load_config(path)
        assert cfg.output and (cfg.input.paths or cfg.input.seeds)


def test_png_takes_a_compression_level_img2dataset_accepts():
    """jpg and webp take a quality 0-100, png a zlib level 0-9: the default quality 95, given to img2dataset's
    resizer for png, fails every download; png's default is 9, and a png quality above 9 is refused up front."""
    from img2dataset.resizer import ResizeMode, Resizer

    def resizer(quality: int) -> Resizer:
        return Resizer(image_size=64, resize_mode=ResizeMode.keep_ratio, resize_only_if_bigger=True,
                       encode_format="png", encode_quality=quality)

    with pytest.raises(ValueError, match="between 0 and 9"):
        resizer(95)
    cfg = load_config(inputs=["a.warc.gz"], output="o", sets=["download.encode_format=png"])
    assert cfg.download.encode_quality == 9
    resizer(cfg.download.encode_quality)
    assert load_config(inputs=["a.warc.gz"], output="o").download.encode_quality == 95  # jpg's default as before
    with pytest.raises(ValidationError, match="png takes a compression level 0-9"):
        load_config(inputs=["a.warc.gz"], output="o", sets=["download.encode_format=png", "download.encode_quality=10"])


def test_every_build_setting_is_described():
    """Each field says what it does (the description the config files and --help point to), in every section."""
    import typing

    from pydantic import BaseModel

    def undescribed(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            kinds = [field.annotation, *typing.get_args(field.annotation)]
            section = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
            if section is not None:
                out += undescribed(section, f"{prefix}{name}.")
            elif not field.description:
                out.append(prefix + name)
        return out

    assert undescribed(BuildConfig) == []
