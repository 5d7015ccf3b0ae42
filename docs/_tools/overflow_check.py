"""Count code blocks that scroll sideways on the built site, in headless Chromium.

Not part of CI (it needs a browser). Run it before calling the docs done:

    mkdocs build --strict -d /tmp/site
    python docs/_tools/overflow_check.py /tmp/site                # default pages
    python docs/_tools/overflow_check.py /tmp/site lenses/ --shots /tmp/shots
    python docs/_tools/overflow_check.py /tmp/site --search tree_partition vmap

With `--search`, it also types each word into the site's own search box and
compares the pages listed with the pages whose text contains the word.

It opens each page at 1280 x 900 CSS px (device scale 1) in the Debian `chromium`
package, started headless with a fresh profile, and counts the code blocks
(`pre`, and the `code` inside it, which Material makes the scroll box) whose
scrollWidth exceeds clientWidth. It talks the Chrome DevTools protocol over
`--remote-debugging-pipe`, so it needs nothing beyond the standard library.
The exit status is 1 when any block overflows.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_PAGES = ["", "getting-started/", "lenses/", "reference/filters/"]
WIDTH, HEIGHT = 1280, 900

# For each code block: how many px it would scroll, and its first line (to say which).
_MEASURE = """
(() => {
  const out = [];
  for (const pre of document.querySelectorAll("article pre")) {
    const boxes = [pre, ...pre.querySelectorAll(":scope > code")];
    const over = Math.max(...boxes.map(b => b.scrollWidth - b.clientWidth));
    const first = (pre.innerText || "").split("\\n")[0].slice(0, 60);
    out.push({over: over, first: first});
  }
  return JSON.stringify(out);
})()
"""


class Chromium:
    """A headless Chromium driven over the DevTools pipe (fd 3 in, fd 4 out)."""

    def __init__(self, binary: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="ptc-overflow-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire() -> None:  # runs in the child, before exec
            # Copy both ends above 4 first: a pipe end may itself be fd 3 or 4, and
            # dup2 onto the same number would keep its close-on-exec flag.
            ends = [os.dup(to_chrome_r), os.dup(from_chrome_w)]
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _read_message(self) -> dict:
        while b"\0" not in self._buf:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self, method: str, session: str | None = None, **params: object
    ) -> dict:
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(
        self, method: str, session: str, timeout: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, ev in enumerate(self.events):
                if (
                    ev.get("method") == method
                    and ev.get("sessionId") == session
                ):
                    del self.events[: i + 1]
                    return
            self.events.append(self._read_message())
        raise TimeoutError(f"no {method} within {timeout} s")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        shutil.rmtree(self.profile, ignore_errors=True)


def _serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve the site on localhost: the search runs in a web worker, which file:// blocks."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


# Ask the site's own search worker (Material's lunr set-up, with the site's
# separator and pipeline) for every result, not just the first page of them.
_QUERY = """
(async (query) => {
  const config = JSON.parse(document.getElementById("__config").textContent);
  const base = new URL(config.base + "/", location.href);
  const index = await (await fetch(new URL("search/search_index.json", base)))
    .json();
  const worker = new Worker(new URL(config.search, base));
  const ask = (message) => new Promise((resolve, reject) => {
    worker.onmessage = (event) => resolve(event.data);
    worker.onerror = (event) => reject(new Error(event.message));
    setTimeout(() => reject(new Error("no answer in 30 s")), 30000);
    worker.postMessage(message);
  });
  // SETUP -> READY, with the options Material's page adds to the index
  await ask({type: 0, data: {...index, options: {suggest: false}}});
  const result = await ask({type: 2, data: query}); // QUERY -> RESULT
  worker.terminate();
  return JSON.stringify(
    result.data.items.map((group) => group[0].location.split("#")[0])
  );
})(%s)
"""


def _evaluate(browser: Chromium, session: str, expression: str):
    result = browser.send(
        "Runtime.evaluate",
        session,
        expression=expression,
        returnByValue=True,
        awaitPromise=True,
    )
    if "exceptionDetails" in result:
        raise RuntimeError(result["exceptionDetails"])
    return json.loads(result["result"]["value"])


def _pages_containing(site: Path, word: str) -> set[str]:
    index = json.loads(
        (site / "search" / "search_index.json").read_text("utf-8")
    )
    return {
        doc["location"].split("#")[0]
        for doc in index["docs"]
        if word in doc["text"] or word in doc["title"]
    }


def search(site: Path, words: list[str], binary: str) -> int:
    """Search each word on the site; return how many pages that use it were missed."""
    server, base = _serve(site)
    browser = Chromium(binary)
    missed_total = 0
    try:
        target = browser.send("Target.createTarget", url="about:blank")[
            "targetId"
        ]
        session = browser.send(
            "Target.attachToTarget", targetId=target, flatten=True
        )["sessionId"]
        browser.send("Page.enable", session)
        browser.send("Page.navigate", session, url=base)
        browser.wait_for("Page.loadEventFired", session)
        for word in words:
            ranked = _evaluate(browser, session, _QUERY % json.dumps(word))
            ranked = [p.removeprefix("./") for p in ranked]
            got = set(ranked)
            want = _pages_containing(site, word)
            missed = sorted(want - got)
            missed_total += len(missed)
            top = len(want & set(ranked[: len(want)]))
            print(
                f"search {word!r}: {len(got)} pages found, {len(want & got)} of "
                f"the {len(want)} that use it ({top} of them ranked first); "
                f"missed: {missed or 'none'}"
            )
    finally:
        browser.close()
        server.shutdown()
    return missed_total


def measure(
    site: Path, pages: list[str], shots: Path | None, binary: str
) -> int:
    browser = Chromium(binary)
    total = 0
    try:
        target = browser.send("Target.createTarget", url="about:blank")[
            "targetId"
        ]
        session = browser.send(
            "Target.attachToTarget", targetId=target, flatten=True
        )["sessionId"]
        browser.send("Page.enable", session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )
        for page in pages:
            path = (
                site / page / "index.html"
                if not page.endswith(".html")
                else site / page
            )
            if not path.exists():
                print(f"{page or '/'}: no such page ({path})")
                total += 1
                continue
            browser.send("Page.navigate", session, url=path.resolve().as_uri())
            browser.wait_for("Page.loadEventFired", session)
            result = browser.send(
                "Runtime.evaluate",
                session,
                expression=_MEASURE,
                returnByValue=True,
            )
            blocks = json.loads(result["result"]["value"])
            over = [b for b in blocks if b["over"] > 0]
            total += len(over)
            print(
                f"{page or '/'}: {len(over)} of {len(blocks)} code blocks overflow"
            )
            for b in over:
                print(f"    +{b['over']:>5} px  {b['first']}")
            if shots is not None:
                shots.mkdir(parents=True, exist_ok=True)
                height = _evaluate(
                    browser, session, "String(document.body.scrollHeight)"
                )
                png = browser.send(
                    "Page.captureScreenshot",
                    session,
                    format="png",
                    captureBeyondViewport=True,
                    clip={
                        "x": 0,
                        "y": 0,
                        "width": WIDTH,
                        "height": min(int(height), 16000),
                        "scale": 1,
                    },
                )["data"]
                name = (page.strip("/").replace("/", "_") or "home") + ".png"
                (shots / name).write_bytes(base64.b64decode(png))
    finally:
        browser.close()
    print(f"total: {total} overflowing code blocks")
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the directory mkdocs built")
    parser.add_argument(
        "pages", nargs="*", default=DEFAULT_PAGES, help="e.g. lenses/"
    )
    parser.add_argument(
        "--shots", type=Path, help="save a full-page screenshot of each here"
    )
    parser.add_argument("--search", nargs="+", default=[], metavar="WORD")
    parser.add_argument(
        "--chromium", default=shutil.which("chromium") or "chromium"
    )
    args = parser.parse_args()
    bad = measure(args.site, args.pages, args.shots, args.chromium)
    if args.search:
        bad += search(args.site, args.search, args.chromium)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
