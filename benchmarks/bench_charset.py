"""Pages that name no encoding: how often each reader gets their text right, and what detection costs.

On the 396 generated pages of ``tests/helpers/undeclared_pages.py`` (44 language and encoding cases, each with a
caption alone, a 15-word and a 150-word paragraph, 3 seeds; no header, ``<meta>`` or BOM names the encoding), a
page counts as right when the image's alt text comes out as it was written. Readers:

* ``witbuild``: ``witbuild.sources.html.decode_page`` then ``page_images``, as extract reads a page;
* ``resiliparse default``: ``detect_encoding(body, max_len=65536, from_html_meta=True)`` with its own WHATWG name
  mapping (UTF-8 for names it lacks), which extract used before;
* ``charset_normalizer``: ``from_bytes(body).best()`` (requests' detector; windows-1252 when it finds nothing);
* ``chromium``: headless Chromium loading the page from 127.0.0.1 as a top-level document, scripts off; its
  ``alt`` as the DOM holds it (skipped with ``--no-browser`` or without Chromium).

Also prints ``decode_page``'s time per page on the corpus (best of ``--repeat``), the detection's cost.

    .venv/bin/python benchmarks/bench_charset.py
    .venv/bin/python benchmarks/bench_charset.py --no-browser

Writes ``benchmarks/_data/bench_charset.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _machine import machine_info

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resiliparse.parse.encoding import detect_encoding  # noqa: E402

from tests.helpers.cdp import Chromium, find_chromium  # noqa: E402
from tests.helpers.undeclared_pages import UndeclaredPage, undeclared_pages  # noqa: E402
from witbuild.counters import StageCounts  # noqa: E402
from witbuild.demo.images import ImageServer  # noqa: E402
from witbuild.sources.html import _WHATWG_DECODERS, decode_page, page_images  # noqa: E402

DATA_DIR = ROOT / "benchmarks" / "_data"


def alt_of(text: str) -> str:
    refs, _ = page_images(text, "http://example.org/", StageCounts(), keep_empty_text=True)
    return refs[0].text if refs else ""


def witbuild_alt(page: UndeclaredPage) -> str:
    return alt_of(decode_page(page.body, None)[0])


def resiliparse_default_alt(page: UndeclaredPage) -> str:
    encoding = detect_encoding(page.body, max_len=65536, from_html_meta=True)
    return alt_of(page.body.decode(_WHATWG_DECODERS.get(encoding, encoding), "replace"))


def charset_normalizer_alt(page: UndeclaredPage) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(page.body).best()
    return alt_of(page.body.decode(best.encoding if best else "cp1252", "replace"))


def chromium_alts(pages: list[UndeclaredPage]) -> list[str] | None:
    binary = find_chromium()
    if binary is None:
        return None

    with ImageServer() as server, tempfile.TemporaryDirectory() as profile:
        for i, page in enumerate(pages):
            server.add(f"/page/{i}", page.body, "text/html")  # no charset: the browser detects it
        browser = Chromium(binary, Path(profile))
        try:
            return [" ".join(browser.evaluate_page(server.url(f"/page/{i}"), "document.images[0].alt").split())
                    for i in range(len(pages))]
        finally:
            browser.close()


def seconds_per_page(pages: list[UndeclaredPage], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for page in pages:
            decode_page(page.body, None)
        best = min(best, time.perf_counter() - start)
    return best / len(pages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-browser", action="store_true", help="leave Chromium out")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    pages = undeclared_pages()
    wanted = [" ".join(p.caption.split()) for p in pages]
    readers = {"witbuild": [witbuild_alt(p) for p in pages],
               "resiliparse default": [resiliparse_default_alt(p) for p in pages],
               "charset_normalizer": [charset_normalizer_alt(p) for p in pages]}
    browser = None if args.no_browser else chromium_alts(pages)
    if browser is not None:
        readers["chromium"] = browser

    rows: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for i, page in enumerate(pages):
        case = f"{page.language} {page.codec}"
        for name, alts in readers.items():
            for key in (case, f"{page.size} (all cases)", "all"):
                rows[key][name][0] += alts[i] == wanted[i]
                rows[key][name][1] += 1
    names = list(readers)
    print(f"{'case':<22}" + "".join(f"{n:>22}" for n in names))
    for key, by_reader in rows.items():
        if key == "all" or key.endswith("(all cases)"):
            continue
        print(f"{key:<22}" + "".join(f"{by_reader[n][0]:>16} / {by_reader[n][1]:<3}" for n in names))
    print("-" * (22 + 22 * len(names)))
    for key in [k for k in rows if k.endswith("(all cases)")] + ["all"]:
        print(f"{key:<22}" + "".join(f"{rows[key][n][0]:>16} / {rows[key][n][1]:<3}" for n in names))
    per_page = seconds_per_page(pages, args.repeat)
    mean_kb = sum(len(p.body) for p in pages) / len(pages) / 1024
    print(f"\ndecode_page: {per_page * 1e6:.1f} µs per page ({mean_kb:.1f} kB mean), best of {args.repeat}")

    DATA_DIR.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine_info(), "pages": len(pages), "decode_page_us_per_page": round(per_page * 1e6, 2),
              "right": {key: {n: by[n][0] for n in names} for key, by in rows.items()}}
    (DATA_DIR / "bench_charset.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
