"""Headless Chromium for the page tests: the DOM after the page's scripts ran, with every
request that tried to leave the machine caught by a local recording proxy."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, NAMES) if p), None)


class Proxy:
    """A TCP listener on 127.0.0.1 that records the first line of every connection (an HTTP
    request or a CONNECT host:443) and closes it: the browser's only way out."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.requests.append(conn.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace"))
                except OSError:
                    self.requests.append("(connection without a request line)")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sock.close()


BROWSER_SERVICES = ("accounts.google.com", "www.google.com", "clients2.google.com")


def _host(request: str) -> str:
    """The host of a proxied request line ("CONNECT h:443 HTTP/1.1", "GET http://h/p HTTP/1.1")."""
    target = request.split(" ")[1] if " " in request else request
    return target.split("://")[-1].split("/")[0].split(":")[0]


def dump_dom(chromium: str, page: Path, budget_ms: int = 20000) -> tuple[str, list[str]]:
    """(the DOM after the scripts ran, the requests that tried to leave) for a local page.
    Chromium's own calls to its account and time services (headless still makes them, whatever
    the flags) are not the page's and are left out."""
    with Proxy() as proxy, tempfile.TemporaryDirectory() as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-features=NetworkTimeServiceQuerying,OptimizationHints,MediaRouter,Translate",
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy.port}",
            "--proxy-bypass-list=<-loopback>",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            page.resolve().as_uri(),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0 and "</html>" in out.stdout, out.stderr[-2000:]
    return out.stdout, [r for r in proxy.requests if _host(r) not in BROWSER_SERVICES]


class Charts(HTMLParser):
    """Per chart container (an element with `attr`): its attributes, and how many svg and
    canvas elements and Vega marks (`class="mark-..."`) it holds."""

    def __init__(self, attr: str):
        super().__init__()
        self.attr, self.charts, self._stack = attr, [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self.attr in a:
            self.charts.append({"attrs": a, "svg": 0, "canvas": 0, "marks": 0})
            self._stack.append([tag, 0, self.charts[-1]])
        elif self._stack:
            top = self._stack[-1]
            top[1] += tag == top[0]
            c = top[2]
            c["svg"] += tag == "svg"
            c["canvas"] += tag == "canvas"
            c["marks"] += any(k.startswith("mark-") for k in (a.get("class") or "").split())

    def handle_endtag(self, tag):
        if self._stack and tag == self._stack[-1][0]:
            if self._stack[-1][1] == 0:
                self._stack.pop()
            else:
                self._stack[-1][1] -= 1


def charts(dom: str, attr: str) -> list[dict]:
    parser = Charts(attr)
    parser.feed(dom)
    return parser.charts
