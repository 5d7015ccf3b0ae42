"""Displays of whole trees: `tree_summary` tables and `tree_diagram` text trees.

(The `repr` of a treeclass and its notebook HTML are `_repr`.)
"""

from __future__ import annotations

import html
from typing import Any, NamedTuple

import jax
import numpy as np

from ._class._meta import meta_of
from ._errors import reraise_if_too_deep
from ._leaf_facts import Leaves, leaf_axes, leaf_kinds
from ._stack import TIMES, find_stacks, stack_size
from ._tree_util import Elided, has_shape_dtype, key_label, leaf_repr, one_level

__all__ = [
    "GroupRow",
    "StackRow",
    "SummaryRow",
    "TreeSummary",
    "tree_aliases",
    "tree_diagram",
    "tree_summary",
]


def _children(node: Any) -> list[tuple[Any, Any]] | None:
    """One level of `node` as (key, child) pairs; None for a leaf."""
    level = one_level(node)
    return None if level is None else list(zip(level[0], level[1]))


# -- display objects ----------------------------------------------------------------------------


class _Text(str):
    """A `str` that shows itself unquoted at the prompt (`repr` is the text itself)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class SummaryRow(NamedTuple):
    """One leaf of a `tree_summary` table.

    `node` is the class of the innermost node holding the leaf, skipping plain
    containers (list, tuple, dict): the `Linear` of `.layers[0].w`. `shared` is the path
    of an earlier leaf that is the very same array (then `count` and `bytes` are 0)."""

    path: str
    node: str
    kind: str
    type: str
    shape_dtype: str
    count: int  # pyright: ignore[reportIncompatibleMethodOverride]
    bytes: int
    shared: str | None = None


class StackRow(NamedTuple):
    """One field declared `field(stack=...)` in a `tree_summary` table."""

    path: str
    type: str  # the layer's type, e.g. "Block"
    layers: int
    count_per_layer: int
    count: int  # pyright: ignore[reportIncompatibleMethodOverride]
    bytes: int


class GroupRow(NamedTuple):
    """One node at the grouping depth of `tree_summary(tree, depth=n)`: its leaves summed.

    `path` is the node's key path; a run of equal-structure siblings in a list or tuple
    is one row whose path is a slice (`.blocks[0:96]`) and whose `node` has a count
    (`Block x96`). `kind` lists the kinds of the leaves below, in order of appearance."""

    path: str
    node: str
    kind: str
    leaves: int
    count: int  # pyright: ignore[reportIncompatibleMethodOverride]
    bytes: int


class TreeSummary(_Text):
    """The table `tree_summary` returns: a `str` (print it, compare it) with the data too.

    Attributes:
        rows: one `SummaryRow(path, node, kind, type, shape_dtype, count, bytes, shared)`
            per leaf.
        totals: `{kind name: (count, bytes)}` in order of first appearance, then `"all"`.
        stacks: one `StackRow(path, type, layers, count_per_layer, count, bytes)` per
            field declared `field(stack=...)`; the table shows it as a line such as
            `.blocks  Block x24  1,040/layer  24,960` above the stack's leaves.
        groups: with `depth=n`, one `GroupRow(path, node, kind, leaves, count, bytes)`
            per line of the table that stands for a node at depth `n` (empty without
            `depth`).
    """

    rows: tuple[SummaryRow, ...]
    totals: dict[str, tuple[int, int]]
    stacks: tuple[StackRow, ...]
    groups: tuple[GroupRow, ...]
    _body: list[tuple[str, ...]]  # the table's lines as cells, for the HTML

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in _HEADER)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
            for cells in self._body
        )
        foot = "".join(
            f"<tr><th>total</th><th></th><th>{html.escape(k)}</th><th></th><th></th>"
            f"<th>{c:,}</th><th>{b:,}</th></tr>"
            for k, (c, b) in self.totals.items()
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody><tfoot>{foot}</tfoot></table>"


_HEADER = ("path", "node", "kind", "type", "shape/dtype", "count", "bytes")
_TEXT_COLUMNS = 5  # left-aligned; the numbers after them are right-aligned


def _cells(r: SummaryRow) -> tuple[str, ...]:
    shape = r.shape_dtype if r.shared is None else f"{r.shape_dtype} = {r.shared}"
    return (r.path, r.node, r.kind, r.type, shape, f"{r.count:,}", f"{r.bytes:,}")


_CONTAINERS = (list, tuple, dict)


def _leaf_nodes(treedef: Any) -> list[str]:
    """Per leaf: the class name of the innermost node holding it that is not a plain
    container (the container's own name when there is no such node), `-` at the root."""
    out: list[str] = []
    stack = [(treedef, "-")]  # a loop, not recursion: trees may be deeper than the stack
    while stack:
        td, holder = stack.pop()
        data = td.node_data()
        if data is None:
            out.append(holder)
            continue
        cls = data[0]
        plain = cls in _CONTAINERS or type(None) is cls
        name = holder if plain and holder != "-" else cls.__name__
        stack.extend((child, name) for child in reversed(td.children()))
    return out


def _alias_groups(leaves: list[Any]) -> list[list[int]]:
    """Indices of leaves that are one and the same array, in groups of two or more."""
    first: dict[int, list[int]] = {}
    for i, x in enumerate(leaves):
        if isinstance(x, (jax.Array, np.ndarray)):  # a buffer (tracers too), not a scalar
            first.setdefault(id(x), []).append(i)
    return [group for group in first.values() if len(group) > 1]


def tree_aliases(tree: Any) -> list[tuple[str, ...]]:
    """Groups of key paths whose leaves are the very same array object (tied weights).

    JAX does not keep two uses of one array tied: after a jitted step each path holds
    its own updated copy, and `donate_argnums` refuses a buffer donated twice. Store a
    shared array once and derive the other use from it (a property or method); this
    finds accidental ties. Only arrays count (a small int is the same object everywhere).

    Args:
        tree: any pytree.

    Returns:
        One tuple of key paths (as `jax.tree_util.keystr` writes them) per array that
        sits at two or more paths, in leaf order; an empty list when nothing is shared.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> w = jnp.ones((2, 2))
        >>> ptc.tree_aliases({"embed": w, "head": w, "bias": jnp.zeros(2)})
        [("['embed']", "['head']")]
    """
    try:
        pairs = jax.tree_util.tree_flatten_with_path(tree)[0]
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_aliases", e)
        raise
    leaves = [x for _, x in pairs]
    paths = [jax.tree_util.keystr(p) or "<root>" for p, _ in pairs]
    return [tuple(paths[i] for i in group) for group in _alias_groups(leaves)]


def _kind_name(kind: Any) -> str:
    return "-" if kind is None else kind.__name__


def _type_name(x: Any) -> str:
    if isinstance(x, jax.Array):
        return "Array"  # not ArrayImpl / DynamicJaxprTracer: the type users write
    return type(x).__name__


def _count_bytes(x: Any) -> tuple[int, int]:
    if has_shape_dtype(x):
        n = int(np.prod(x.shape))
        return n, n * x.dtype.itemsize  # PRNG key dtypes know their itemsize too
    if isinstance(x, (bool, int, float, complex)):
        return 1, 0  # a Python number: one value, in no device buffer
    return 0, 0


def tree_summary(tree: Any, *, depth: int | None = None) -> TreeSummary:
    """A table of the leaves of `tree`: path, node, kind, type, shape/dtype, count, bytes.

    One row per leaf, then totals per kind (kinds as in `ptc.tree_kinds`, `-` for none)
    and overall. `node` is the class of the innermost node holding the leaf, skipping
    plain lists, tuples and dicts (what `ptc.OfType(...)` would have to name to select
    it). `count` is the number of array elements (1 for a Python number, 0 for other
    objects); `bytes` is what the arrays hold (`count * itemsize`; 0 for non-arrays).
    Non-array leaves show their short `repr` in the shape/dtype column. An array that
    appears at several paths (tied weights, see `ptc.tree_aliases`) is counted once: its
    later rows show `= <first path>` and count 0. It works on abstract trees
    (`jax.eval_shape`) and inside `jax.jit`.

    With `depth=n` the table shows one line per node `n` keys below the root, its
    leaves summed (`shape/dtype` says how many leaves), and leaves less deep as usual;
    a run of equal-structure nodes in a list or tuple (same type, kinds, leaf shapes
    and dtypes) is one line, `.blocks[0:96]  Block x96`. So a model of any depth reads
    at a glance; the totals per kind and the `rows` are those of every leaf.

    Args:
        tree: any pytree.
        depth: group the leaves by their node at this depth (0: the whole tree in one
            line); `None` (the default): one line per leaf.

    Returns:
        The table as a `str` (print it), with the numbers as attributes too, `rows`
        (one per leaf), `totals` (a dict from kind name to `(count, bytes)`) and, with
        `depth`, `groups`; an HTML table in notebooks.

    Raises:
        ValueError: `depth` is negative or not an int.

    Raises:
        TreeTooDeepError: the tree is nested deeper than pytreeclass walks, or
            holds a reference cycle.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Linear:
        ...     w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     n: jnp.ndarray
        >>> layer = Linear(jnp.ones((3, 4)), jnp.zeros((), "int32"))
        >>> print(ptc.tree_summary(layer))
        path   node    kind       type   shape/dtype  count  bytes
        -----  ------  ---------  -----  -----------  -----  -----
        .w     Linear  Parameter  Array  f32[3,4]        12     48
        .n     Linear  -          Array  i32[]            1      4
        -----  ------  ---------  -----  -----------  -----  -----
        total          Parameter                         12     48
        total          -                                  1      4
        total          all                               13     52
    """
    if depth is not None and (type(depth) is not int or depth < 0):
        raise ValueError(
            f"tree_summary: depth must be an int >= 0 (or None for one line per leaf), "
            f"got {depth!r}."
        )
    try:
        return _summary(tree, depth)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_summary", e)
        raise


def _summary(tree: Any, depth: int | None) -> TreeSummary:
    ctx = Leaves(tree)
    paths = [jax.tree_util.keystr(p) or "<root>" for p in ctx.paths]
    shared: dict[int, str] = {}
    for group in _alias_groups(ctx.leaves):
        for i in group[1:]:
            shared[i] = paths[group[0]]
    rows, totals = [], {}
    for i, (leaf, kind, node) in enumerate(zip(ctx.leaves, ctx.kinds, _leaf_nodes(ctx.treedef))):
        count, nbytes = (0, 0) if i in shared else _count_bytes(leaf)
        k = _kind_name(kind)
        rows.append(
            SummaryRow(
                paths[i],
                node,
                k,
                _type_name(leaf),
                leaf_repr(leaf),
                count,
                nbytes,
                shared.get(i),
            )
        )
        c, b = totals.get(k, (0, 0))
        totals[k] = (c + count, b + nbytes)
    totals["all"] = (sum(r.count for r in rows), sum(r.bytes for r in rows))
    stacks, heads = _stack_rows(tree, ctx.paths, rows)
    groups: tuple[GroupRow, ...] = ()
    if depth is None:
        body = []
        for i, r in enumerate(rows):
            for st in heads.get(i, ()):
                body.append(_stack_cells(st))
            body.append(_cells(r))
    else:
        body, groups = _grouped(tree, ctx.paths, rows, stacks, heads, depth)
    table = [_HEADER, *body]
    foot = [("total", "", k, "", "", f"{c:,}", f"{b:,}") for k, (c, b) in totals.items()]
    widths = [max(len(r[i]) for r in table + foot) for i in range(len(_HEADER))]
    rule = "  ".join("-" * w for w in widths)

    def line(cells: tuple[str, ...]) -> str:
        out = [
            c.ljust(w) if i < _TEXT_COLUMNS else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(out).rstrip()

    text = "\n".join([line(_HEADER), rule, *map(line, table[1:]), rule, *map(line, foot)])
    out = TreeSummary(text)
    out.rows = tuple(rows)  # type: ignore[misc]
    out.totals = totals  # type: ignore[misc]
    out.stacks = stacks  # type: ignore[misc]
    out.groups = groups  # type: ignore[misc]
    out._body = body  # type: ignore[misc]
    return out


def _stack_cells(st: StackRow) -> tuple[str, ...]:
    per = f"{st.count_per_layer:,}/layer"
    return (st.path, "", "", f"{st.type} {TIMES}{st.layers}", per, f"{st.count:,}", f"{st.bytes:,}")


def _grouped(
    tree: Any,
    paths: tuple[tuple[Any, ...], ...],
    rows: list[SummaryRow],
    stacks: tuple[StackRow, ...],
    heads: dict[int, list[StackRow]],
    depth: int,
) -> tuple[list[tuple[str, ...]], tuple[GroupRow, ...]]:
    """The table's lines at `depth`: leaves less deep as they are, deeper ones summed per
    node at `depth`, runs of equal siblings in a list or tuple as one line."""
    stack_at = {st.path: st for st in stacks}
    try:
        site_depth = {_keystr(site.path): len(site.path) for site in find_stacks(tree)}
    except ValueError:  # a malformed stack: _stack_rows found none either
        site_depth = {}
    # entries: (key path of the line, is a group, first row index, [row indices])
    entries: list[tuple[tuple[Any, ...], bool, list[int]]] = []
    index: dict[tuple[Any, ...], int] = {}
    for i, p in enumerate(paths):
        if len(p) <= depth:
            entries.append((p, False, [i]))
            continue
        key = p[:depth]
        if key in index:
            entries[index[key]][2].append(i)
        else:
            index[key] = len(entries)
            entries.append((key, True, [i]))
    lines: list[tuple[Any, ...]] = []  # (path tuple, run length, signature, cells data)
    for path, is_group, members in entries:
        first = members[0]
        if is_group:
            value = tree
            for key in path:
                value = _child(value, key)
            kinds = list(dict.fromkeys(rows[i].kind for i in members))
            rel = len(jax.tree_util.keystr(path))
            shapes = tuple((rows[i].path[rel:], rows[i].shape_dtype) for i in members)
            node = _type_name(value)
            st = stack_at.get(_keystr(path))
            if st is not None:
                node = f"{node} {TIMES}{st.layers}"
            # equal structure: treedef (static fields included), kinds, leaf shapes
            sig = (node, jax.tree_util.tree_structure(value), tuple(kinds), shapes)
            data = (node, ",".join(kinds), len(members))
        else:
            r = rows[first]
            sig = (r.node, r.kind, r.type, r.shape_dtype, r.shared)
            data = None
        count = sum(rows[i].count for i in members)
        nbytes = sum(rows[i].bytes for i in members)
        run = lines[-1] if lines else None
        if (
            run is not None
            and run[2] == sig
            and run[0][:-1] == path[:-1]
            and path
            and isinstance(path[-1], jax.tree_util.SequenceKey)
            and isinstance(run[0][-1], jax.tree_util.SequenceKey)
            and path[-1].idx == run[0][-1].idx + run[1]
            and first not in heads
        ):
            lines[-1] = (run[0], run[1] + 1, sig, run[3], run[4] + count, run[5] + nbytes, run[6])
            continue
        lines.append((path, 1, sig, data, count, nbytes, first))
    body: list[tuple[str, ...]] = []
    groups: list[GroupRow] = []
    for path, n, _, data, count, nbytes, first in lines:
        for st in heads.get(first, ()):
            if site_depth[st.path] < depth:  # a stack at or below `depth` is in a line
                body.append(_stack_cells(st))
        text = _keystr(path)
        if n > 1:
            start = path[-1].idx
            text = f"{_keystr(path[:-1])}[{start}:{start + n}]"
        if data is None:
            r = rows[first]
            if n == 1:
                body.append(_cells(r))
            else:
                body.append(
                    (
                        text,
                        r.node,
                        r.kind,
                        f"{r.type} {TIMES}{n}",
                        r.shape_dtype,
                        f"{count:,}",
                        f"{nbytes:,}",
                    )
                )
            continue
        node, kind, leaves = data
        if n > 1:
            node = f"{node} {TIMES}{n}"
        group = GroupRow(text, node, kind, leaves * n, count, nbytes)
        groups.append(group)
        body.append((text, node, kind, "", f"{group.leaves:,} leaves", f"{count:,}", f"{nbytes:,}"))
    return body, tuple(groups)


def _keystr(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path) or "<root>"


def _stack_rows(
    tree: Any, paths: tuple[tuple[Any, ...], ...], rows: list[SummaryRow]
) -> tuple[tuple[StackRow, ...], dict[int, list[StackRow]]]:
    """The stacked fields of `tree` as table lines, keyed by the index of their first leaf."""
    try:
        sites = find_stacks(tree)
    except ValueError:  # a malformed stack: the leaf rows still show what is there
        return (), {}
    out, heads = [], {}
    for site in sites:
        n = len(site.path)
        inside = [i for i, p in enumerate(paths) if p[:n] == site.path]
        count = sum(rows[i].count for i in inside)
        nbytes = sum(rows[i].bytes for i in inside)
        value = tree
        for key in site.path:  # the stacked value, for its type name
            value = _child(value, key)
        row = StackRow(
            jax.tree_util.keystr(site.path),
            _type_name(value),
            site.length,
            count // site.length if site.length else 0,
            count,
            nbytes,
        )
        out.append(row)
        if inside:
            heads.setdefault(inside[0], []).append(row)
    return tuple(out), heads


def _child(node: Any, key: Any) -> Any:
    for k, c in _children(node) or ():
        if k == key:
            return c
    raise KeyError(key)  # pragma: no cover (find_stacks found it there)


# -- diagram ----------------------------------------------------------------------------------


def tree_diagram(tree: Any, *, max_items: int | None = 8) -> str:
    """A text tree (box-drawing characters) of `tree`'s structure, one line per node.

    Leaves show as `name: f32[3,4] (Parameter)`, with the field's `axes` when it sets
    them; static fields as `name: value (static)`.

    Args:
        tree: any pytree.
        max_items: lists, tuples and dicts longer than this show their first
            `max_items - 2` children, `...`, and the last one; `None` shows all.

    Returns:
        The diagram, a `str` that prints unquoted at the prompt.

    Raises:
        TreeTooDeepError: the tree is nested deeper than pytreeclass walks, or
            holds a reference cycle.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pytreeclass as ptc
        >>> @ptc.treeclass
        ... class Linear:
        ...     w: jnp.ndarray = ptc.field(kind=ptc.Parameter)
        ...     size: int = ptc.field(static=True, default=3)
        >>> print(ptc.tree_diagram({"fc": Linear(jnp.ones((3, 4)))}))
        dict
        └── ['fc']: Linear
            ├── w: f32[3,4] (Parameter)
            └── size: 3 (static)
    """
    try:
        return _diagram(tree, max_items)
    except (RecursionError, SystemError) as e:
        reraise_if_too_deep("tree_diagram", e)
        raise


def _diagram(tree: Any, max_items: int | None) -> str:
    treedef = jax.tree_util.tree_structure(tree)
    kinds = leaf_kinds(tree, treedef)
    axes = leaf_axes(tree, treedef)
    counter = [0]  # index of the next leaf, in tree_leaves order
    lines: list[str] = []

    def leaf_line(x: Any) -> str:
        i = counter[0]
        counter[0] += 1
        kind = kinds[i]
        notes = [] if kind is None else [kind.__name__]
        if axes[i] is not None and has_shape_dtype(x) and not isinstance(x, np.generic):
            notes.append(f"axes={axes[i]!r}".replace("Ellipsis", "..."))
        return leaf_repr(x) + (f" ({', '.join(notes)})" if notes else "")

    stacked: set[int] = set()  # ids of values of fields declared field(stack=...)

    def walk(node: Any, prefix: str, depth: int = 0) -> None:
        # `depth`: how many stacked fields enclose `node` (its leaves' stacked dimensions).
        children = _children(node) or []
        entries: list[tuple[str, Any, bool]] = []  # (label, value, is_static)
        meta = meta_of(type(node))
        if meta is not None:
            it = iter(children)
            for f in meta.fields:
                if f.static:
                    entries.append((f.name, node.__dict__[f.name], True))
                else:
                    entries.append((f.name, next(it)[1], False))
                    if f.stack is not None:
                        stacked.add(id(entries[-1][1]))
        else:
            entries = [(key_label(k), c, False) for k, c in children]
        skipped = 0
        if max_items is not None and meta is None and len(entries) > max(max_items, 2):
            head = max(max_items, 2) - 2
            hidden = entries[head:-1]
            skipped = sum(jax.tree_util.tree_structure(v).num_leaves for _, v, _ in hidden)
            entries = [*entries[:head], ("...", Elided(len(hidden)), True), entries[-1]]
        for j, (label, value, static) in enumerate(entries):
            last = j == len(entries) - 1
            branch, cont = ("└── ", "    ") if last else ("├── ", "│   ")
            if isinstance(value, Elided):
                lines.append(f"{prefix}{branch}{value!r}")
                counter[0] += skipped
            elif static:
                lines.append(f"{prefix}{branch}{label}: {leaf_repr(value)} (static)")
            elif value is None:  # an empty subtree (a hole): no leaf to count
                lines.append(f"{prefix}{branch}{label}: None")
            elif _children(value) is None:
                lines.append(f"{prefix}{branch}{label}: {leaf_line(value)}")
            else:
                inner, count = depth, ""
                if id(value) in stacked:
                    n = stack_size(value, depth)
                    if n is not None:
                        inner, count = depth + 1, f" {TIMES}{n}"
                lines.append(f"{prefix}{branch}{label}: {type(value).__name__}{count}")
                walk(value, prefix + cont, inner)

    if _children(tree) is None:
        lines.append(leaf_line(tree))
    else:
        lines.append(type(tree).__name__)
        walk(tree, "")
    return _Text("\n".join(lines))
