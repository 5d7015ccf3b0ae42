"""Error paths no other test reached, and the error surface issue #11 changed.

Found by running the suite under coverage and listing the `raise` statements it never
executed: each gets its `pytest.raises(..., match=...)` here. Also: the one depth guard
(`value_and_tree` now raises the shared `TreeTooDeepError`), its export, the version
string, and structure mismatches that name static fields of any dataclass pytree.
"""

from __future__ import annotations

import re
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import Mesh

import pytreeclass as ptc
from pytreeclass import _errors

ROOT = Path(__file__).resolve().parents[1]


def test_treeclass_decorates_only_classes() -> None:
    def f() -> None: ...

    with pytest.raises(TypeError, match=r"@treeclass decorates classes, not function objects"):
        ptc.treeclass(f)  # type: ignore[type-var]


def test_axes_names_must_be_str_or_none() -> None:
    with pytest.raises(
        TypeError, match=r"field\(axes=\('embed', 1\)\): every axis name must be a str or None"
    ):
        ptc.field(axes=("embed", 1))  # type: ignore[arg-type]


def test_static_field_cannot_have_axes() -> None:
    with pytest.raises(ValueError, match=r"static=True, axes=.*holds no arrays to shard"):
        ptc.field(static=True, axes=("embed",))


def test_shardings_rule_must_be_a_pair() -> None:
    mesh = Mesh(jax.devices()[:1], ("model",))
    tree = {"w": jnp.ones(2)}
    with pytest.raises(
        TypeError, match=r"rule \('mlp',\) is not a \(logical name, mesh axes\) pair"
    ):
        ptc.tree_shardings(tree, mesh, [("mlp",)])  # type: ignore[list-item]


def test_mask_passed_through_jit_is_refused() -> None:
    tree = {"a": 1.0, "b": 2.0}

    @jax.jit
    def keep(mask: dict[str, bool]) -> dict[str, float]:
        return ptc.tree_filter(tree, mask)

    with pytest.raises(TypeError, match=r"mask filter holds a traced bool.*Close over the mask"):
        keep({"a": True, "b": False})
    # Closing over it works, and selects what it says.
    mask = {"a": True, "b": False}
    assert jax.jit(lambda: ptc.tree_filter(tree, mask))() == {"a": 1.0, "b": None}


def test_value_and_tree_on_a_cycle_raises_the_shared_depth_error() -> None:
    cyclic: list = [1.0]
    cyclic.append(cyclic)
    with pytest.raises(
        ptc.TreeTooDeepError, match=r"value_and_tree: .*reference cycle.*break the cycle"
    ) as info:
        ptc.value_and_tree(lambda t: None)(cyclic)
    assert isinstance(info.value, ValueError)  # what it raised before #11, still caught


def test_tree_too_deep_error_is_exported() -> None:
    assert ptc.TreeTooDeepError is _errors.TreeTooDeepError
    assert "TreeTooDeepError" in ptc.__all__
    assert issubclass(ptc.TreeTooDeepError, ValueError)
    assert issubclass(ptc.TreeTooDeepError, RecursionError)


def test_version_is_the_one_in_pyproject() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text)
    assert found is not None
    assert ptc.__version__ == found.group(1)


class _Static(eqx.Module):
    w: jax.Array
    n: int = eqx.field(static=True)


def test_merge_mismatch_names_static_fields_of_any_dataclass_pytree() -> None:
    a, b = _Static(jnp.ones(2), 1), _Static(jnp.ones(2), 2)
    with pytest.raises(ValueError, match=r"_Static nodes whose static parts differ \(n: 1 vs 2\)"):
        ptc.tree_merge(a, b)


@ptc.treeclass
class _Tc:
    w: jax.Array
    n: int = ptc.field(static=True, default=1)


def test_merge_mismatch_names_static_fields_of_a_treeclass() -> None:
    with pytest.raises(ValueError, match=r"_Tc nodes whose static parts differ \(n: 1 vs 2\)"):
        ptc.tree_merge(_Tc(jnp.ones(2)), _Tc(jnp.ones(2), n=2))


def test_a_filter_subclass_without_mask_says_so() -> None:
    class NoMask(ptc.Filter):
        pass

    with pytest.raises(NotImplementedError, match=r"NoMask subclasses ptc.Filter but does not"):
        ptc.tree_mask({"a": 1}, NoMask())
