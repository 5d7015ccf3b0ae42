"""Draw the pictures of the docs site into docs/images/.

    python docs/_tools/make_figures.py              # all of them
    python docs/_tools/make_figures.py --out /tmp   # somewhere else

Each picture comes from something real, never from typed-in numbers:

* getting-started-loss.png: the `losses` that the code of
  docs/getting-started.md records when it runs (the page runs here, block by
  block, as tests/test_docs.py runs it);
* train-mlp-loss.png: the picture examples/train_mlp.py saves, from a run;
* tree-kinds.png: a small model, drawn from its own pytree structure, each leaf
  coloured by the kind `ptc.tree_labels` gives it;
* stacks-compile.png: compile and step time against depth for scanned and
  unrolled layer stacks, parsed from tables 8a and 8b of
  benchmarks/results.md (written by `python benchmarks/run.py`);
* io-formats.png: save and load times and the peak memory of a load for the
  file formats, parsed from table 7 of benchmarks/results.md.

tests/test_docs.py runs this script into a temporary folder, so a change that
breaks a picture (a renamed benchmark table, a page that no longer records its
losses) fails the tests. Rerun it after `benchmarks/run.py` or after editing
getting-started.md, and commit the images.
"""

from __future__ import annotations

import argparse
import contextlib
import doctest
import io
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import matplotlib.ticker

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"
RESULTS = ROOT / "benchmarks" / "results.md"
KIND_COLOURS = {
    "Parameter": "#4c72b0",
    "BatchStat": "#dd8452",
    "Rng": "#55a868",
    "State": "#c44e52",
    "static": "#bbbbbb",
    "-": "#eeeeee",
}
DPI = 110


# -- the getting-started loss curve --------------------------------------------------------


def run_page(page: Path) -> dict[str, Any]:
    """Run a docs page's code blocks in order, as the tests do; return its namespace."""
    sys.path.insert(0, str(ROOT))
    from tests.test_docs import extract_blocks

    name = "docs_figures_" + re.sub(r"\W", "_", page.stem)
    module = types.ModuleType(name)
    sys.modules[name] = module  # dataclasses look the page's classes up here
    ns = module.__dict__
    for block in extract_blocks(page.read_text(encoding="utf-8")):
        if block.lang == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(block.code, str(page), "exec"), ns)
        else:
            test = doctest.DocTestParser().get_doctest(
                block.code, ns, name, None, 0
            )
            doctest.DocTestRunner().run(
                test, out=lambda _: None, clear_globs=False
            )
            ns.update(test.globs)
    del sys.modules[name]
    return ns


def loss_curve(out: Path) -> Path:
    ns = run_page(ROOT / "docs" / "getting-started.md")
    losses = ns["losses"]
    steps_per_epoch = len(losses) // 20
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(losses, lw=0.8, color=KIND_COLOURS["Parameter"], label="batch loss")
    window = steps_per_epoch
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1])
        / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    ax.plot(
        smooth,
        lw=2,
        color="#222222",
        label=f"mean of {window} steps (one epoch)",
    )
    ax.set(yscale="log", xlabel="step", ylabel="mean squared error")
    ax.set_title("getting-started.md: training the MLP", fontsize=10)
    ax.legend(frameon=False)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out / "getting-started-loss.png")


def train_mlp_curve(out: Path) -> Path:
    """examples/train_mlp.py's own picture, from a full run of the script."""
    import importlib.util

    script = ROOT / "examples" / "train_mlp.py"
    spec = importlib.util.spec_from_file_location("example_train_mlp", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the classes' module up
    try:
        spec.loader.exec_module(module)
        with contextlib.redirect_stdout(io.StringIO()):
            module.main(plot=out / "train-mlp-loss.png")
    finally:
        del sys.modules[spec.name]
    return out / "train-mlp-loss.png"


# -- a model drawn as a tree ---------------------------------------------------------------


def small_model() -> Any:
    import jax
    import jax.numpy as jnp

    import pytreeclass as ptc

    @ptc.treeclass
    class Dense:
        w: jax.Array = ptc.field(kind=ptc.Parameter)
        b: jax.Array = ptc.field(kind=ptc.Parameter)

    @ptc.treeclass
    class BatchNorm:
        scale: jax.Array = ptc.field(kind=ptc.Parameter)
        mean: jax.Array = ptc.field(kind=ptc.BatchStat)
        var: jax.Array = ptc.field(kind=ptc.BatchStat)
        momentum: float = ptc.field(static=True, default=0.9)

    @ptc.treeclass
    class Dropout:
        key: jax.Array = ptc.field(kind=ptc.Rng)
        rate: float = ptc.field(static=True, default=0.1)

    @ptc.treeclass
    class Net:
        layers: list
        steps: jax.Array = ptc.field(kind=ptc.State)

    def dense(n_in: int, n_out: int) -> Dense:
        return Dense(jnp.zeros((n_in, n_out)), jnp.zeros(n_out))

    return Net(
        [
            dense(4, 8),
            BatchNorm(jnp.ones(8), jnp.zeros(8), jnp.ones(8)),
            Dropout(jax.random.key(0)),
            dense(8, 2),
        ],
        jnp.zeros((), jnp.int32),
    )


class _Node:
    def __init__(self, label: str, colour: str | None = None) -> None:
        self.label, self.colour = label, colour
        self.children: list[_Node] = []
        self.x = self.y = 0.0


def _describe(obj: Any, label: str, kinds: Any) -> _Node:
    """The drawing's node for `obj`, with `kinds` its `tree_labels` twin."""
    import jax

    import pytreeclass as ptc

    children = jax.tree_util.tree_flatten_with_path(
        obj, is_leaf=lambda x: x is not obj
    )[0]
    if not children or (len(children) == 1 and children[0][1] is obj):
        shape = (
            f"{obj.dtype.name}{list(obj.shape)}"
            if hasattr(obj, "shape")
            else repr(obj)
        )
        return _Node(
            f"{label}\n{shape}", KIND_COLOURS.get(str(kinds), KIND_COLOURS["-"])
        )
    kind_children = jax.tree_util.tree_flatten_with_path(
        kinds, is_leaf=lambda x: x is not kinds
    )
    node = _Node(f"{label}\n{type(obj).__name__}")
    for (path, child), (_, child_kinds) in zip(children, kind_children[0]):
        key = jax.tree_util.keystr(path).lstrip(".")
        node.children.append(_describe(child, key, child_kinds))
    if ptc.is_treeclass(obj):
        for f in ptc.fields(obj):
            if f.static:
                value = getattr(obj, f.name)
                node.children.append(
                    _Node(f"{f.name}\n{value!r}", KIND_COLOURS["static"])
                )
    return node


def _layout(node: _Node, depth: int, next_x: list[float]) -> None:
    node.y = -depth
    if not node.children:
        node.x = next_x[0]
        next_x[0] += 1
        return
    for child in node.children:
        _layout(child, depth + 1, next_x)
    node.x = (node.children[0].x + node.children[-1].x) / 2


def _draw(ax: Any, node: _Node) -> None:
    for child in node.children:
        ax.plot(
            [node.x, child.x],
            [node.y - 0.22, child.y + 0.22],
            color="#888888",
            lw=0.8,
        )
        _draw(ax, child)
    ax.text(
        node.x,
        node.y,
        node.label,
        ha="center",
        va="center",
        fontsize=7.5,
        bbox={
            "boxstyle": "round,pad=0.3",
            "facecolor": node.colour or "white",
            "edgecolor": "#555555",
            "alpha": 0.9 if node.colour else 1.0,
        },
        color="white"
        if node.colour in (KIND_COLOURS["Parameter"], KIND_COLOURS["State"])
        else "black",
    )


def tree_picture(out: Path) -> Path:
    import pytreeclass as ptc

    model = small_model()
    root = _describe(model, "model", ptc.tree_labels(model))
    next_x = [0.0]
    _layout(root, 0, next_x)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    _draw(ax, root)
    ax.set_xlim(-0.6, next_x[0] - 0.4)
    ax.set_ylim(-3.5, 0.5)
    ax.axis("off")
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="#555555")
        for c in KIND_COLOURS.values()
    ]
    ax.legend(
        handles,
        list(KIND_COLOURS),
        loc="lower center",
        ncol=len(KIND_COLOURS),
        frameon=False,
        fontsize=8,
        bbox_to_anchor=(0.5, -0.12),
    )
    return _save(fig, out / "tree-kinds.png")


# -- benchmarks/results.md -----------------------------------------------------------------


def table(text: str, heading: str) -> list[list[str]]:
    """The rows of the markdown table under the `### heading...` of results.md."""
    m = re.search(
        rf"^### {re.escape(heading)}.*?\n\n((?:\|.*\n)+)", text, flags=re.M
    )
    if m is None:
        raise ValueError(
            f"benchmarks/results.md has no table under '### {heading}'"
        )
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in m[1].splitlines()
    ]
    return rows[2:]  # no header, no :--- row


def seconds(cell: str) -> float | None:
    """'3.61 s', '532.78 ms', '167 ms', '10.5 s' -> seconds; anything else -> None."""
    m = re.fullmatch(r"([\d.,]+) (s|ms|µs)", cell)
    if m is None:
        return None
    scale = {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[m[2]]
    return float(m[1].replace(",", "")) * scale


def stacks_picture(out: Path, results: str) -> Path:
    compile_rows = table(results, "8a. layer stacks: compile time")
    step_rows = table(results, "8b. layer stacks: one compiled training step")
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    depths = [int(r[0]) for r in compile_rows]
    for col, name, colour in (
        (1, "scanned (scan_layers)", "#4c72b0"),
        (3, "unrolled (list)", "#dd8452"),
    ):
        points = [(d, seconds(r[col])) for d, r in zip(depths, compile_rows)]
        done = [(d, s) for d, s in points if s is not None]
        left.plot(*zip(*done), "o-", color=colour, label=name)
        for d, r in zip(depths, compile_rows):
            stopped = re.search(r"\((\d+) s", r[col])
            if seconds(r[col]) is None and stopped:  # killed before it compiled
                left.plot([d], [float(stopped[1])], "x", color=colour, ms=10)
                left.annotate(
                    f"{r[col].split(' (')[0]}\nafter {stopped[1]} s",
                    (d, float(stopped[1])),
                    textcoords="offset points",
                    xytext=(-10, -4),
                    ha="right",
                    va="top",
                    fontsize=8,
                    color=colour,
                )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="depth (blocks)",
        ylabel="compile time (s, CPU)",
    )
    left.set_xticks(depths, [str(d) for d in depths])
    left.set_title("compile a training step", fontsize=10)
    left.legend(frameon=False, fontsize=8)
    step_depths = [int(r[0]) for r in step_rows]
    for col, name, colour in (
        (1, "scanned", "#4c72b0"),
        (2, "unrolled", "#dd8452"),
    ):
        done = [(d, seconds(r[col])) for d, r in zip(step_depths, step_rows)]
        done = [(d, 1e3 * s) for d, s in done if s is not None]
        right.plot(*zip(*done), "o-", color=colour, label=name)
    right.set(
        xscale="log",
        yscale="log",
        xlabel="depth (blocks)",
        ylabel="ms per step (CPU)",
    )
    right.set_xticks(step_depths, [str(d) for d in step_depths])
    right.set_title("run one compiled step", fontsize=10)
    right.legend(frameon=False, fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    fig.suptitle(
        "benchmarks/results.md, tables 8a and 8b (transformer, adam)",
        fontsize=9,
    )
    return _save(fig, out / "stacks-compile.png")


def io_picture(out: Path, results: str) -> Path:
    rows = table(results, "7. saving and loading")
    trees: dict[str, dict[str, tuple[float, float]]] = {}
    for name, save, load, *_ in rows:
        tree, library = name.split(": ", 1)
        save_s, load_s = seconds(save), seconds(load)
        assert save_s is not None and load_s is not None, name
        trees.setdefault(tree, {})[library] = (save_s, load_s)
    section = results[results.index("### 7. saving and loading") :]
    memory = {
        m[1]: float(m[2])
        for m in re.finditer(
            r"^- peak extra memory loading 1 GiB, (.+): ([\d.]+) GiB$",
            section,
            flags=re.M,
        )
    }
    if not memory:
        raise ValueError(
            "benchmarks/results.md, table 7: no 'peak extra memory' lines"
        )
    fig, axes = plt.subplots(1, len(trees) + 1, figsize=(11, 3.6))
    colours = ["#8c8c8c", "#c9b27c", "#4c72b0", "#55a868"]
    for ax, (tree, libraries) in zip(axes, trees.items()):
        names = list(libraries)
        for k, offset in enumerate((-0.2, 0.2)):
            ax.bar(
                [i + offset for i in range(len(names))],
                [libraries[n][k] for n in names],
                width=0.38,
                color=colours,
                hatch="" if k == 1 else "//",
                edgecolor="white",
            )
        ax.set_xticks([])
        ax.set_title(tree.replace(" (1 GiB)", "\n(1 GiB)"), fontsize=9)
        ax.set_ylabel("seconds (hatched: save, plain: load)", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    ax = axes[-1]
    ax.bar(
        range(len(memory)),
        list(memory.values()),
        color=[colours[0], colours[2], colours[3]],
    )
    ax.set_xticks(range(len(memory)), [_short(n) for n in memory], fontsize=7)
    fig.legend(
        [plt.Rectangle((0, 0), 1, 1, facecolor=c) for c in colours],
        names,
        loc="lower center",
        ncol=len(names),
        frameon=False,
        fontsize=8,
    )
    ax.set_ylabel("GiB", fontsize=8)
    ax.set_title("peak extra memory,\nloading 1 GiB", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    fig.suptitle(
        "benchmarks/results.md, table 7 (wall time, page cache warm)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, out / "io-formats.png")


def _short(library: str) -> str:
    return library.replace("pytreeclass ", "pytreeclass\n")


def _save(fig: Any, path: Path) -> Path:
    if not fig.get_layout_engine():
        fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


FIGURES: dict[str, Callable[[Path, str], Path]] = {
    "getting-started-loss.png": lambda out, _: loss_curve(out),
    "train-mlp-loss.png": lambda out, _: train_mlp_curve(out),
    "tree-kinds.png": lambda out, _: tree_picture(out),
    "stacks-compile.png": stacks_picture,
    "io-formats.png": io_picture,
}


def main(out: Path = IMAGES, only: list[str] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = RESULTS.read_text(encoding="utf-8")
    return [
        make(out, results)
        for name, make in FIGURES.items()
        if not only or name in only
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=IMAGES)
    parser.add_argument(
        "only", nargs="*", help="file names of the figures to draw"
    )
    args = parser.parse_args()
    for path in main(args.out, args.only):
        print(path)
