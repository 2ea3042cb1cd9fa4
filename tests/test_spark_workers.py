"""witbuild.spark.import_on_executors with local Spark: the import runs in the Python workers, and the call does not
wait for it."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from witbuild.spark import import_on_executors


def test_import_on_executors_imports_in_the_workers_without_waiting(spark, tmp_path: Path) -> None:
    name = f"import_probe_{uuid.uuid4().hex}"
    module = tmp_path / f"{name}.py"
    # the import blocks until the test releases it, so the call can only have returned without waiting for it
    module.write_text(
        "import os, pathlib, time\n"
        f"d = pathlib.Path({str(tmp_path)!r})\n"
        "(d / f'started-{os.getpid()}').touch()\n"
        "while not (d / 'release').exists():\n"
        "    time.sleep(0.02)\n"
        "(d / f'done-{os.getpid()}').touch()\n")
    spark.sparkContext.addPyFile(str(module))
    import_on_executors(spark, ("no_such_module_anywhere", name))  # a failing import stops nothing else
    assert not list(tmp_path.glob("done-*"))
    (tmp_path / "release").touch()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("done-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = {int(p.name.split("-")[1]) for p in tmp_path.glob("done-*")}
    started = {int(p.name.split("-")[1]) for p in tmp_path.glob("started-*")}
    assert done and done <= started and os.getpid() not in started  # in the workers, never in the driver
