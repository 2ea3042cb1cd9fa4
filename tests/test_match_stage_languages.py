"""The match stage of a build in another language folds captions as its query list's words are stored: German and
Turkish builds written with warcio (ß, dotted and dotless i, capitals) match wordfreq's words through Spark, as the
matchers do in tests/test_non_english_querylist.py. (English folding would give German the same words, and Turkish
``i̇stanbul`` and ``altinda``: the stage must fold in the list's language.)"""

from __future__ import annotations

import io
import json
import uuid

import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from witbuild.config import load_config
from witbuild.pipeline import run_build

GERMAN = [
    "Eine große Straße im Winter mit viel Schnee",
    "GROSSE STRASSE IM WINTER MIT VIEL SCHNEE",
    "Der weiße Hund läuft über die Straße zum Fluss",
    "Zwei Kinder spielen Fußball auf der grünen Wiese",
]
TURKISH = [
    "Akşam ışıkları altında İstanbul boğazı ve köprü",
    "AKŞAM IŞIKLARI ALTINDA İSTANBUL BOĞAZI VE KÖPRÜ",
]
#: language, wordlist, captions, words each caption must match (by index; both spellings of one sentence alike)
CASES = [
    ("de", "large", GERMAN, [{"grosse", "strasse", "winter", "schnee"}, {"grosse", "strasse", "winter", "schnee"},
                             {"weisse", "strasse"}, {"fussball"}]),
    ("tr", "best", TURKISH, [{"akşam", "altında", "istanbul", "köprü"}, {"akşam", "altında", "istanbul", "köprü"}]),
]


def write_warc(path, captions: list[str], language: str) -> None:
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i, alt in enumerate(captions):
            url = f"http://127.0.0.1:9/seite{i}.html"
            body = (f'<html lang="{language}"><body><img src="/bild{i}.jpg" alt="{alt}"></body></html>').encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            fixed = {"WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>",
                     "WARC-Date": "2026-01-01T00:00:00Z"}
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=headers, warc_headers_dict=fixed))


@pytest.mark.spark
@pytest.mark.parametrize(("language", "wordlist", "captions", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_build_in_another_language_matches_its_words_as_written(spark, tmp_path, language, wordlist, captions,
                                                                   words) -> None:
    write_warc(tmp_path / "web.warc.gz", captions, language)
    out = tmp_path / "out"
    cfg = load_config(inputs=[str(tmp_path / "web.warc.gz")], output=str(out),
                      sets=[f"querylist.language={language}", f"querylist.wordlist={wordlist}",
                            f"langid.allowed=[{language}]", "querylist.bigrams=false"])
    results = {r.name: r.counts for r in run_build(spark, cfg, until_stage="match")}
    folding = f"wordfreq preprocess_text, {language}"
    assert results["match"].info["caption_folding"] == folding
    assert json.loads((out / "querylist" / "manifest.json").read_text())["caption_folding"] == folding
    entries = (out / "querylist" / "entries.txt").read_text(encoding="utf-8").split("\n")
    rows = pq.read_table(out / "stages" / "match", columns=["text", "matched"]).to_pylist()
    matched = {r["text"]: {entries[i] for i in r["matched"]} for r in rows}
    assert set(matched) == set(captions)
    for caption, expected in zip(captions, words, strict=True):
        assert expected <= matched[caption], (caption, expected - matched[caption])
