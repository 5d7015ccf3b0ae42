"""The documentation is executed, so it cannot drift from the code.

What runs:

* every ```` ```python ```` (or ```` ```py ````) block of each `docs/*.md` page and of
  `README.md`, in page order, in one fresh module namespace per page (one test per page);
* every ```` ```pycon ```` block (`>>>` prompts with expected output) of those pages, as a
  doctest in that same namespace, in page order with the python blocks;
* the doctest examples in the docstrings of every `pytreeclass` module;
* `mkdocs build --strict` (mkdocs is in the `test` extra that the README's test command
  installs, so it runs wherever the suite does; skipped only when mkdocs is missing; while a page named in
  the nav does not exist yet, the others are built strictly and the test xfails);
* a check that `docs/api.md` has a `::: pytreeclass.NAME` entry for exactly the names in
  `pytreeclass.__all__`, each with a docstring.

To show a block without running it (use sparingly: say in the text why it cannot run), put
the HTML comment `<!-- notest -->` on the line right before its opening fence. The comment
is invisible on the rendered page and on GitHub. Blocks fenced with any other language
(`text`, `bash`, ...) are never run.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import pytreeclass as ptc

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
NOTEST = "<!-- notest -->"
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^\n`]*)$")
_DOCTEST_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
_WHITESPACE = re.compile(r"\s+")


class LayoutInsensitiveChecker(doctest.OutputChecker):
    """Also accept output that differs from the expected text only in whitespace.

    Reprs wrap lines by width; the pages lay long outputs out for reading. Where the line
    breaks fall is not what the docs promise, so pycon blocks compare with all whitespace
    removed (after the usual ELLIPSIS / NORMALIZE_WHITESPACE comparison fails).
    """

    def check_output(self, want: str, got: str, optionflags: int) -> bool:
        if super().check_output(want, got, optionflags):
            return True
        return super().check_output(
            _WHITESPACE.sub("", want), _WHITESPACE.sub("", got), optionflags
        )


@dataclass(frozen=True)
class Block:
    lang: str  # "python" or "pycon"
    code: str
    line: int  # 1-based line of the first code line in the page


def extract_blocks(text: str) -> list[Block]:
    """The runnable fenced blocks of a markdown text, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"])
        lang = m["info"].strip().split(" ")[0].lower() if m["info"].strip() else ""
        prev = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(fence[0] * len(fence))
            and lines[j].strip().strip(fence[0]) == ""
        ):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        if lang in ("python", "py", "pycon") and prev != NOTEST:
            blocks.append(Block("pycon" if lang == "pycon" else "python", "\n".join(body), i + 2))
        i = j + 1
    return blocks


def _pages() -> list[Path]:
    pages = sorted(DOCS.glob("*.md"))
    if README.exists():
        pages.append(README)
    return pages


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def run_page(page: Path) -> None:
    """Run a page's blocks, in order, in one fresh module."""
    blocks = extract_blocks(page.read_text(encoding="utf-8"))
    name = "docs_" + re.sub(r"\W", "_", page.stem)
    # A real module in sys.modules, so dataclasses, typing and pickle can find the
    # classes the page defines, as they would in a user's script.
    module = types.ModuleType(name)
    module.__file__ = str(page)
    sys.modules[name] = module
    ns = module.__dict__
    filename = _page_id(page)
    try:
        for block in blocks:
            if block.lang == "python":
                # Pad so that tracebacks give the line number in the markdown file.
                code = compile("\n" * (block.line - 1) + block.code, filename, "exec")
                exec(code, ns)
            else:
                parser = doctest.DocTestParser()
                test = parser.get_doctest(
                    block.code, ns, f"{filename}:{block.line}", filename, block.line - 1
                )
                runner = doctest.DocTestRunner(
                    checker=LayoutInsensitiveChecker(), optionflags=_DOCTEST_FLAGS
                )
                out: list[str] = []
                runner.run(test, out=out.append, clear_globs=False)
                if runner.failures:
                    pytest.fail("".join(out), pytrace=False)
                ns.update(test.globs)  # DocTest works on a copy; later blocks see its names
    finally:
        del sys.modules[name]


# -- the markdown runner itself -------------------------------------------------------------


def test_extract_blocks_skips_notest_and_other_languages() -> None:
    text = "\n".join(
        [
            "```python",
            "a = 1",
            "```",
            "<!-- notest -->",
            "```python",
            "raise SystemExit",
            "```",
            "```bash",
            "rm -rf /",
            "```",
            "````pycon",
            ">>> a",
            "1",
            "````",
            "- item",
            "",
            "    ```python",
            "    b = 2",
            "    ```",
        ]
    )
    blocks = extract_blocks(text)
    assert [(b.lang, b.code, b.line) for b in blocks] == [
        ("python", "a = 1", 2),
        ("pycon", ">>> a\n1", 12),
        ("python", "b = 2", 18),
    ]


def test_run_page_reports_the_markdown_line(tmp_path: Path) -> None:
    page = tmp_path / "bad.md"
    page.write_text("# Bad\n\n```python\nx = 1\nassert x == 2\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError) as info:
        run_page(page)
    assert info.traceback[-1].lineno + 1 == 5  # pytest's lineno is 0-based


def test_run_page_checks_pycon_output(tmp_path: Path) -> None:
    page = tmp_path / "out.md"
    page.write_text("```python\nx = 2\n```\n\n```pycon\n>>> x + 1\n4\n```\n", encoding="utf-8")
    with pytest.raises(pytest.fail.Exception, match=r"Expected:\s+4\s+Got:\s+3"):
        run_page(page)


# -- the pages ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", _pages(), ids=_page_id)
def test_page_examples_run(page: Path) -> None:
    run_page(page)


# -- docstrings -----------------------------------------------------------------------------


def _modules() -> list[str]:
    names = ["pytreeclass"]
    names += [f"pytreeclass.{m.name}" for m in pkgutil.iter_modules(ptc.__path__)]
    return sorted(names)


@pytest.mark.parametrize("module_name", _modules())
def test_docstring_examples_run(module_name: str) -> None:
    import jax
    import jax.numpy as jnp

    module = importlib.import_module(module_name)
    globs = {"ptc": ptc, "jax": jax, "jnp": jnp}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=_DOCTEST_FLAGS)
    out: list[str] = []
    for test in finder.find(module, module_name, extraglobs=globs):
        runner.run(test, out=out.append)
    if runner.failures:
        pytest.fail("".join(out), pytrace=False)


def test_every_public_name_has_a_docstring_and_an_api_entry() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: pytreeclass\.(\w+)", api, flags=re.M))
    public = set(ptc.__all__)
    assert not public - documented, f"add to docs/api.md: {sorted(public - documented)}"
    assert not documented - public, f"not in ptc.__all__: {sorted(documented - public)}"
    undocumented = [n for n in public if not (getattr(ptc, n).__doc__ or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"


# -- the site -------------------------------------------------------------------------------


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for v in nav.values() for f in _nav_files(v)]
    if isinstance(nav, list):
        return [f for v in nav for f in _nav_files(v)]
    return []


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install pytreeclass[test])")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    import yaml

    config_path = ROOT / "mkdocs.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    missing = [f for f in _nav_files(config["nav"]) if not (DOCS / f).exists()]
    if missing:
        # Pages still being written: build the rest, still strictly for everything else.
        config["nav"] = _drop(config["nav"], set(missing))
        config["docs_dir"] = str(DOCS)
        _absolute_plugin_paths(config)
        config.setdefault("validation", {})["links"] = {"not_found": "info"}
        config_path = tmp_path / "mkdocs.yml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    site = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-f",
            str(config_path),
            "-d",
            str(site),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "api" / "index.html").exists()
    if missing:
        pytest.xfail(f"nav pages not written yet: {missing}; built the others strictly")
    shutil.rmtree(site)


def _absolute_plugin_paths(config: dict) -> None:
    """Paths in mkdocs.yml are relative to it; the copy lives elsewhere."""
    for plugin in config.get("plugins", []):
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            python = plugin["mkdocstrings"]["handlers"]["python"]
            python["paths"] = [str(ROOT / p) for p in python.get("paths", ["."])]
            options = python.setdefault("options", {})
            options["extensions"] = [
                str(ROOT / e) if isinstance(e, str) and ".py" in e else e
                for e in options.get("extensions", [])
            ]


def _drop(nav: object, missing: set[str]) -> object:
    if isinstance(nav, list):
        out = [_drop(v, missing) for v in nav]
        return [v for v in out if v not in (None, [], {})]
    if isinstance(nav, dict):
        out = {k: _drop(v, missing) for k, v in nav.items()}
        return {k: v for k, v in out.items() if v not in (None, [], {})} or None
    return None if nav in missing else nav
