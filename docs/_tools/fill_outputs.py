"""Write what each docs block prints into the output block under it.

    python docs/_tools/fill_outputs.py docs/getting-started.md [more pages]
    python docs/_tools/fill_outputs.py --examples [counter ...]

A page's python and pycon blocks run in order in one namespace, as
tests/test_docs.py runs them; the body of every ```` ```text title="Output" ````
block that follows a python block is replaced by what that block printed. The
test then keeps it honest: it fails when a shown output no longer matches.

With `--examples`, it runs each script of examples/ (all, or those named) and
writes what it prints into the ```` ```text title="Output of one run ..." ````
block of its page in docs/examples/, leaving out lines wider than the code
column (80 characters). tests/test_docs.py reruns the quick, deterministic
ones and compares.
"""

from __future__ import annotations

import contextlib
import doctest
import io
import re
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.test_docs import _FENCE, _OUTPUT_INFO, NOTEST  # noqa: E402


def _fence_end(lines: list[str], start: int, fence: str) -> int:
    j = start + 1
    while not (
        lines[j].strip().startswith(fence)
        and not lines[j].strip().strip(fence[0])
    ):
        j += 1
    return j


def fill(page: Path) -> int:
    """Rewrite the output blocks of `page`; return how many it filled."""
    lines = page.read_text(encoding="utf-8").splitlines()
    module = types.ModuleType("docs_fill_" + page.stem.replace("-", "_"))
    sys.modules[module.__name__] = module
    ns = module.__dict__
    out: list[str] = []
    filled, i, pending = 0, 0, None
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        fence, indent = m["fence"], m["indent"]
        info = m["info"].strip()
        end = _fence_end(lines, i, fence)
        body = [ln[len(indent) :] for ln in lines[i + 1 : end]]
        lang = info.split(" ")[0].lower() if info else ""
        prev = next(
            (ln.strip() for ln in reversed(lines[:i]) if ln.strip()), ""
        )
        if _OUTPUT_INFO.match(info) and pending is not None:
            shown = [
                indent + ln if ln.strip() else "" for ln in pending.splitlines()
            ]
            out += [lines[i], *shown, lines[end]]
            filled += 1
            pending = None
            i = end + 1
            continue
        pending = None
        out += lines[i : end + 1]
        if lang in ("python", "py") and prev != NOTEST:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile("\n".join(body), str(page), "exec"), ns)
            pending = printed.getvalue().rstrip("\n")
        elif lang == "pycon" and prev != NOTEST:
            test = doctest.DocTestParser().get_doctest(
                "\n".join(body), ns, "x", None, 0
            )
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
            runner.run(test, out=lambda _: None, clear_globs=False)
            ns.update(test.globs)
        i = end + 1
    page.write_text("\n".join(out) + "\n", encoding="utf-8")
    return filled


EXAMPLE_OUTPUT = re.compile(
    r'^```text title="Output of one run[^"]*"\n(.*?)^```$', re.M | re.S
)


def example_output(name: str) -> str:
    """What `python examples/<name>.py` prints, as its page shows it."""
    run = subprocess.run(
        [sys.executable, f"examples/{name}.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return "\n".join(ln for ln in run.stdout.splitlines() if len(ln) <= 80)


def fill_example(name: str) -> None:
    page = ROOT / "docs" / "examples" / f"{name}.md"
    text = page.read_text(encoding="utf-8")
    match = EXAMPLE_OUTPUT.search(text)
    if match is None:
        raise ValueError(f"{page}: no output block to fill")
    shown = example_output(name) + "\n"
    page.write_text(
        text[: match.start(1)] + shown + text[match.end(1) :], encoding="utf-8"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--examples"]:
        names = sys.argv[2:] or sorted(
            p.stem for p in (ROOT / "examples").glob("*.py")
        )
        for name in names:
            fill_example(name)
            print(f"docs/examples/{name}.md: output filled")
    else:
        for name in sys.argv[1:]:
            print(f"{name}: {fill(Path(name))} output blocks filled")
