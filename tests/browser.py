"""A minimal headless-Chromium driver for tests, standard library only.

Talks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages separated by
NUL bytes on file descriptors 3 and 4 of the browser), so no websocket client, port or extra
Python package is needed. ``find_chromium`` locates Debian's ``chromium`` and, when it is missing
and we run as root, installs it with apt-get.

    with Browser() as b:
        page = b.open(Path("report.html"))
        page.console_errors, page.broken_images, page.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
]
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(RuntimeError):
    """No Chromium binary and no way to install one (the message says why)."""


def find_chromium(install: bool = True) -> str:
    """Path of a Chromium binary; installs Debian's ``chromium`` with apt-get when missing and root."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    if not install:
        raise BrowserUnavailable("no chromium binary on PATH")
    if os.geteuid() != 0:
        raise BrowserUnavailable("chromium is not installed and we are not root, so it cannot be installed with apt-get")
    if not shutil.which("apt-get"):
        raise BrowserUnavailable("chromium is not installed and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise BrowserUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    found = shutil.which("chromium")
    if not found:
        raise BrowserUnavailable("apt-get installed chromium but no `chromium` binary is on PATH")
    return found


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered >= 10 (so dup2 onto 3/4 in the child is safe)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


@dataclass
class Page:
    browser: "Browser"
    session: str
    url: str
    console_errors: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)

    def call(self, method: str, **params):
        return self.browser.call(method, params, session=self.session)

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    @property
    def broken_images(self) -> list[str]:
        """``<img>`` elements that did not decode (naturalWidth == 0), by alt text or source prefix."""
        return self.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0)"
            ".map(i => i.alt || (i.src || '').slice(0, 80))"
        )

    def screenshot(self, path: Path, full_page: bool = True, width: int = 1280) -> Path:
        if full_page:
            height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
            height = max(600, min(height, 16000))
        else:
            height = 900
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    """One headless Chromium process driven over the DevTools pipe."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self._pending: list[dict] = []
        self.profile = tempfile.mkdtemp(prefix="alphastomics-chromium-")
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        to_child_r, from_child_w = _high_fd(to_child_r), _high_fd(from_child_w)

        def _child_fds():  # runs in the child between fork and exec
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [self.binary, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_child_fds,
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._w, self._r = to_child_w, from_child_r

    # -- protocol ---------------------------------------------------------------------------

    def _send(self, message: dict) -> None:
        os.write(self._w, json.dumps(message).encode() + b"\0")

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium in time")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace")[-2000:] if self.proc.poll() is not None else ""
                    raise RuntimeError(f"chromium closed the DevTools pipe (exit {self.proc.poll()}): {err}")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self._pending.append(reply)

    def wait_event(self, method: str, session: str | None = None, timeout: float | None = None) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for i, ev in enumerate(self._pending):
                if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                    return self._pending.pop(i)
            self._pending.append(self._read_message(deadline))

    # -- pages ------------------------------------------------------------------------------

    def open(self, path_or_url: str | Path, settle_s: float = 0.3) -> Page:
        url = path_or_url if isinstance(path_or_url, str) and "://" in path_or_url else Path(path_or_url).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session, url)
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            page.call(domain)
        page.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        page.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired", session=session)
        page.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
        time.sleep(settle_s)
        page.evaluate("1")  # flush events that arrived while settling
        for ev in [e for e in self._pending if e.get("sessionId") == session]:
            self._pending.remove(ev)
            page.events.append(ev)
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                page.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                page.console_errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                page.console_errors.append(f"{e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())
        return page

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._send({"id": self._next_id + 1, "method": "Browser.close", "params": {}})
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._w, self._r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.proc.stderr:
                self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
