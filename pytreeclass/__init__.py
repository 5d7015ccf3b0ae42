"""pytreeclass: immutable dataclasses that are JAX pytrees, with kinds, filters and lenses."""

from ._capture import capture as capture
from ._cast import tree_cast as tree_cast
from ._class._field import Field as Field
from ._class._field import field as field
from ._class._kinds import BatchStat as BatchStat
from ._class._kinds import Cache as Cache
from ._class._kinds import Kind as Kind
from ._class._kinds import OptState as OptState
from ._class._kinds import Parameter as Parameter
from ._class._kinds import Rng as Rng
from ._class._kinds import State as State
from ._class._meta import fields as fields
from ._class._meta import is_treeclass as is_treeclass
from ._class._treeclass import TreeClass as TreeClass
from ._class._treeclass import treeclass as treeclass
from ._equal import tree_equal as tree_equal
from ._errors import FrozenInstanceError as FrozenInstanceError
from ._errors import PartialLoadWarning as PartialLoadWarning
from ._errors import TreeTooDeepError as TreeTooDeepError
from ._filters import All as All
from ._filters import Any as Any
from ._filters import Filter as Filter
from ._filters import Not as Not
from ._filters import OfKind as OfKind
from ._filters import OfType as OfType
from ._filters import PathContains as PathContains
from ._filters import PathMatch as PathMatch
from ._filters import Predicate as Predicate
from ._io._io import tree_load as tree_load
from ._io._io import tree_save as tree_save
from ._io._io_read import TensorInfo as TensorInfo
from ._io._io_read import TreeInfo as TreeInfo
from ._io._io_read import tree_info as tree_info
from ._io._io_read import tree_read as tree_read
from ._io._weights import tree_from_dict as tree_from_dict
from ._io._weights import tree_to_dict as tree_to_dict
from ._labels import tree_labels as tree_labels
from ._leaf_facts import tree_kinds as tree_kinds
from ._lens._lens import Lens as Lens
from ._lens._lens import at as at
from ._optim import Optimizer as Optimizer
from ._partition import tree_filter as tree_filter
from ._partition import tree_mask as tree_mask
from ._partition import tree_merge as tree_merge
from ._partition import tree_partition as tree_partition
from ._rng import split_key as split_key
from ._rng import tree_reseed as tree_reseed
from ._shard import tree_shardings as tree_shardings
from ._stack import scan_layers as scan_layers
from ._stack import tree_stack as tree_stack
from ._stack import tree_unstack as tree_unstack
from ._summary import tree_aliases as tree_aliases
from ._summary import tree_diagram as tree_diagram
from ._summary import tree_summary as tree_summary
from ._value_and_tree import value_and_tree as value_and_tree


def _version() -> str:
    """The installed distribution's version; in a source checkout that is not installed
    (tests run with PYTHONPATH), the one pyproject.toml next to the package declares."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytreeclass")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            found = re.search(r'(?m)^version\s*=\s*"([^"]+)"', pyproject.read_text())
        except OSError:
            found = None
        return found.group(1) if found else "0+unknown"


__version__ = _version()

__all__ = [
    "All",
    "Any",
    "BatchStat",
    "Cache",
    "Field",
    "Filter",
    "FrozenInstanceError",
    "Kind",
    "Lens",
    "Not",
    "OfKind",
    "OfType",
    "Optimizer",
    "OptState",
    "Parameter",
    "PartialLoadWarning",
    "PathContains",
    "PathMatch",
    "Predicate",
    "Rng",
    "State",
    "TensorInfo",
    "TreeClass",
    "TreeInfo",
    "TreeTooDeepError",
    "at",
    "capture",
    "field",
    "fields",
    "is_treeclass",
    "scan_layers",
    "split_key",
    "tree_aliases",
    "tree_cast",
    "tree_diagram",
    "tree_equal",
    "tree_filter",
    "tree_from_dict",
    "tree_info",
    "tree_kinds",
    "tree_labels",
    "tree_load",
    "tree_mask",
    "tree_merge",
    "tree_partition",
    "tree_read",
    "tree_reseed",
    "tree_save",
    "tree_shardings",
    "tree_stack",
    "tree_summary",
    "tree_to_dict",
    "tree_unstack",
    "treeclass",
    "value_and_tree",
]
