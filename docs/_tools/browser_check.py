"""Check the built site in a real browser: width, overflow, links, requests, reach.

Not part of CI (it needs Chromium and Playwright). Set up once, then run:

    apt-get install -y chromium && pip install playwright
    python docs/_tools/browser_check.py            # builds into a temp dir
    python docs/_tools/browser_check.py --site /tmp/site --chromium /usr/bin/chromium

It builds the site with `mkdocs build --strict`, serves it on 127.0.0.1 only,
opens every page in headless Chromium (through Playwright, pointed at the
system browser: `playwright install` is not needed) and reports five numbers,
all of which should be 0:

* pages that pan sideways at 390 px (the document is wider than the window);
* code blocks that overflow at 1280 px (a `pre` or its `code` scrolls);
* broken internal links (an `a[href]` to a page or anchor of the site that is
  not there);
* external requests (anything a page loads from outside 127.0.0.1: fonts,
  scripts, images);
* pages not reachable from the home page by following links.

The exit status is 1 when any number is not 0; each problem is listed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHONE, DESKTOP = 390, 1280

_OVERFLOWING_BLOCKS = """
() => [...document.querySelectorAll("article pre")].filter(pre =>
  [pre, ...pre.querySelectorAll(":scope > code")].some(
    b => b.scrollWidth > b.clientWidth + 1)
).map(pre => (pre.innerText || "").split("\\n")[0].slice(0, 60))
"""
_PANS = """
() => document.documentElement.scrollWidth > window.innerWidth + 1
"""
_LINKS_AND_IDS = """
() => ({
  links: [...document.querySelectorAll("a[href]")].map(a => a.href),
  ids: [...document.querySelectorAll("[id], a[name]")].map(e => e.id || e.name),
})
"""


def build(site: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-q",
            "-d",
            str(site),
        ],
        cwd=ROOT,
        check=True,
    )


@contextlib.contextmanager
def serve(site: Path) -> Iterator[str]:
    """Serve `site` on 127.0.0.1 (a free port); yield the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def pages_of(site: Path) -> list[str]:
    """Every page of the built site, as a path relative to the root URL."""
    out = []
    for html in sorted(site.rglob("index.html")):
        rel = html.parent.relative_to(site).as_posix()
        out.append("" if rel == "." else rel + "/")
    return out


def check(site: Path, chromium: str) -> dict[str, list[str]]:
    from playwright.sync_api import sync_playwright

    problems: dict[str, list[str]] = {
        "pages panning sideways at 390 px": [],
        "code blocks overflowing at 1280 px": [],
        "broken internal links": [],
        "external requests": [],
        "pages unreachable from home": [],
    }
    pages = pages_of(site)
    ids: dict[str, set[str]] = {}
    links: dict[str, list[str]] = {}
    with serve(site) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        for width in (DESKTOP, PHONE):
            context = browser.new_context(
                viewport={"width": width, "height": 900}
            )
            page = context.new_page()

            current: list[str] = []

            def on_request(request, current: list[str] = current) -> None:
                host = urllib.parse.urlsplit(request.url).hostname
                if request.url.startswith(("data:", "blob:", "about:")):
                    return
                if host != "127.0.0.1":
                    current.append(request.url)

            page.on("request", on_request)
            for rel in pages:
                current.clear()
                page.goto(base + rel, wait_until="networkidle")
                problems["external requests"] += [
                    f"{rel or '/'}: {u}" for u in current
                ]
                if width == DESKTOP:
                    for first in page.evaluate(_OVERFLOWING_BLOCKS):
                        problems["code blocks overflowing at 1280 px"].append(
                            f"{rel}: {first}"
                        )
                    found = page.evaluate(_LINKS_AND_IDS)
                    ids[rel] = set(found["ids"])
                    links[rel] = found["links"]
                elif page.evaluate(_PANS):
                    problems["pages panning sideways at 390 px"].append(
                        rel or "/"
                    )
            context.close()
        browser.close()

        # links: resolve against the site, then check the page and the anchor
        graph: dict[str, set[str]] = {rel: set() for rel in pages}
        for rel, hrefs in links.items():
            for href in hrefs:
                url = urllib.parse.urlsplit(href)
                if not href.startswith(base):
                    continue
                path = urllib.parse.unquote(url.path)[1:]
                target = path
                if target.endswith("index.html"):
                    target = target[: -len("index.html")]
                file = site / target
                if target in ids:
                    graph[rel].add(target)
                    if (
                        url.fragment
                        and urllib.parse.unquote(url.fragment)
                        not in ids[target]
                    ):
                        problems["broken internal links"].append(
                            f"{rel}: {href} (no anchor)"
                        )
                elif not file.exists():
                    problems["broken internal links"].append(f"{rel}: {href}")
    # reachability from home over the links between pages
    seen, todo = {""}, [""]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    problems["pages unreachable from home"] = [
        p for p in pages if p not in seen and p != "404/"
    ]
    for key in problems:
        problems[key] = sorted(set(problems[key]))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--site", type=Path, help="a built site (default: build one)"
    )
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site or Path(tmp) / "site"
        if args.site is None:
            build(site)
        problems = check(site, args.chromium)
        print(f"{len(pages_of(site))} pages checked")
    for key, found in problems.items():
        print(f"{len(found):4d}  {key}")
        for item in found:
            print(f"        {item}")
    return 1 if any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
