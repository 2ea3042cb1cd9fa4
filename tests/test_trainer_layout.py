"""The trainer reads a build folder by the names and image extensions of witbuild.layout, the module the build
writes it by: no file name spelled twice, no image the build keeps and the trainer cannot read."""

from __future__ import annotations

import ast
import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from trainer.data import StreamSpec, TrainStream, image_folder, iter_pairs
from witbuild import layout


def _code_strings(path: Path) -> set[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs}


def test_the_trainer_takes_the_build_folder_names_from_the_layout_module():
    names = {layout.SIZES_FILE, layout.INDEX_DIR, *(f".{e}" for e in layout.IMAGE_EXTS)}
    for path in sorted((ROOT / "trainer").glob("*.py")):
        spelled = {s for s in _code_strings(path) if any(name in s for name in names)}
        assert not spelled, f"{path.name} spells {sorted(spelled)}: import it from witbuild.layout"


@pytest.mark.parametrize("ext, fmt", [("bmp", "BMP"), ("gif", "GIF"), ("tif", "TIFF")])
def test_images_under_every_layout_extension_train_and_evaluate(tmp_path, ext, fmt):
    """A sample whose image is .bmp, .gif or .tif (the build's finalize reads these too) is trained on and scored."""
    assert ext in layout.IMAGE_EXTS
    with tarfile.open(tmp_path / "00000.tar", "w") as tf:
        for i in range(6):
            buf = io.BytesIO()
            Image.new("RGB", (24, 20), (40 * i, 90, 200)).save(buf, fmt)
            for name, payload in ((f"{i:04d}.{ext}", buf.getvalue()), (f"{i:04d}.txt", f"picture {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    shards = [tmp_path / "00000.tar"]
    assert [key for _, _, key in iter_pairs(shards)] == [f"{i:04d}" for i in range(6)]
    spec = StreamSpec(shards=[str(shards[0])], batch_size=6, batches_per_worker=1, image_size=16, shuffle_buffer=6)
    images, texts, skipped = next(iter(TrainStream(spec, tokenizer=list)))
    assert images.shape == (6, 3, 16, 16) and set(texts) <= {f"picture {i}" for i in range(6)} and not skipped
    folder = tmp_path / "labelled" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / f"x.{ext}", fmt)
    assert [p.name for p in image_folder(tmp_path / "labelled")[0]] == [f"x.{ext}"]
