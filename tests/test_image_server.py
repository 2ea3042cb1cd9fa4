"""The demo image server over real HTTP, and the real img2dataset run against it (no mocks).

Why: the download stage has to meet the web's failure modes (stalls, bombs, loops, opt-outs, odd formats) in tests
that run offline; these tests pin what the server sends and what img2dataset 1.47 makes of each case.
"""

from __future__ import annotations

import ast
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from witbuild.demo.images import (
    BOMB_SIDE,
    FAULT_EXPECT,
    FAULTS,
    SKIMAGE_NAMES,
    ImageServer,
    digit_count,
    digit_image,
    digit_label,
    draw_image,
    encode,
    fault_url_list,
    png_size,
    skimage_image,
)

PIXEL_LIMIT = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS; the bomb has 400,000,000


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as srv:
        yield srv


def _get(srv: ImageServer, path: str, **kw: object) -> requests.Response:
    kw.setdefault("timeout", 5)
    return requests.get(srv.url(path), **kw)  # type: ignore[arg-type]


def _open(body: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(body))
    img.load()
    return img


# ---------------------------------------------------------------------------------------------------- image makers


def test_makers_are_deterministic_and_varied() -> None:
    a, b, c = draw_image(3), draw_image(3), draw_image(4)
    assert a.mode == "RGB" and a.size == (256, 192)
    assert a.tobytes() == b.tobytes() != c.tobytes()
    assert len(np.unique(np.asarray(a).reshape(-1, 3), axis=0)) > 20  # shapes and a gradient, not a flat fill
    assert draw_image(5, (640, 480)).size == (640, 480)

    from sklearn.datasets import load_digits

    assert digit_count() == 1797
    assert [digit_label(i) for i in range(10)] == list(load_digits().target[:10])
    d = digit_image(0, (128, 128))
    assert d.mode == "RGB" and d.size == (128, 128)
    px = np.asarray(d)
    assert px[0, 0].tolist() == [255, 255, 255] and px.min() < 60  # light paper margin, dark ink


def test_skimage_samples_load_offline() -> None:
    for name in SKIMAGE_NAMES:
        img = skimage_image(name)
        assert img.mode == "RGB" and min(img.size) >= 64, name
    with pytest.raises(KeyError):
        skimage_image("eagle")  # needs a download


def test_encode_formats() -> None:
    img = draw_image(1)
    for fmt, pil in [("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"), ("gif", "GIF")]:
        assert _open(encode(img, fmt)).format == pil
    assert _open(encode(img.convert("RGBA"), "jpg")).mode == "RGB"  # JPEG cannot hold alpha


# ---------------------------------------------------------------------------------------------------- HTTP


def test_serves_generated_and_registered_images(server: ImageServer) -> None:
    cases = {
        "/gen/7.jpg": ("JPEG", "image/jpeg", (256, 192)),
        "/gen/7.png?w=100&h=50": ("PNG", "image/png", (100, 50)),
        "/gen/7.webp": ("WEBP", "image/webp", (256, 192)),
        "/gen/7.gif": ("GIF", "image/gif", (256, 192)),
        "/digit/42.png": ("PNG", "image/png", (224, 224)),
        "/sk/astronaut.jpg": ("JPEG", "image/jpeg", (512, 512)),
        "/sk/coffee.webp": ("WEBP", "image/webp", (600, 400)),
        "/img/shapes-0.jpg": ("JPEG", "image/jpeg", (256, 192)),
    }
    for path, (fmt, ctype, size) in cases.items():
        r = _get(server, path)
        assert r.status_code == 200, path
        assert r.headers["Content-Type"] == ctype and int(r.headers["Content-Length"]) == len(r.content), path
        img = _open(r.content)
        assert (img.format, img.size) == (fmt, size), path
    assert _get(server, "/gen/7.jpg").content == _get(server, "/gen/7.jpg").content  # deterministic bytes

    url = server.add("/img/mine.png", encode(draw_image(9), "png"), "image/png", headers={"X-Test": "yes"})
    r = requests.get(url, timeout=5)
    assert r.status_code == 200 and r.headers["X-Test"] == "yes" and _open(r.content).size == (256, 192)
    assert "/img/mine.png" in server.registered

    for missing in ["/nothing", "/gen/x.jpg", "/gen/1.tiff", "/digit/1797.png", "/sk/eagle.jpg", "/gen/1.jpg?w=99999"]:
        assert _get(server, missing).status_code == 404, missing


def test_head_sends_headers_only(server: ImageServer) -> None:
    r = requests.head(server.url("/gen/3.webp"), timeout=5)
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["Content-Length"]) == len(_get(server, "/gen/3.webp").content)


def test_fault_payloads(server: ImageServer) -> None:
    assert _get(server, "/fault/404").status_code == 404

    with pytest.raises((OSError, SyntaxError)):
        _open(_get(server, "/fault/corrupt.jpg").content)
    with pytest.raises(OSError, match="truncated"):
        _open(_get(server, "/fault/truncated.jpg").content)

    r = _get(server, "/fault/bomb.png")
    assert r.headers["Content-Type"] == "image/png"
    assert png_size(r.content) == (BOMB_SIDE, BOMB_SIDE) and len(r.content) < 100_000  # 400 Mpx in < 100 KB
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(r.content))  # Pillow refuses at the header: over twice its 89.5 Mpx limit

    cmyk = _open(_get(server, "/fault/cmyk.jpg").content)
    assert (cmyk.format, cmyk.mode) == ("JPEG", "CMYK")
    gif = Image.open(io.BytesIO(_get(server, "/fault/animated.gif").content))
    assert gif.format == "GIF" and gif.n_frames == 6 and gif.is_animated
    alpha = _open(_get(server, "/fault/alpha.png").content)
    assert alpha.mode == "RGBA" and alpha.getchannel("A").getextrema() == (0, 255)

    r = _get(server, "/fault/noai.jpg")
    assert r.headers["X-Robots-Tag"] == "noai" and _open(r.content).format == "JPEG"

    r = _get(server, "/fault/loop", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == server.url("/fault/loop?hop=1")
    r = _get(server, "/fault/loop?hop=1", allow_redirects=False)
    assert r.status_code == 302 and r.headers["Location"] == server.url("/fault/loop")
    with pytest.raises(requests.TooManyRedirects):
        _get(server, "/fault/loop")

    r = _get(server, "/fault/empty.jpg")
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"
    assert _get(server, "/fault/html.jpg").content.startswith(b"<!doctype html>")
    assert _open(_get(server, "/fault/wide.jpg").content).size == (2000, 50)


def test_stall_times_out_and_ends_when_client_hangs_up(server: ImageServer) -> None:
    # the client's read timeout fires while the body is pending (requests wraps urllib3's ReadTimeoutError)
    with pytest.raises(requests.exceptions.RequestException, match="Read timed out"):
        _get(server, "/fault/stall.jpg", timeout=(2, 0.5))
    deadline = time.monotonic() + 10  # a deadline for the event, well before the stall's own 30 s
    while server.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.busy == 0  # the handler saw the hang-up and returned instead of sleeping 30 s


def test_stall_ends_on_stop() -> None:
    srv = ImageServer(stall_s=30).start()
    sock = socket.create_connection((srv.host, srv.port), timeout=5)
    sock.sendall(b"GET /fault/stall.jpg HTTP/1.0\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 10  # the handler counts itself busy just after the headers it sent
    while srv.busy != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.busy == 1
    srv.stop()
    deadline = time.monotonic() + 10  # a deadline for the event, well before the stall's own 30 s
    while srv.busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.busy == 0
    sock.close()


def test_drip_outlasts_a_per_read_timeout(server: ImageServer) -> None:
    start = time.monotonic()
    r = _get(server, "/fault/drip.jpg", timeout=(2, 1))  # no single read waits 1 s ...
    assert time.monotonic() - start > 2  # ... yet the whole body takes longer than any one timeout
    assert _open(r.content).format == "JPEG"


def test_request_log_and_urls(server: ImageServer) -> None:
    before = len(server.requests)
    t0 = time.time()
    _get(server, "/gen/1.jpg?w=64&h=64")
    path, when = server.requests[before]
    assert path == "/gen/1.jpg?w=64&h=64" and t0 - 1 < when < time.time() + 1
    assert server.url("/a") == server.url("a") == f"http://127.0.0.1:{server.port}/a"


def test_fault_url_list_covers_every_fault(server: ImageServer) -> None:
    rows = fault_url_list(server)
    paths = [u[len(server.base_url):] for u, _ in rows]
    assert [p for p in paths if p.startswith("/fault/")] == list(FAULTS)
    assert set(FAULTS) == set(FAULT_EXPECT)
    good = fault_url_list(server, faults=False)
    assert len(good) >= 12 and all(c for _, c in rows)
    assert {p.split("/")[1] for p in paths} == {"gen", "digit", "sk", "img", "fault"}


# ---------------------------------------------------------------------------------------------------- img2dataset

# What cv2.imdecode did inside img2dataset's Resizer is recorded by wrapping it: the shape it returned, or the
# error it raised. The last line printed is (error img2dataset reports, [what each imdecode call did]).
_BOMB_PROBE = """
import io
import cv2
from witbuild.demo.images import bomb_png
from img2dataset.resizer import Resizer
calls = []
imdecode = cv2.imdecode
def recording_imdecode(*args, **kwargs):
    try:
        img = imdecode(*args, **kwargs)
    except cv2.error as exc:
        calls.append(("raised", str(exc)))
        raise
    calls.append(("decoded", None if img is None else tuple(img.shape[:2])))
    return img
cv2.imdecode = recording_imdecode
resizer = Resizer(image_size=64, resize_mode="border", resize_only_if_bigger=False, max_image_area=%d)
err = resizer(io.BytesIO(bomb_png()))[-1]
print(repr((err, calls)))
"""


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """Child environment: offline albumentations, and wandb's import-time temp folders kept out of /tmp."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    return {**env, "NO_ALBUMENTATIONS_UPDATE": "1", "TMPDIR": str(tmp), **extra}


@pytest.mark.slow
def test_bomb_needs_the_opencv_pixel_limit(tmp_path: Path) -> None:
    """img2dataset checks max_image_area only after cv2.imdecode; only OPENCV_IO_MAX_IMAGE_PIXELS stops it earlier."""
    results = {}
    for label, extra in [("limit", {"OPENCV_IO_MAX_IMAGE_PIXELS": str(PIXEL_LIMIT)}), ("default", {})]:
        out = subprocess.run([sys.executable, "-c", _BOMB_PROBE % PIXEL_LIMIT], capture_output=True, text=True,
                             timeout=120, env=_env(tmp_path / "tmp", **extra), check=True)
        results[label] = ast.literal_eval(out.stdout.strip().splitlines()[-1])
        print(f"bomb with {label} OpenCV pixel limit: {results[label]}")
    err, calls = results["limit"]
    assert "validateInputImageSize" in err  # refused from the header: imdecode raised, nothing was decoded
    assert [kind for kind, _ in calls] == ["raised"] and "validateInputImageSize" in calls[0][1]
    err, calls = results["default"]
    # refused only after imdecode had decoded all 400 Mpx
    assert err == "image area too large" and calls == [("decoded", (BOMB_SIDE, BOMB_SIDE))]


def _tar_members_complete(path: Path) -> list[str]:
    """Member names, after checking each reads back to its declared size and the archive is whole blocks."""
    assert path.stat().st_size % 512 == 0, path
    names = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            assert m.isfile(), m.name
            f = tf.extractfile(m)
            assert f is not None and len(f.read()) == m.size, m.name
            names.append(m.name)
    return names


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")
def test_img2dataset_against_the_server(server: ImageServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    rows = fault_url_list(server)
    uids = [f"u{i:03d}" for i in range(len(rows))]
    by_uid = {uid: (url[len(server.base_url):], caption) for uid, (url, caption) in zip(uids, rows, strict=True)}
    url_list = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows], "uid": uids}), url_list)

    for k, v in _env(tmp_path / "tmp", OPENCV_IO_MAX_IMAGE_PIXELS=str(PIXEL_LIMIT)).items():
        monkeypatch.setenv(k, v)  # spawned workers read these when they import cv2, albumentations, wandb
    from img2dataset import download

    out = tmp_path / "ds"
    sigint = signal.getsignal(signal.SIGINT)
    logged_before = len(server.requests)
    start = time.perf_counter()
    try:
        download(url_list=str(url_list), output_folder=str(out), output_format="webdataset", input_format="parquet",
                 url_col="url", caption_col="caption", save_additional_columns=["uid"], enable_wandb=False,
                 processes_count=1, thread_count=8, timeout=2, retries=0, image_size=64, number_sample_per_shard=8,
                 distributor="multiprocessing", user_agent_token="witbuild", max_image_area=PIXEL_LIMIT,
                 max_aspect_ratio=10)
    finally:
        signal.signal(signal.SIGINT, sigint)  # download() installs its own SIGINT handler in the caller
    print(f"img2dataset.download took {time.perf_counter() - start:.1f} s for {len(rows)} urls")

    # every row comes back once in the shard parquets, with a status
    import pandas as pd

    meta = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))], ignore_index=True)
    assert sorted(meta.uid) == uids
    meta["path"] = meta.uid.map(lambda u: by_uid[u][0])
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    assert sum(s["count"] for s in stats) == len(rows) and sum(s["successes"] for s in stats) == (
        meta.status == "success").sum()
    assert not (out / "_tmp").exists()
    seen = {r.uid: r for r in meta.itertuples()}

    for uid, (path, _) in by_uid.items():
        expect = FAULT_EXPECT.get(path, "success")
        row = seen[uid]
        assert row.status == expect, (path, row.status, row.error_message)
        if expect == "success":
            assert row.error_message is None and (row.width, row.height) == (64, 64), path
        else:
            assert isinstance(row.error_message, str) and row.error_message.strip(), path
    print("\nimg2dataset verdict per fault:")
    for path in FAULTS:
        row = seen[next(u for u, (p, _) in by_uid.items() if p == path)]
        print(f"  {path:22} {row.status:20} {row.error_message!r}")
    errors = {p: seen[u].error_message for u, (p, _) in by_uid.items() if p in FAULTS}
    assert errors["/fault/404"] == "HTTP Error 404: Not Found"
    assert errors["/fault/stall.jpg"] == "timed out"
    assert errors["/fault/corrupt.jpg"] == "Image decoding error"
    assert "validateInputImageSize" in errors["/fault/bomb.png"]
    assert errors["/fault/noai.jpg"] == "Use of image disallowed by X-Robots-Tag directive"
    assert "infinite loop" in errors["/fault/loop"]
    assert errors["/fault/wide.jpg"] == "aspect ratio too large"

    # no partial tar: whole 512-byte blocks, every member reads back in full, one jpg+txt+json per success
    tars = sorted(out.glob("*.tar"))
    names = [n for t in tars for n in _tar_members_complete(t)]
    successes = meta[meta.status == "success"]
    assert sorted(names) == sorted(f"{k}.{ext}" for k in successes.key for ext in ("jpg", "json", "txt"))

    # the tars decode with webdataset: a 64×64 RGB image, the caption as text, uid and caption in the json
    samples = {}
    for s in wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("rgb8"):
        assert s["jpg"].shape == (64, 64, 3) and s["jpg"].dtype == np.uint8
        assert s["txt"] == s["json"]["caption"] == by_uid[s["json"]["uid"]][1]
        samples[by_uid[s["json"]["uid"]][0]] = s
    good = {p for p, _ in by_uid.values() if FAULT_EXPECT.get(p, "success") == "success"}
    assert set(samples) == good

    # the tolerated formats come out right: CMYK colours not inverted, first GIF frame, alpha matted on white
    cmyk = samples["/fault/cmyk.jpg"]["jpg"][8:56].astype(int)  # 240×180 -> 64×48, white border rows above/below
    ref = np.asarray(draw_image(11, (240, 180)).resize((64, 48), Image.Resampling.BOX)).astype(int)
    assert np.abs(cmyk - ref).mean() < 15 < np.abs(255 - cmyk - ref).mean()
    gif = samples["/fault/animated.gif"]["jpg"].astype(int)
    assert np.abs(gif[12, 60] - [0, 200, 60]).max() < 20  # frame 0's background colour
    alpha = samples["/fault/alpha.png"]["jpg"].astype(int)
    assert (alpha[30, 10] > 245).all()  # transparent half -> white
    assert alpha[30, 50, 0] > 200 and alpha[30, 50, 1:].max() < 60  # opaque red disc stays red

    # retries=0: one request per url, except the loop, which urllib follows until it sees a url repeat
    hits = [p for p, _ in server.requests[logged_before:]]
    assert all(hits.count(path) == 1 for path, _ in by_uid.values() if path != "/fault/loop")
    assert hits.count("/fault/loop") + hits.count("/fault/loop?hop=1") > 2
