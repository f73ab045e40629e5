"""Open a page in a real headless Chromium and report what a user's browser would show: console
errors, uncaught exceptions, failed loads, every ``<img>``'s decoded and rendered size, and a
full-page screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: fd 3 in,
fd 4 out, NUL-terminated JSON messages), so no WebSocket library and no browser download are
needed: the Debian ``chromium`` package that ``scripts/setup.sh`` installs is enough.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")

IMAGES_JS = """[...document.images].map(i => {const r = i.getBoundingClientRect();
  return {alt: i.alt, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight], shown: [r.width, r.height]};})"""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, EXECUTABLES) if p), None)


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    images: list[dict[str, Any]] = field(default_factory=list)
    size: tuple[int, int] = (0, 0)  # the page's CSS width and height
    png: bytes = b""


def _above(fd: int, low: int) -> int:
    """``fd`` duplicated to a number >= ``low`` (not inheritable); the original is closed."""
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    os.close(fd)
    return new


class _Pipe:
    """The DevTools protocol over Chromium's debugging pipe."""

    def __init__(self, exe: str, profile: str, timeout: float):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # the child's ends, moved above 4 so that placing them on 3 and 4 cannot clobber one another
        to_chrome_r, from_chrome_w = (_above(fd, 10) for fd in (to_chrome_r, from_chrome_w))

        def fds() -> None:  # the child reads commands on fd 3 and writes replies on fd 4
            os.dup2(to_chrome_r, 3)  # (dup2 makes them inheritable: they survive exec)
            os.dup2(from_chrome_w, 4)

        args = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile}",
                "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=fds, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.deadline = time.monotonic() + timeout
        self._buf, self._id, self.events = b"", 0, []

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("headless chromium did not answer in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"headless chromium exited (code {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read()
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_for(self, method: str) -> dict[str, Any]:
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read()
            if m.get("method") == method:
                return m
            self.events.append(m)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in events:
        p, kind = m.get("params") or {}, m.get("method")
        if kind == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                              for a in p.get("args", [])))
        elif kind == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails") or {}
            out.append("exception: " + str((d.get("exception") or {}).get("description") or d.get("text")))
        elif kind == "Log.entryAdded" and (p.get("entry") or {}).get("level") == "error":
            e = p["entry"]
            out.append(f"{e.get('source')}: {e.get('text')} {e.get('url') or ''}".strip())
    return out


def open_page(path: Path, width: int = 1200, timeout: float = 60.0, exe: str | None = None) -> PageResult:
    """Load ``path`` (a local HTML file) at ``width`` CSS pixels, wait for its load event, and
    collect what went wrong, the images and a full-page PNG."""
    exe = exe or find_chromium()
    if exe is None:
        raise FileNotFoundError(f"no Chromium ({', '.join(EXECUTABLES)}) on PATH; run scripts/setup.sh")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cdp = _Pipe(exe, profile, timeout)
        try:
            target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
            s = cdp.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                cdp.send(f"{domain}.enable", s)
            cdp.send("Emulation.setDeviceMetricsOverride", s, width=width, height=900, deviceScaleFactor=1,
                     mobile=False)
            cdp.send("Page.navigate", s, url=Path(path).resolve().as_uri())
            cdp.wait_for("Page.loadEventFired")
            images = cdp.send("Runtime.evaluate", s, expression=IMAGES_JS, returnByValue=True)["result"]["value"]
            content = cdp.send("Page.getLayoutMetrics", s)["cssContentSize"]
            w, h = int(content["width"]), int(content["height"])
            shot = cdp.send("Page.captureScreenshot", s, format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})
            return PageResult(_errors(cdp.events), images, (w, h), base64.b64decode(shot["data"]))
        finally:
            cdp.close()
