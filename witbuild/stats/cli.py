"""``witbuild stats PATH``: the command, mounted by ``witbuild/cli.py`` (``app.command("stats")(stats_command)``).

Why a separate module: importing it costs typer only, the heavy imports (pyarrow, rich, matplotlib) happen when the
command runs, so ``witbuild --help`` stays fast; and bad input ends as one line on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import typer

from witbuild.stats.options import TarCheck

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


def stats_command(
    path: str = typer.Argument(..., help="A build output folder (a path or a file: URL, as the build was given "
                               "it), or a folder of img2dataset shards (*.tar, *.parquet, *_stats.json), or a "
                               "build's stages/finalize."),
    json_out: bool = typer.Option(False, "--json", help="Print the report as JSON "
                                  "(schemas/stats_report.schema.json) instead of tables."),
    html: Path | None = typer.Option(None, "--html", help="Also write an HTML report with plots to this file.",
                              dir_okay=False),
    top: int = typer.Option(20, min=1, help="Query list entries listed before and after balancing."),
    tars: TarCheck = typer.Option(TarCheck.quick, "--tars", help="Tar check: quick (size, end marker, first "
                                  "headers), full (every header; exact formats), none."),
    workers: int = typer.Option(0, min=0, help="Threads reading Parquet (0: one per CPU, at most 8)."),
) -> None:
    """Statistics of a built dataset: totals, funnel, downloads, captions, images, queries, duplicates."""
    from witbuild.stats.collect import StatsError, collect_stats

    if html is not None and not html.resolve().parent.is_dir():  # fail before a long scan, not after it
        typer.echo(f"error: {html}: its folder {html.resolve().parent} does not exist", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    started = time.perf_counter()
    try:
        report = collect_stats(local_folder(path), top=top, tar_check=tars, workers=workers)
        if html is not None:
            from witbuild.stats.html import write_html

            write_html(report, html)
    except StatsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except OSError as exc:  # e.g. the HTML file's folder is not writable
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    log.debug("stats of %s in %.2f s", path, time.perf_counter() - started)
    if json_out:
        sys.stdout.write(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    else:
        from witbuild.stats.render import print_report

        print_report(report)
    if html is not None:
        typer.echo(f"wrote {html}", err=json_out)


def local_folder(path: str) -> Path:
    """The folder a build's ``--output`` named: ``file:/x`` and ``file:///x`` are ``/x``, as the build wrote them;
    another filesystem's URL is a StatsError (stats reads a folder on this machine)."""
    from witbuild.layout import local_path
    from witbuild.stats.collect import StatsError

    local = local_path(path)
    if local is None:
        raise StatsError(f"{path}: stats reads a folder on this machine; copy the build here first")
    return Path(local)


def main() -> None:
    """``python -m witbuild.stats``: the same command without the ``witbuild`` entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = typer.Typer(add_completion=False)
    app.command()(stats_command)
    app()
