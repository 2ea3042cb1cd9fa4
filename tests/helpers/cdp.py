"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ending
in a NUL byte on file descriptors 3 and 4), so a test can load a page with its scripts off and still ask the DOM
what it holds. No WebSocket client is needed, and every host but 127.0.0.1 fails to resolve."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


# each image of the page drawn into a canvas of its natural size, as the page shows it: [width, height, RGBA...]
DRAW_IMAGES = """[...document.images].map(i => {
  const c = document.createElement("canvas"); c.width = i.naturalWidth; c.height = i.naturalHeight;
  const g = c.getContext("2d"); g.drawImage(i, 0, 0);
  return [i.naturalWidth, i.naturalHeight, Array.from(g.getImageData(0, 0, c.width, c.height).data)];
})"""


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def images_as_shown(url: str, profile: Path) -> list[Any]:
    """The images of the page at ``url`` as headless Chromium shows them (PIL RGB images, in document order);
    skips the test when Chromium is not installed."""
    import numpy as np
    import pytest
    from PIL import Image

    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium not installed: apt-get install -y --no-install-recommends chromium")
    browser = Chromium(binary, profile)
    try:
        drawn = browser.evaluate_page(url, DRAW_IMAGES)
    finally:
        browser.close()
    return [Image.fromarray(np.array(rgba, np.uint8).reshape(height, width, 4)[..., :3])
            for width, height, rgba in drawn]


class Chromium:
    """One browser process; :meth:`evaluate_page` opens a tab per page."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child, before exec: the pipe ends where Chromium looks for them
            read_end, write_end = os.dup(to_browser), os.dup(from_browser)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
                                      "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=on_fds_3_and_4, close_fds=False, start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self._next_id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._arrived = threading.Condition()
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._in, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" not in message:
                    self._events.put(message)
                    continue
                with self._arrived:
                    self._replies[message["id"]] = message
                    self._arrived.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        with self._arrived:
            if not self._arrived.wait_for(lambda: call_id in self._replies, timeout):
                raise TimeoutError(f"{method}: no reply in {timeout} s")
            reply = self._replies.pop(call_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def _wait_event(self, name: str, session: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            try:
                event = self._events.get(timeout=left)
            except queue.Empty:
                return False
            if event.get("method") == name and event.get("sessionId") == session:
                return True
        return False

    def evaluate_page(self, url: str, expression: str, *, scripts: bool = False, timeout: float = 60) -> Any:
        """The value of ``expression`` (JSON-serialisable) in ``url`` once it has loaded, or after ``timeout``."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        try:
            self.send("Emulation.setScriptExecutionDisabled", {"value": not scripts}, session)
            self.send("Page.enable", {}, session)
            self.send("Page.navigate", {"url": url}, session)
            self._wait_event("Page.loadEventFired", session, timeout)
            result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
            if "exceptionDetails" in result:
                raise RuntimeError(f"{url}: {result['exceptionDetails']}")
            return result["result"].get("value")
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    def close(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)  # Chromium and its helper processes
        self.proc.communicate()
        os.close(self._out)
        os.close(self._in)
