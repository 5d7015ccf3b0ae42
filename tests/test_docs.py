"""The documentation is executed, so it cannot drift from the code.

What runs:

* every ```` ```python ```` (or ```` ```py ````) block of each `docs/*.md` page and of
  `README.md`, in page order, in one fresh module namespace per page (one test per page);
* every ```` ```pycon ```` block (`>>>` prompts with expected output) of those pages, as a
  doctest in that same namespace, in page order with the python blocks;
* the output shown under a python block: a ```` ```text title="Output" ```` block right
  after it (nothing but blank lines between) must equal what the block prints, line for
  line (trailing spaces and trailing blank lines aside); a python block that calls
  `print` must be followed by one;
* the doctest examples in the docstrings of every `pytreeclass` module;
* checks on what the pages show: code fits in 80 columns, no lint pragmas, guide pages
  link the API names they mention to the reference, and every name in
  `pytreeclass.__all__` has a docstring and one `::: pytreeclass.NAME` entry on a page of
  `docs/reference/`;
* `mkdocs build --strict`, once per session (mkdocs is in the `test` extra, so this runs
  wherever the README's test command does; skipped only when mkdocs is not installed),
  and checks on the built site: every page in the nav, a non-empty sitemap, every
  internal link and anchor resolving, backlinks from the reference to the guide, and a
  search index that finds API names (`tree_partition`, `vmap`, `OfType`) on every page
  that uses them.

To show a block without running it (use sparingly: say in the text why it cannot run), put
the HTML comment `<!-- notest -->` on the line right before its opening fence. The comment
is invisible on the rendered page and on GitHub. Blocks fenced with any other language
(`text`, `bash`, ...) are never run.
"""

from __future__ import annotations

import contextlib
import doctest
import html.parser
import importlib
import importlib.util
import inspect
import io
import json
import os
import pkgutil
import re
import subprocess
import sys
import types
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

import pytreeclass as ptc

from .versions import (
    JAX_FLATTEN_RECURSES,
    JAX_HAS_AXIS_TYPES,
    JAX_THREEFRY_PARTITIONABLE,
    needs_nnx_nodes,
)

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
    output: str | None = None  # the text of the output block shown under it, if any


# The fence of a block that shows what the python block above it prints.
_OUTPUT_INFO = re.compile(r'^text\s+title="Output"\s*$')


def _output_after(lines: list[str], j: int) -> str | None:
    """The body of an output block starting at the first non-blank line after j."""
    k = j + 1
    while k < len(lines) and not lines[k].strip():
        k += 1
    m = _FENCE.match(lines[k]) if k < len(lines) else None
    if m is None or not _OUTPUT_INFO.match(m["info"].strip()):
        return None
    fence, indent = m["fence"], len(m["indent"])
    body = []
    for line in lines[k + 1 :]:
        if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            break
        body.append(line[indent:] if line[:indent].strip() == "" else line)
    return "\n".join(body)


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
            kind = "pycon" if lang == "pycon" else "python"
            output = _output_after(lines, j) if kind == "python" else None
            blocks.append(Block(kind, "\n".join(body), i + 2, output))
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
                if block.output is None:
                    exec(code, ns)
                    continue
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(code, ns)
                if not _outputs_match(printed.getvalue(), block.output):
                    pytest.fail(
                        f"{filename}:{block.line}: the block prints\n{printed.getvalue()}"
                        f"but the page shows\n{block.output}",
                        pytrace=False,
                    )
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


def _shown(text: str) -> list[str]:
    """Lines as a page shows them: no trailing spaces, no trailing blank lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


_NUMBER = re.compile(r"\d+(\.\d+)?")


def _outputs_match(got: str, shown: str, same_random_bits: bool | None = None) -> bool:
    """What a block printed equals the output shown under it. Where JAX draws other
    random bits than the docs were printed with, numbers are not compared."""
    if _shown(got) == _shown(shown):
        return True
    if same_random_bits is None:
        same_random_bits = JAX_THREEFRY_PARTITIONABLE
    if same_random_bits:
        return False

    # a number's width may change too (0.01 vs 0.009): compare without spaces as well
    def masked(text: str) -> list[str]:
        return [_NUMBER.sub("#", line).replace(" ", "") for line in _shown(text)]

    return masked(got) == masked(shown)


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


def test_run_page_checks_the_output_shown_under_a_block(tmp_path: Path) -> None:
    page = tmp_path / "out.md"
    shown = '```python\nprint("a  ")\nprint(1 + 1)\n```\n\n```text title="Output"\n'
    page.write_text(shown + "a\n2\n\n```\n", encoding="utf-8")
    run_page(page)  # trailing spaces and blank lines aside, equal
    page.write_text(shown + "b\n2\n```\n", encoding="utf-8")
    with pytest.raises(
        pytest.fail.Exception, match=r"out.md:2: the block prints\na *\n2\nbut the page shows\nb\n2"
    ):
        run_page(page)
    # indented (in a content tab), and a plain text block is not an output block
    page.write_text(
        '=== "tab"\n\n    ```python\n    print(2)\n    ```\n\n'
        '    ```text title="Output"\n    2\n    ```\n\n```python\nx = 1\n```\n'
        "```text\nnot output\n```\n",
        encoding="utf-8",
    )
    assert [b.output for b in extract_blocks(page.read_text())] == ["2", None]
    run_page(page)

    # with other random bits (an older jax), the numbers are not compared; the rest is
    assert not _outputs_match("loss 0.012\n", "loss 0.03\n", same_random_bits=True)
    assert _outputs_match("loss 0.012\n", "loss 0.03\n", same_random_bits=False)
    assert not _outputs_match("loss 0.012\n", "acc 0.03\n", same_random_bits=False)


# -- the pages ------------------------------------------------------------------------------


def test_blocks_that_print_show_their_output() -> None:
    """A reader sees what a block prints: a python block that calls `print` has an
    output block under it (which test_page_examples_run compares with the real output)."""
    silent = [
        f"{_page_id(page)}:{block.line}"
        for page in sorted(DOCS.glob("*.md"))
        for block in extract_blocks(page.read_text(encoding="utf-8"))
        if block.lang == "python"
        and block.output is None
        and re.search(r"^\s*print\(", block.code, flags=re.M)
    ]
    assert not silent, 'add a ```text title="Output"``` block under:\n' + "\n".join(silent)


# Pages that show an API only newer releases have (the docs show the current APIs; the
# oldest environment of the compatibility matrix lacks them). Everything these pages use
# from pytreeclass is also covered by the unit tests, which run there.
_PAGE_NEEDS = {
    "interop.md": needs_nnx_nodes,
    "from-flax-nnx.md": needs_nnx_nodes,
    "kinds.md": needs_nnx_nodes,
    "sharding.md": pytest.mark.skipif(
        not JAX_HAS_AXIS_TYPES, reason="the page uses jax.sharding.AxisType (jax >= 0.5.3)"
    ),
}


@pytest.mark.parametrize(
    "page",
    [pytest.param(p, marks=_PAGE_NEEDS.get(p.name, ())) for p in _pages()],
    ids=_page_id,
)
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


REFERENCE = DOCS / "reference"


def _reference_entries() -> dict[str, list[str]]:
    """Public name -> the reference pages that have a `::: pytreeclass.NAME` entry."""
    entries: dict[str, list[str]] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        if page.name == "index.md":
            continue
        # `::: pytreeclass._module.Name` documents a type a public signature names
        # (the class `tree_summary` returns) without making it a public name.
        for name in re.findall(r"^::: pytreeclass\.(\w+)\s*$", text, flags=re.M):
            entries.setdefault(name, []).append(page.name)
    return entries


def test_every_public_name_has_a_docstring_and_one_reference_entry() -> None:
    entries = _reference_entries()
    public = set(ptc.__all__)
    missing = sorted(public - set(entries))
    assert not missing, f"add to a page of docs/reference/: {missing}"
    extra = sorted(set(entries) - public)
    assert not extra, f"not in ptc.__all__: {extra}"
    twice = {n: pages for n, pages in entries.items() if len(pages) > 1}
    assert not twice, f"documented on more than one reference page: {twice}"
    undocumented = [n for n in public if not (getattr(ptc, n).__doc__ or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_the_reference_index_lists_every_entry() -> None:
    index = (REFERENCE / "index.md").read_text(encoding="utf-8")
    unlisted = [
        f"{page}: {name}"
        for name, pages in _reference_entries().items()
        for page in pages
        if f"]({page}#pytreeclass.{name})" not in index
    ]
    assert not unlisted, "add to the table of docs/reference/index.md:\n" + "\n".join(unlisted)


# -- what the pages show --------------------------------------------------------------------

CODE_WIDTH = 80  # the code column of the site at 1280 px holds about 82 characters
_SNIPPET = re.compile(r'^\s*--8<--\s+"([^"]+)"\s*$')


def _code_lines(page: Path) -> list[tuple[str, int, str]]:
    """(file, line number, text) of every line inside a fenced block of a page.

    Blocks of any language count (they all render in the code column), and a
    `--8<-- "path"` include stands for the lines of the file it includes.
    """
    out: list[tuple[str, int, str]] = []
    fence, indent = "", 0
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        m = _FENCE.match(line)
        if not fence:
            if m:
                fence, indent = m["fence"], len(m["indent"])
            continue
        if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
            fence = ""
            continue
        include = _SNIPPET.match(line)
        if include:
            lines = (ROOT / include[1]).read_text(encoding="utf-8").splitlines()
            out += [(include[1], k, text) for k, text in enumerate(lines, 1)]
        else:  # the fence's own indentation (in a list or admonition) is not shown
            out.append((_page_id(page), n, line[indent:] if not line[:indent].strip() else line))
    return out


def _shown_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_code_in_the_docs_fits_in_80_columns() -> None:
    """No code block scrolls sideways on the site (docs/_tools/overflow_check.py
    measures the same in a browser); docstring examples are checked below."""
    too_wide = [
        f"{file}:{n}: {len(text)} characters: {text.strip()[:50]}"
        for page in _shown_pages()
        for file, n, text in _code_lines(page)
        if len(text.expandtabs()) > CODE_WIDTH
    ]
    assert not too_wide, "code lines wider than 80 characters:\n" + "\n".join(too_wide)


def test_docstring_examples_fit_in_80_columns() -> None:
    too_wide = []
    for name in ptc.__all__:
        obj = getattr(ptc, name)
        members = (
            [obj] + [m for k, m in vars(obj).items() if not k.startswith("_")]
            if isinstance(obj, type)
            else [obj]
        )
        for member in members:
            doc = inspect.getdoc(member) or ""
            for line in doc.splitlines():
                if line.lstrip().startswith((">>>", "...")) and len(line) > CODE_WIDTH:
                    too_wide.append(f"ptc.{name}: {line.strip()[:50]}")
    assert not too_wide, "docstring example lines over 80 characters:\n" + "\n".join(too_wide)


PARAGRAPH_WORDS = 120


def test_guide_paragraphs_are_short() -> None:
    """A paragraph of prose (not a list item, table or code) stays under ~120 words."""
    long = []
    for page in _shown_pages():
        paragraph: list[str] = []
        start, fence = 0, ""
        lines = [*page.read_text(encoding="utf-8").splitlines(), ""]
        for n, line in enumerate(lines, 1):
            m = _FENCE.match(line)
            if fence or m:
                if m and not fence:
                    fence = m["fence"]
                elif fence and line.strip().startswith(fence):
                    fence = ""
                line = ""
            if not line.strip() or line.lstrip().startswith(("#", "|", "!!!", "* ", "- ")):
                words = len(" ".join(paragraph).split())
                if words > PARAGRAPH_WORDS:
                    long.append(f"{_page_id(page)}:{start}: {words} words")
                paragraph = [line] if line.lstrip().startswith(("* ", "- ")) else []
                start = n
                continue
            if not paragraph:
                start = n
            paragraph.append(line)
    assert not long, f"paragraphs over {PARAGRAPH_WORDS} words:\n" + "\n".join(long)


def test_shown_code_has_no_lint_pragmas() -> None:
    pragmas = [
        f"{file}:{n}: {text.strip()}"
        for page in _shown_pages()
        for file, n, text in _code_lines(page)
        if re.search(r"#\s*(noqa|type:\s*ignore|pyright:\s*(ignore|basic|strict)|fmt:)", text)
    ]
    assert not pragmas, "\n".join(pragmas)


def _guide_pages() -> list[Path]:
    return [p for p in sorted(DOCS.glob("*.md")) if p.name != "examples.md"]


def test_guide_pages_link_the_api_names_they_mention() -> None:
    """A name written `ptc.NAME` in a guide page's text links to its reference
    entry somewhere on that page (`[`ptc.NAME`][pytreeclass.NAME]`), unless the
    mention itself links to the guide page that explains it."""
    unlinked = []
    for page in _guide_pages():
        text = page.read_text(encoding="utf-8")
        prose = re.sub(r"^( *)(`{3,}|~{3,}).*?^\1\2\s*$", "", text, flags=re.M | re.S)
        prose = re.sub(r"\[[^\]]*\]\([^)]*\)", "", prose)  # a link to a guide page is fine
        mentioned = set(re.findall(r"`@?ptc\.(\w+)", prose)) & set(ptc.__all__)
        linked = set(re.findall(r"\]\[pytreeclass\.(\w+)", text))
        unlinked += [f"{page.name}: ptc.{n}" for n in sorted(mentioned - linked)]
    assert not unlinked, "link to the reference: [`ptc.X`][pytreeclass.X]\n" + "\n".join(unlinked)


# -- the site -------------------------------------------------------------------------------


def _nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for v in nav.values() for f in _nav_files(v)]
    if isinstance(nav, list):
        return [f for v in nav for f in _nav_files(v)]
    return []


def _mkdocs_config() -> dict:
    import yaml
    from mkdocs.utils.yaml import get_yaml_loader

    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    return yaml.load(text, Loader=get_yaml_loader())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once per test session with `mkdocs build --strict`."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[test]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_mkdocs_build_strict(site: Path) -> None:
    config = _mkdocs_config()
    in_nav = set(_nav_files(config["nav"]))
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), f"pages missing from the nav: {sorted(pages - in_nav)}"
    assert in_nav - pages == set(), f"nav entries without a page: {sorted(in_nav - pages)}"
    for page in pages:
        html = site / (page[: -len(".md")] + "/index.html").removeprefix("index/")
        if page.endswith("index.md"):
            html = site / page.replace("index.md", "index.html")
        assert html.exists(), f"{page} was not built ({html})"
    sitemap = (site / "sitemap.xml").read_text(encoding="utf-8")
    assert sitemap.count("<loc>") == len(pages), "site_url unset: the sitemap is empty"


class _Anchors(html.parser.HTMLParser):
    """The ids of a page, and the hrefs of its links."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("id", "name") and value:
                self.ids.add(value)
            if tag == "a" and key == "href" and value:
                self.hrefs.append(value)


def _parse(path: Path) -> _Anchors:
    parser = _Anchors()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def test_every_internal_link_and_anchor_resolves(site: Path) -> None:
    pages = {p: _parse(p) for p in site.rglob("*.html")}
    broken = []
    for page, parsed in pages.items():
        for href in parsed.hrefs:
            url = urllib.parse.urlsplit(href)
            if url.scheme or url.netloc or href.startswith(("mailto:", "javascript:")):
                continue
            path = urllib.parse.unquote(url.path)
            if path.startswith("/"):  # 404.html links from the root: site_url's path is /
                target = site / path.lstrip("/")
            else:
                target = page.parent / path if path else page
            if target.is_dir() or url.path.endswith("/"):
                target = target / "index.html"
            target = target.resolve()
            where = f"{page.relative_to(site)}: {href}"
            if not target.exists():
                broken.append(f"{where} (no such file)")
            elif url.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if urllib.parse.unquote(url.fragment) not in ids:
                    broken.append(f"{where} (no such anchor)")
    assert not broken, "broken links:\n" + "\n".join(sorted(set(broken)))


def test_the_reference_links_back_to_the_guide(site: Path) -> None:
    """Each reference page links to guide pages, and the names the guide links
    (e.g. `ptc.tree_partition`) get "used by" backlinks to those sections."""
    for page in sorted(REFERENCE.glob("*.md")):
        if page.name == "index.md":
            continue
        html = (site / "reference" / page.stem / "index.html").read_text(encoding="utf-8")
        assert re.search(r'href="\.\./\.\./[\w-]+/(#[\w-]+)?"', html), page.name
    filters = (site / "reference" / "filters" / "index.html").read_text(encoding="utf-8")
    assert "doc-backlink" in filters


def _text(html_text: str) -> str:
    return re.sub(r"<[^>]+>", "", html_text)


def test_the_reference_shows_no_private_names_and_one_signature_each(site: Path) -> None:
    """Overloads are folded into one signature, and no `_T`, `_P`, `_Combination`
    or other private name shows in signatures, bases or text."""
    leaks, overloads = [], []
    for page in sorted((site / "reference").rglob("index.html")):
        html_text = page.read_text(encoding="utf-8")
        for name in sorted(set(re.findall(r"(?<![\w.])_[A-Z]\w*", _text(html_text)))):
            leaks.append(f"{page.parent.name}: {name}")
        if "doc-overloads" in html_text:
            overloads.append(page.parent.name)
    assert not leaks, "private names on the reference pages:\n" + "\n".join(leaks)
    assert not overloads, f"overloads shown on: {overloads}"


# `field` returns a Field at run time but is typed as its default's type (so that
# `x: int = field(default=1)` type-checks), and `Lens.get` returns whatever is at the
# path: no single precise type exists for either.
# tree_load: overloads give `T` with `like=`; without it the file decides the type.
_ANY_RETURN_OK = {"field", "Lens.get", "tree_load"}
# Filters' `mask(ctx)` is the protocol the selection functions call, not an API for
# users; the reference does not render it (`members: false`).
_NOT_RENDERED = {"mask", "node_test"}  # the filter protocol, not rendered


def _public_callables() -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name in ptc.__all__:
        obj = getattr(ptc, name)
        if isinstance(obj, type):
            for member, value in vars(obj).items():
                if member.startswith("_") or member in _NOT_RENDERED:
                    continue
                value = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                if inspect.isfunction(value):
                    out.append((f"{name}.{member}", value))
        elif callable(obj):
            out.append((name, obj))
    return out


def test_public_functions_return_precise_types() -> None:
    loose = [
        name
        for name, fn in _public_callables()
        if name not in _ANY_RETURN_OK
        and inspect.signature(fn).return_annotation in ("Any", "typing.Any")
    ]
    assert not loose, f"functions annotated `-> Any`: {loose}"


# The docstring options of mkdocs.yml's mkdocstrings handler.
_GRIFFE_OPTIONS = {"returns_multiple_items": False, "returns_named_value": False}


def test_public_functions_document_args_returns_raises() -> None:
    """Google-style sections, parsed as the docs site parses them (griffe)."""
    griffe = pytest.importorskip("griffe")
    package = griffe.load("pytreeclass", search_paths=[str(ROOT)], docstring_parser="google")
    missing = []
    for name, fn in _public_callables():
        obj = package[name]
        sections = {s.kind.value for s in obj.docstring.parse("google")} if obj.docstring else set()
        params = [
            p for p in inspect.signature(fn).parameters.values() if p.name not in ("self", "cls")
        ]
        if params and "parameters" not in sections:
            missing.append(f"{name}: Args")
        returns = inspect.signature(fn).return_annotation
        if returns not in ("None", None) and "returns" not in sections:
            missing.append(f"{name}: Returns")
        # A Returns section is read as "type: description" up to its first colon: a
        # colon in its first line would put words in the reference's Type column.
        for section in obj.docstring.parse("google", **_GRIFFE_OPTIONS) if obj.docstring else []:
            if section.kind.value == "returns":
                shown = str(section.value[0].annotation).replace(" ", "")
                if shown != str(returns).replace(" ", "").replace("'", ""):
                    missing.append(f"{name}: Returns shows the type {shown!r}")
        source = inspect.getsource(fn)
        if re.search(r"^\s+raise \w", source, flags=re.M) and "raises" not in sections:
            missing.append(f"{name}: Raises")
    assert not missing, "docstring sections missing:\n" + "\n".join(missing)


def test_field_attributes_are_a_parsed_section() -> None:
    griffe = pytest.importorskip("griffe")
    package = griffe.load("pytreeclass", search_paths=[str(ROOT)], docstring_parser="google")
    sections = package["Field"].docstring.parse("google")
    attributes = [s for s in sections if s.kind.value == "attributes"]
    assert attributes, "Field's docstring needs an `Attributes:` section"
    names = {a.name for a in attributes[0].value}
    assert {"kind", "static", "axes", "converter", "doc"} <= names


# -- search ---------------------------------------------------------------------------------

# What lunr does with the built index (Material for MkDocs' search): split text and
# query with the configured separator, lowercase, drop English stop words, and match a
# query term against the start of an indexed term.
_STOP_WORDS = {"a", "an", "and", "of", "the", "to", "in", "is", "it", "for", "on", "or"}


def _terms(text: str, separator: str) -> set[str]:
    text = re.sub(r"<[^>]+>", " ", text)  # Material indexes the text, not the tags
    return {t.lower() for t in re.split(separator, text) if t} - _STOP_WORDS


def _search(index: dict, query: str, separator: str) -> set[str]:
    """The pages on which every term of the query matches (the strictest reading)."""
    wanted = _terms(query, separator)
    found = set()
    for doc in index["docs"]:
        terms = _terms(doc["title"] + " " + doc["text"], separator)
        if wanted and all(any(t.startswith(w) for t in terms) for w in wanted):
            found.add(doc["location"].split("#")[0])
    return found


def _pages_using(index: dict, name: str) -> set[str]:
    return {
        doc["location"].split("#")[0]
        for doc in index["docs"]
        if name in re.sub(r"<[^>]+>", " ", doc["title"] + " " + doc["text"])
    }


@pytest.mark.parametrize("name", ["tree_partition", "vmap", "OfType", "value_and_tree"])
def test_search_finds_api_names_on_every_page_that_uses_them(site: Path, name: str) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    separator = index["config"]["separator"]
    using = _pages_using(index, name)
    assert len(using) >= 2, f"{name!r} is on {sorted(using)} only: the test checks nothing"
    found = _search(index, name, separator)
    assert using <= found, f"searching {name!r} misses {sorted(using - found)}"
    # and the search is precise: a page is found only where the name is used
    assert found <= using, f"searching {name!r} also lists {sorted(found - using)}"


def test_search_check_would_catch_the_default_separator(site: Path) -> None:
    """mkdocs' default separator indexes `ptc.tree_partition(x)` as one word."""
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    using = _pages_using(index, "tree_partition")
    assert not using <= _search(index, "tree_partition", r"[\s\-]+")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    # The README's first screen has two set-up commands; CI must run the second as written.
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme[:30] if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2 and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in [line.strip() for line in ci]


# -- pictures -------------------------------------------------------------------------------

IMAGES = DOCS / "images"


def test_the_figure_script_draws_every_committed_picture(tmp_path: Path) -> None:
    """docs/_tools/make_figures.py runs (the getting-started page, the benchmark
    tables it parses) and draws exactly the pictures committed in docs/images/."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location(
        "make_figures", DOCS / "_tools" / "make_figures.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_figures"] = module  # dataclasses look the classes' module up
    try:
        spec.loader.exec_module(module)
        drawn = module.main(tmp_path)
    finally:
        del sys.modules["make_figures"]
    assert {p.name for p in drawn} == {p.name for p in IMAGES.glob("*.png")}
    for path in drawn:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"no table under '### 9\. nothing'"):
        module.table("### 8a. x\n\n| a |\n|---|\n| 1 |\n", "9. nothing")


def test_every_picture_is_shown_and_every_shown_picture_exists() -> None:
    shown: set[str] = set()
    for page in _shown_pages():
        for src in re.findall(r"!\[[^\]]+\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            target = (page.parent / src).resolve()
            assert target.exists(), f"{_page_id(page)} shows {src}, which does not exist"
            shown.add(target.name)
    committed = {p.name for p in IMAGES.glob("*.png")}
    assert len(committed) >= 4
    assert committed <= shown, f"pictures no page shows: {sorted(committed - shown)}"


def test_the_raises_sections_say_what_happens() -> None:
    """What the Raises sections of the display functions, `Lens.paths`,
    `value_and_tree` and `Optimizer.reinit` promise, happens."""
    import jax.numpy as jnp
    import optax

    from pytreeclass._tree_util import MAX_ITEMS

    deep: object = 1.0
    for _ in range(3000):
        deep = [deep]
    # tree_summary and tree_kinds recurse only where JAX's flatten does; a diagram
    # draws each level, so it is too deep everywhere
    deep_fns = [ptc.tree_diagram]
    if JAX_FLATTEN_RECURSES:
        deep_fns += [ptc.tree_summary, ptc.tree_kinds]
    for fn in deep_fns:
        with pytest.raises(ptc.TreeTooDeepError, match="nested too deeply"):
            fn(deep)
    if JAX_FLATTEN_RECURSES:
        with pytest.raises(ptc.TreeTooDeepError, match="nested too deeply"):
            ptc.at(deep)[float].paths()
    else:  # a JAX that flattens any depth: the selection engine walks it without recursion
        assert ptc.at(deep)[float].paths() == ["[0]" * 3000]
    with pytest.raises(KeyError, match="no key 'b'"):
        ptc.at({"a": 1})["b"].paths()
    with pytest.raises(IndexError):
        ptc.at([1])[3].paths()

    @ptc.treeclass
    class Box:
        x: int

    def add(box: Box) -> None:
        box.y = 1

    def drop(box: Box) -> None:
        del box.x

    with pytest.raises(AttributeError, match="cannot set 'y' on Box"):
        ptc.value_and_tree(add)(Box(1))
    with pytest.raises(TypeError, match="deleted field"):
        ptc.value_and_tree(drop)(Box(1))
    opt = ptc.Optimizer.create(optax.adam(0.1), {"a": jnp.ones(2)})
    with pytest.raises(TypeError):
        opt.reinit({"a": "not an array"})
    # the signature shows the number; the display module's constant is the same
    assert inspect.signature(ptc.tree_diagram).parameters["max_items"].default == MAX_ITEMS


def test_reference_signatures_name_only_public_or_documented_types(site: Path) -> None:
    """A signature on the reference shows no module-internal name (a `Format` alias,
    a `MAX_ITEMS` default) unless it links to an entry that documents it."""
    import typing

    internal = set()
    for module_name in _modules():
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if name in ptc.__all__ or name.startswith("_") or isinstance(value, typing.TypeVar):
                continue
            defined_here = getattr(value, "__module__", module_name).startswith("pytreeclass")
            alias = type(value).__module__ == "typing"  # Format = Literal[...]
            constant = not callable(value) and not isinstance(value, types.ModuleType)
            if defined_here or alias or constant:
                internal.add(name)
    internal -= set(dir(typing)) | {"T", "Self"}
    shown = []
    for page in sorted((site / "reference").rglob("index.html")):
        html_text = page.read_text(encoding="utf-8")
        for sig in re.findall(r'<div class="doc-signature.*?</div>', html_text, flags=re.S):
            unlinked = re.sub(r"<a\b[^>]*>.*?</a>", "", sig, flags=re.S)
            for name in sorted(set(re.findall(r"\b[A-Za-z_]\w*\b", _text(unlinked))) & internal):
                shown.append(f"{page.parent.name}: {name}")
    assert not shown, "internal names in signatures:\n" + "\n".join(sorted(set(shown)))


@pytest.mark.parametrize("name", ["counter", "running_average", "dropout_rng"])
def test_example_pages_show_what_the_scripts_print(name: str) -> None:
    """The output on an example's page is the script's (the quick, deterministic
    ones are rerun here; docs/_tools/fill_outputs.py --examples rewrites them all)."""
    spec = importlib.util.spec_from_file_location(
        "fill_outputs", DOCS / "_tools" / "fill_outputs.py"
    )
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    page = (DOCS / "examples" / f"{name}.md").read_text(encoding="utf-8")
    shown = tool.EXAMPLE_OUTPUT.search(page)
    assert shown is not None, f"docs/examples/{name}.md has no output block"
    assert _outputs_match(tool.example_output(name), shown[1])


def test_every_example_has_a_page_with_its_output() -> None:
    scripts = {p.stem for p in (ROOT / "examples").glob("*.py")}
    pages = {p.stem for p in (DOCS / "examples").glob("*.md")}
    assert scripts == pages
    index = (DOCS / "examples.md").read_text(encoding="utf-8")
    for name in scripts:
        page = (DOCS / "examples" / f"{name}.md").read_text(encoding="utf-8")
        assert f'--8<-- "examples/{name}.py"' in page
        assert 'title="Output of one run' in page, name
        assert f"(examples/{name}.md)" in index, name


def test_the_home_page_starts_with_the_install_line_and_lists_every_page() -> None:
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    first_block = home.split("```")[1]
    assert first_block.startswith("bash\npip install ."), "the first block installs"
    linked = set(re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]*)?\)", home))
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}
    assert pages <= linked, f"pages the home page does not list: {sorted(pages - linked)}"
    assert "reference/index.md" in home


def test_the_site_publishes_pages_only_and_requests_nothing_outside(site: Path) -> None:
    """No tool or config file is published, no page loads a web font, and the
    reference's backlinks wrap on a phone (docs/_tools/browser_check.py measures
    the same in a browser)."""
    published = {p.name for p in site.rglob("*") if p.is_file()}
    assert not published & {"ruff.toml", "make_figures.py", "browser_check.py"}
    for page in site.rglob("*.html"):
        assert "fonts.googleapis" not in page.read_text(encoding="utf-8"), page
    css = (site / "stylesheets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.doc-backlink-crumb\s*\{\s*white-space:\s*normal", css)
