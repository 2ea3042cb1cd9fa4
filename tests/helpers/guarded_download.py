"""Images fetched from 127.0.0.1 by the real img2dataset downloader, as the download stage wraps it."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def download_guarded(urls: list[str], captions: list[str], out: Path, side: int, **guard) -> dict[str, Image.Image]:
    """{caption: stored image} of one shard (``out/00000.*``) that ``img2dataset.download`` writes within
    ``img2dataset_guarded(["127.0.0.1"], sign=True, **guard)``, resized to ``side`` px (keep_ratio)."""
    import img2dataset

    from witbuild.download import img2dataset_guarded

    listed = out.with_suffix(".parquet")
    pq.write_table(pa.table({"url": urls, "text": captions}), listed)
    with img2dataset_guarded(["127.0.0.1"], sign=True, **guard):
        img2dataset.download(url_list=str(listed), input_format="parquet", url_col="url", caption_col="text",
                             output_folder=str(out), output_format="webdataset", distributor="multiprocessing",
                             processes_count=1, thread_count=4, image_size=side, resize_mode="keep_ratio",
                             min_image_size=10, compute_hash="sha256", enable_wandb=False)
    with tarfile.open(out / "00000.tar") as tar:
        return {json.loads(tar.extractfile(n[:-4] + ".json").read())["caption"]:
                Image.open(io.BytesIO(tar.extractfile(n).read())) for n in tar.getnames() if n.endswith(".jpg")}
