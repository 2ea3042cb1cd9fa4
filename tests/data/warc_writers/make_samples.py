"""Regenerate the committed samples: serve the test site, archive it with the real tools, write the manifest.

Run from the repository root with the project's interpreter (GNU Wget and gzip on PATH)::

    .venv/bin/python tests/data/warc_writers/make_samples.py

Every file here is replaced; the manifest carries the port the site had, which is in the files' URLs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from tests.helpers.warc_site import FILES, WarcSite, write_all  # noqa: E402


def main() -> None:
    wget = subprocess.run(["wget", "--version"], capture_output=True, text=True, check=True).stdout.split("\n")[0]
    with WarcSite() as site:
        written = write_all(site, HERE)
        manifest = {**site.manifest(), "files": {name: written[name].to_json() for name in FILES}}
    manifest["written_with"] = wget
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    for name in FILES:
        print(f"{name:32} {(HERE / name).stat().st_size:>7,} bytes  {written[name].writer}")


if __name__ == "__main__":
    main()
