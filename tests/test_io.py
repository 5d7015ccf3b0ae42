"""tree_save / tree_load: round trips (ml_dtypes, keys, Python numbers), checks, atomicity, orbax."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc
from pytreeclass import BatchStat, Parameter, field, treeclass
from pytreeclass._io import _io_file, _io_npz

from .models import Linear

HERE = Path(__file__).resolve().parent


@treeclass
class MLP:
    layers: list
    mean: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros(()))
    lr: float = 0.1


def make_mlp(seed: int = 0) -> MLP:
    k1, k2 = jax.random.split(jax.random.key(seed))
    return MLP(
        [
            Linear(jax.random.normal(k1, (3, 4)), jnp.zeros(4)),
            Linear(jax.random.normal(k2, (4, 2)), jnp.ones(2), features=2),
        ]
    )


def _bits(x: object) -> object:
    """Leaves compared bit for bit (NaNs, float8, keys included)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(x.dtype), np.asarray(jax.random.key_data(x)).tobytes())
    if hasattr(x, "dtype"):
        a = np.asarray(x)
        return (type(x).__name__, a.dtype.name, a.shape, a.tobytes())
    return (type(x).__name__, x)


def assert_same(a: object, b: object) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.leaves(jax.tree.map(_bits, a)) == jax.tree.leaves(jax.tree.map(_bits, b))


# -- round trips --------------------------------------------------------------------------------


def test_round_trip_treeclass_model(tmp_path: Path) -> None:
    model = make_mlp()
    path = tmp_path / "model.npz"
    ptc.tree_save(path, model)
    loaded = ptc.tree_load(path, like=make_mlp(seed=1))
    assert loaded == model
    assert isinstance(loaded.layers[0].w, jax.Array)
    assert type(loaded.lr) is float and loaded.lr == 0.1
    assert loaded.layers[1].features == 2  # static fields come from the template


def test_round_trip_every_special_dtype(tmp_path: Path) -> None:
    tree = {
        "bf16": jnp.array([1.5, -2.0, jnp.nan, jnp.inf], jnp.bfloat16),
        "f8e4m3fn": jnp.array([0.5, -448.0], ml_dtypes.float8_e4m3fn),
        "f8e5m2": jnp.array([0.5, 3.0], ml_dtypes.float8_e5m2),
        "f16": jnp.array([1.0, 2.0], jnp.float16),
        "i4": jnp.array([-8, 7], jnp.int4),
        "u4": jnp.array([0, 15], jnp.uint4),
        "bool": jnp.array([True, False]),
        "c64": jnp.array([1 + 2j], jnp.complex64),
        "key": jax.random.key(3),
        "keys": jax.random.split(jax.random.key(4), 3),
        "np": np.arange(6, dtype=np.int64).reshape(2, 3),
        "np_scalar": np.float32(2.5),
        "py": (True, 3, 1.25, 1 + 1j),
        "empty": jnp.zeros((0, 3)),
    }
    path = tmp_path / "dtypes.npz"
    ptc.tree_save(path, tree)
    loaded = ptc.tree_load(path, like=tree)
    assert_same(loaded, tree)
    assert isinstance(loaded["np"], np.ndarray) and isinstance(loaded["np_scalar"], np.float32)
    assert [type(v) for v in loaded["py"]] == [bool, int, float, complex]


_DTYPES = ["float32", "bfloat16", "float16", "int8", "uint8", "int32", "bool", "float8_e4m3fn"]


@settings(max_examples=15, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from(_DTYPES), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, shapes, dtypes, seed
) -> None:
    rng = np.random.default_rng(seed)
    tree = {
        f"x{i}": jnp.asarray(rng.normal(size=tuple(s)) * 10).astype(jnp.dtype(dtypes[i % 4]))
        for i, s in enumerate(shapes)
    }
    path = tmp_path_factory.mktemp("prop") / "t.npz"
    ptc.tree_save(path, tree)
    assert_same(ptc.tree_load(path, like=tree), tree)


def test_npz_file_is_a_plain_npz_with_one_buffer_per_dtype(tmp_path: Path) -> None:
    model = make_mlp()
    path = tmp_path / "model.npz"
    ptc.tree_save(path, model)
    with np.load(path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["__manifest__.json", "float32", "float64"]
        f32 = npz["float32"]
        # The float32 leaves back to back, in tree order.
        expected = [model.layers[0].w, model.layers[0].b, model.layers[1].w]
        expected += [model.layers[1].b, model.mean]
        np.testing.assert_array_equal(f32, np.concatenate([np.ravel(x) for x in expected]))
        np.testing.assert_array_equal(npz["float64"], [0.1])
    with zipfile.ZipFile(path) as zf:
        manifest = json.loads(zf.read("__manifest__.json"))
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert manifest["format"] == "pytreeclass.tree" and manifest["version"] == 2
    assert manifest["buffers"] == ["float32", "float64"]
    assert manifest["leaves"][0] == [".layers[0].w", "float32", [3, 4], 0]
    assert manifest["leaves"][-1] == [".lr", "float64", [], 1, {"python": "float"}]


def _write_v1(path: Path, tree: object) -> None:
    """A file as pytreeclass wrote it before the buffers (format version 1)."""
    entries = []
    with zipfile.ZipFile(path, "w") as zf:
        for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            p = jax.tree_util.keystr(key_path)
            entry: dict = {"path": p}
            if type(leaf) in (bool, int, float, complex):
                arr = np.asarray(leaf)
                entry.update(shape=[], dtype=arr.dtype.name, python=type(leaf).__name__)
            elif jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                arr = np.asarray(jax.random.key_data(leaf))
                entry.update(shape=list(leaf.shape), dtype=str(leaf.dtype))
                entry.update(key_impl=str(jax.random.key_impl(leaf)))
                entry.update(stored_shape=list(arr.shape), stored_dtype=arr.dtype.name)
            else:
                arr = np.asarray(leaf)
                entry.update(shape=list(arr.shape), dtype=arr.dtype.name)
                if arr.dtype.type.__module__ != "numpy":
                    arr = arr.view(f"u{arr.dtype.itemsize}")
                    entry["stored_dtype"] = arr.dtype.name
            entries.append(entry)
            buf = io.BytesIO()
            np.save(buf, arr)
            zf.writestr(p + ".npy", buf.getvalue())
        header = {"format": "pytreeclass.tree", "version": 1, "leaves": entries}
        zf.writestr("__manifest__.json", json.dumps(header))


def test_files_of_format_version_1_still_load(tmp_path: Path) -> None:
    tree = {
        "model": make_mlp(),
        "bf16": jnp.array([1.5, -2.0], jnp.bfloat16),
        "key": jax.random.key(7),
        "n": 3,
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    path = tmp_path / "old.npz"
    _write_v1(path, tree)
    assert_same(ptc.tree_load(path, like=tree), tree)
    # The checks hold for old files too (a saved Python number into a vector).
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \['n'\]: the file has a Python int, the template int32\[2\]",
    ):
        ptc.tree_load(path, like={**tree, "n": jnp.zeros(2, jnp.int32)})


def test_templates_decide_the_leaf_types(tmp_path: Path) -> None:
    model = make_mlp()
    path = tmp_path / "model.npz"
    ptc.tree_save(path, model)
    # Abstract template (what jax.eval_shape gives): lr is f32[] there, 0.1 in the file.
    abstract = jax.eval_shape(make_mlp)
    loaded = ptc.tree_load(path, like=abstract)
    assert isinstance(loaded.layers[0].w, jax.Array) and loaded.lr.dtype == jnp.float32
    np.testing.assert_allclose(loaded.lr, 0.1)
    # NumPy template leaves give NumPy arrays.
    as_numpy = jax.tree.map(np.asarray, model)
    assert isinstance(ptc.tree_load(path, like=as_numpy).mean, np.ndarray)
    # A Python number in the template accepts a 0-d array of the same kind.
    ptc.tree_save(path, {"n": jnp.array(3, jnp.int32)})
    assert ptc.tree_load(path, like={"n": 0}) == {"n": 3}


def test_load_puts_arrays_on_the_template_sharding(tmp_path: Path) -> None:
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)
    like = {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32, sharding=sharding)}
    path = tmp_path / "w.npz"
    ptc.tree_save(path, {"w": jnp.eye(2)})
    out = ptc.tree_load(path, like=like)
    assert out["w"].sharding == sharding


def test_partitioned_trees_with_holes(tmp_path: Path) -> None:
    model = make_mlp()
    params, rest = ptc.tree_partition(model, Parameter)
    path = tmp_path / "params.npz"
    ptc.tree_save(path, params)
    loaded = ptc.tree_load(path, like=params)
    assert ptc.tree_merge(loaded, rest) == model
    assert loaded.mean is None


def test_saved_model_is_usable_under_jit_grad_and_vmap(tmp_path: Path) -> None:
    model = make_mlp()
    path = tmp_path / "m.npz"
    ptc.tree_save(path, model)
    loaded = ptc.tree_load(path, like=model)

    def loss(m: MLP, x: jax.Array) -> jax.Array:
        for layer in m.layers:
            x = x @ layer.w + layer.b
        return jnp.sum(x**2)

    x = jnp.ones((5, 3))
    g1 = jax.jit(jax.grad(loss))(model, x)
    g2 = jax.jit(jax.grad(loss))(loaded, x)
    assert ptc.tree_equal(g1, g2)
    v = jax.vmap(loss, in_axes=(None, 0))(loaded, x[:, None, :])
    assert v.shape == (5,)


# -- mismatches ---------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.npz"
    ptc.tree_save(path, make_mlp())
    return path


def test_shape_mismatch_names_the_path(saved: Path) -> None:
    like = make_mlp().at.layers[1].w.set(jnp.zeros((4, 3)))
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \.layers\[1\]\.w: the file has float32\[4,2\], the template float32\[4,3\]",
    ):
        ptc.tree_load(saved, like=like)


def test_dtype_mismatch_names_the_first_path(saved: Path) -> None:
    like = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if hasattr(x, "dtype") else x, make_mlp())
    with pytest.raises(
        ValueError,
        match=r"dtype mismatch at \.layers\[0\]\.w: the file has float32\[3,4\], the template bfloat16\[3,4\]",
    ):
        ptc.tree_load(saved, like=like)


def test_other_model_version_lists_missing_and_unexpected_paths(saved: Path) -> None:
    @treeclass
    class MLP2:
        layers: list
        mean: jax.Array = field(kind=BatchStat, default_factory=lambda: jnp.zeros(()))
        scale: jax.Array = field(default_factory=lambda: jnp.ones(()))

    like = MLP2(make_mlp().layers[:1])
    with pytest.raises(ValueError) as info:
        ptc.tree_load(saved, like=like)
    msg = str(info.value)
    assert "missing from the file: .scale" in msg
    assert "in the file but not the template: .layers[1].w, .layers[1].b, .lr" in msg
    assert "different version of the model" in msg


def test_python_number_type_mismatches(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"type mismatch at \.lr: the file has a Python float, the template a Python int",
    ):
        ptc.tree_load(saved, like=make_mlp().at.lr.set(1))
    with pytest.raises(
        ValueError,
        match=r"type mismatch at \.lr: the file has a Python float, the template int32\[\]",
    ):
        ptc.tree_load(saved, like=make_mlp().at.lr.set(jnp.int32(1)))
    path = tmp_path / "v.npz"
    ptc.tree_save(path, {"v": jnp.ones(2)})
    with pytest.raises(
        ValueError,
        match=r"type mismatch at \['v'\]: the file has float32\[2\], the template a Python float",
    ):
        ptc.tree_load(path, like={"v": 1.0})


def test_template_with_non_array_leaf_is_an_error(saved: Path) -> None:
    with pytest.raises(TypeError, match="the template holds a str leaf"):
        ptc.tree_load(saved, like=make_mlp().at.lr.set("fast"))


# -- what cannot be saved ------------------------------------------------------------------------


def test_saving_a_non_array_leaf_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(
        TypeError, match=r"the leaf at \['name'\] is a str; only arrays and Python numbers"
    ):
        ptc.tree_save(tmp_path / "x.npz", {"name": "mlp", "w": jnp.ones(2)})
    with pytest.raises(TypeError, match=r"the leaf at \['o'\] is an object array"):
        ptc.tree_save(tmp_path / "x.npz", {"o": np.array([object()])})
    assert not list(tmp_path.iterdir())  # nothing written


def test_saving_inside_jit_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"the leaf at <root> is abstract .*outside jax.jit"):
        jax.jit(lambda x: ptc.tree_save(tmp_path / "x.npz", x))(jnp.ones(2))


def test_duplicate_key_paths_are_an_error(tmp_path: Path) -> None:
    class Twice:
        def __init__(self, a: object, b: object) -> None:
            self.a, self.b = a, b

    jax.tree_util.register_pytree_with_keys(
        Twice,
        lambda t: (
            ((jax.tree_util.GetAttrKey("x"), t.a), (jax.tree_util.GetAttrKey("x"), t.b)),
            None,
        ),
        lambda _, c: Twice(*c),
    )
    with pytest.raises(ValueError, match=r"two leaves have the key path \.x"):
        ptc.tree_save(tmp_path / "x.npz", Twice(jnp.ones(1), jnp.ones(1)))


# -- corrupt files and pickles -------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file_is_a_clear_error(saved: Path, fraction: float) -> None:
    size = saved.stat().st_size
    with open(saved, "r+b") as f:
        f.truncate(int(size * fraction))
    with pytest.raises(ValueError, match=r"tree_load: cannot read .*truncated, corrupt"):
        ptc.tree_load(saved, like=make_mlp())


def damage(path: Path, data: st.DataObject) -> None:
    """Truncate the file at `path` or flip 1-3 of its bytes, as hypothesis draws it."""
    raw = bytearray(path.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            raw[data.draw(st.integers(0, len(raw) - 1), label="at")] = data.draw(
                st.integers(0, 255)
            )
    path.write_bytes(bytes(raw))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_damaged_files_fail_with_value_error_or_load_intact(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Truncations and byte flips anywhere: a clear ValueError, or (a flip in a field that
    does not matter, like a timestamp) exactly the saved values; never another exception."""
    tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4, jnp.bfloat16), "n": 1.5}
    path = tmp_path_factory.mktemp("fuzz") / "t.npz"
    ptc.tree_save(path, tree)
    damage(path, data)
    try:
        loaded = ptc.tree_load(path, like=tree)
    except ValueError as e:
        assert str(e).startswith("tree_load:")
    else:
        assert_same(loaded, tree)


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "crc-thread"])
def test_flipped_data_byte_is_caught_by_the_checksum(
    saved: Path, threaded: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large files check the CRC on a second thread; small ones inline. Both must catch it.
    import pytreeclass._io._io_file as io_file

    monkeypatch.setattr(io_file, "CHUNK", 16 if threaded else io_file.CHUNK)
    monkeypatch.setattr(io_file, "_CRC_THREAD", 0 if threaded else io_file._CRC_THREAD)
    assert ptc.tree_load(saved, like=make_mlp()) == make_mlp()  # many chunks, intact
    data = bytearray(saved.read_bytes())
    w = np.asarray(make_mlp().layers[0].w).tobytes()
    at = bytes(data).index(w)
    data[at + 5] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"the data in float32\.npy is damaged \(bad CRC-32\)"):
        ptc.tree_load(saved, like=make_mlp())


def _rewrite(path: Path, replace: dict[str, bytes | None]) -> None:
    """Rewrite the zip at `path` with some entries replaced (or dropped when None)."""
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    for name, data in replace.items():
        if data is None:
            entries.pop(name)
        else:
            entries[name] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def _manifest(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("__manifest__.json"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"__manifest__.json": None}, "it has no __manifest__.json"),
        ({"__manifest__.json": b"{not json"}, "its manifest is not valid JSON"),
        ({"__manifest__.json": b'{"format": "other"}'}, "not a pytreeclass manifest"),
        (
            {"__manifest__.json": b'{"format": "pytreeclass.tree", "version": 1}'},
            "no valid leaf list",
        ),
        (
            {
                "__manifest__.json": b'{"format": "pytreeclass.tree", "version": 1, "leaves": [{"path": ".w", "dtype": "float32", "shape": 3}]}'
            },
            "no valid leaf list",
        ),
        ({"float32.npy": None}, r"the data for float32\.npy is missing"),
        ({"float32.npy": b"garbage"}, r"the data for float32\.npy is damaged"),
        (
            {"__manifest__.json": b'{"format": "pytreeclass.tree", "version": 2, "leaves": []}'},
            "no valid buffer list",
        ),
    ],
    ids=[
        "no-manifest",
        "bad-json",
        "foreign-manifest",
        "no-leaves",
        "bad-shape",
        "missing-entry",
        "garbage-entry",
        "no-buffers",
    ],
)
def test_corrupt_archives_are_clear_errors(saved: Path, change: dict, message: str) -> None:
    _rewrite(saved, change)
    with pytest.raises(ValueError, match=message):
        ptc.tree_load(saved, like=make_mlp())


def test_entry_disagreeing_with_its_manifest_is_corrupt(saved: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.zeros(4, np.int32))
    _rewrite(saved, {"float32.npy": buf.getvalue()})
    with pytest.raises(ValueError, match=r"float32\.npy holds int32\[4\]"):
        ptc.tree_load(saved, like=make_mlp())


def test_newer_format_version_says_to_upgrade(saved: Path) -> None:
    manifest = _manifest(saved)
    manifest["version"] = 99
    _rewrite(saved, {"__manifest__.json": json.dumps(manifest).encode()})
    with pytest.raises(ValueError, match=r"has format version 99; .* Upgrade pytreeclass"):
        ptc.tree_load(saved, like=make_mlp())


def test_not_a_zip_and_plain_npz_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a complete zip archive"):
        ptc.tree_load(junk, like={"w": jnp.ones(2)})
    plain = tmp_path / "plain.npz"
    np.savez(plain, w=np.ones(2))
    with pytest.raises(ValueError, match=r"it has no __manifest__\.json"):
        ptc.tree_load(plain, like={"w": jnp.ones(2)})
    with pytest.raises(FileNotFoundError):
        ptc.tree_load(tmp_path / "nope.npz", like={"w": jnp.ones(2)})


class _Boom:
    """Unpickling this object would create the marker file."""

    marker = ""

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def test_pickled_object_arrays_are_refused_never_unpickled(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "UNPICKLED"
    boom = _Boom()
    boom.marker = str(marker)
    evil = np.array([boom, 1], dtype=object)
    buf = io.BytesIO()
    np.save(buf, evil, allow_pickle=True)
    _rewrite(saved, {"float32.npy": buf.getvalue()})
    # (sanity: numpy itself would run the payload if asked to unpickle)
    with zipfile.ZipFile(saved) as zf, zf.open("float32.npy") as f, pytest.raises(ValueError):
        np.load(f, allow_pickle=False)
    with pytest.raises(
        ValueError,
        match=r"the entry for float32\.npy .* holds Python objects \(a pickle\); tree_load never unpickles",
    ):
        ptc.tree_load(saved, like=make_mlp())
    assert not marker.exists()


def test_manifest_claiming_object_dtype_is_refused(saved: Path) -> None:
    manifest = _manifest(saved)
    manifest["leaves"][4][1] = "object"
    _rewrite(saved, {"__manifest__.json": json.dumps(manifest).encode()})
    with pytest.raises(ValueError, match=r"the manifest entry for \.mean is inconsistent"):
        ptc.tree_load(saved, like=make_mlp())


# -- atomic writes ------------------------------------------------------------------------------


@contextmanager
def crash_writer(path: Path, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Run tests/io_crash_writer.py (`mode`: stall or big) saving to `path`; always reap it."""
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "io_crash_writer.py"), str(path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_sigkill_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.npz"
    old = {f"layer{i}": np.full((256, 256), float(i), np.float32) for i in range(8)}
    ptc.tree_save(path, old)
    before = path.read_bytes()
    with crash_writer(path, "stall") as proc:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip(), proc.stdout.readline().strip()]
        assert lines == ["START", "MIDWRITE"], proc.stderr.read() if proc.stderr else ""
        temps = list(tmp_path.glob(".ckpt.npz.*.tmp"))
        assert len(temps) == 1 and temps[0].stat().st_size > 256 * 256 * 4  # half written
        os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert_same(ptc.tree_load(path, like=old), old)
    # The orphaned temporary file is not a valid checkpoint; the next save still works.
    with pytest.raises(ValueError, match="cannot read"):
        ptc.tree_load(temps[0], like=old)
    ptc.tree_save(path, {k: v + 1 for k, v in old.items()})
    assert float(ptc.tree_load(path, like=old)["layer3"][0, 0]) == 4.0


def test_sigkill_of_a_big_write_leaves_a_whole_file(tmp_path: Path) -> None:
    """Kill a real, unpatched 256 MiB write as soon as its temporary file appears.

    Wherever the write had got to, the target must be either the old file or the complete
    new one (if the write won the race), never a mix, and it must load.
    """
    path = tmp_path / "big.npz"
    old = {f"layer{i}": np.zeros((1024, 1024), np.float32) for i in range(64)}
    new = {k: np.full_like(v, 7.0) for k, v in old.items()}  # what io_crash_writer saves
    ptc.tree_save(path, old)
    with crash_writer(path, "big") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "START"
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".big.npz.*.tmp")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the writer never created its temporary file"
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        else:  # the writer finished (or failed) before its temporary file was seen
            err = proc.stderr.read() if proc.stderr else ""
            assert proc.returncode == 0, f"the writer failed: {err[-2000:]}"
    # Whole-file integrity: every array equals the old tree's, or every one the new's.
    loaded = ptc.tree_load(path, like=old)
    assert loaded.keys() == old.keys()
    same_as_old = all(np.array_equal(loaded[k], old[k]) for k in old)
    same_as_new = all(np.array_equal(loaded[k], new[k]) for k in new)
    assert same_as_old or same_as_new, "the target is neither the old file nor the new one"
    if proc.returncode == 0:  # the write won the race: it must be the new file
        assert same_as_new


def test_error_mid_write_keeps_old_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.npz"
    ptc.tree_save(path, {"w": np.ones(3)})
    before = path.read_bytes()
    real = _io_file.write_joined

    def failing(out: object, arrays: list) -> None:
        real(out, arrays[:1])
        raise OSError("disk full")

    monkeypatch.setattr(_io_npz, "write_joined", failing)
    with pytest.raises(OSError, match="disk full"):
        ptc.tree_save(path, {"w": np.zeros(3), "v": np.zeros(3)})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]


def test_saved_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")  # what open() makes under the current umask
    ptc.tree_save(tmp_path / "ckpt", {"w": np.ones(1)})
    assert (tmp_path / "ckpt").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_save_accepts_str_paths_and_overwrites(tmp_path: Path) -> None:
    path = str(tmp_path / "plain-name")  # no extension added
    ptc.tree_save(path, [jnp.ones(2)])
    ptc.tree_save(path, [jnp.zeros(2)])
    assert os.listdir(tmp_path) == ["plain-name"]
    np.testing.assert_array_equal(ptc.tree_load(path, like=[jnp.ones(2)])[0], [0.0, 0.0])


# -- orbax ----------------------------------------------------------------------------------------


def test_orbax_standard_checkpointer_round_trip(tmp_path: Path) -> None:
    ocp = pytest.importorskip("orbax.checkpoint")
    model = make_mlp()
    model = model.at.lr.set(jnp.asarray(0.1))  # orbax stores arrays
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(tmp_path / "ckpt", model)
        ckptr.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, model)
        restored = ckptr.restore(tmp_path / "ckpt", abstract)
    finally:
        ckptr.close()
    assert type(restored) is MLP
    assert restored == model
    assert restored.layers[1].features == 2


# -- issue 17: Python numbers' shapes, 64-bit ints, fsync, sharded templates ---------------------


def test_a_saved_python_number_is_refused_for_a_template_array_with_a_shape(
    tmp_path: Path,
) -> None:
    path = tmp_path / "n.npz"
    ptc.tree_save(path, {"w": 0.5})
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \['w'\]: the file has a Python float, the template float32\[3,4\]",
    ):
        ptc.tree_load(path, like={"w": jnp.zeros((3, 4))})
    with pytest.raises(ValueError, match=r"shape mismatch .* float32\[1\]"):
        ptc.tree_load(path, like={"w": jax.ShapeDtypeStruct((1,), jnp.float32)})
    # a 0-d template still takes it, as a Python number or an array
    assert ptc.tree_load(path, like={"w": 0.0}) == {"w": 0.5}
    out = ptc.tree_load(path, like={"w": jnp.zeros(())})
    assert out["w"].shape == () and float(out["w"]) == 0.5


@pytest.mark.parametrize(
    "value", [2**63 - 1, 2**63, 2**64 - 1, -(2**63), -1, 0], ids=lambda v: f"{v:#x}"
)
def test_python_ints_that_fit_64_bits_round_trip_exactly(tmp_path: Path, value: int) -> None:
    path = tmp_path / "i.npz"
    ptc.tree_save(path, {"n": value, "m": [value]})
    out = ptc.tree_load(path, like={"n": 0, "m": [0]})
    assert out == {"n": value, "m": [value]} and type(out["n"]) is int


@pytest.mark.parametrize("value", [2**64, 2**70, -(2**63) - 1, -(2**64)], ids=lambda v: f"{v:#x}")
def test_python_ints_beyond_64_bits_are_refused_at_save_naming_the_path(
    tmp_path: Path, value: int
) -> None:
    path = tmp_path / "i.npz"
    with pytest.raises(
        OverflowError, match=r"the Python int at \['cfg'\]\[1\] .* does not fit in 64 bits"
    ):
        ptc.tree_save(path, {"cfg": [1, value]})
    assert not path.exists() and list(tmp_path.iterdir()) == []  # nothing half written


def test_a_saved_python_int_must_fit_the_template_arrays_dtype(tmp_path: Path) -> None:
    path = tmp_path / "i.npz"
    ptc.tree_save(path, {"n": 2**40, "k": 7})
    with pytest.raises(ValueError, match=r"value mismatch at \['n'\]: .*does not fit int32"):
        ptc.tree_load(path, like={"n": jnp.zeros((), jnp.int32), "k": 0})
    out = ptc.tree_load(path, like={"n": np.zeros((), np.int64), "k": jnp.zeros((), jnp.int8)})
    assert int(out["n"]) == 2**40 and int(out["k"]) == 7


def test_tree_save_fsyncs_the_temporary_file_before_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the fsync a crash after the rename can leave an empty or partial target."""
    events: list[tuple[str, object]] = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def recording_open(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        events.append(("open", (str(path), fd)))
        return fd

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", fd))
        real_fsync(fd)

    def recording_replace(src: object, dst: object) -> None:
        events.append(("replace", (str(src), str(dst))))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    target = tmp_path / "ckpt.npz"
    ptc.tree_save(target, {"w": np.ones(3)})
    replaces = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
    assert len(replaces) == 1
    tmp_name = events[replaces[0]][1][0]  # type: ignore[index]
    temp_fds = [fd for kind, (p, fd) in (e for e in events if e[0] == "open") if p == tmp_name]  # type: ignore[misc]
    assert len(temp_fds) == 1
    synced_before = {fd for kind, fd in events[: replaces[0]] if kind == "fsync"}
    assert temp_fds[0] in synced_before, events
    assert_same(ptc.tree_load(target, like={"w": np.ones(3)}), {"w": np.ones(3)})


def test_tree_save_fsyncs_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename itself is durable only once the directory is fsynced: without it a crash
    right after `tree_save` returns can bring back the old file (or none)."""
    events: list[tuple[str, object]] = []
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def recording_open(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        events.append(("open", (os.path.abspath(str(path)), fd)))
        return fd

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", fd))
        real_fsync(fd)

    def recording_replace(src: object, dst: object) -> None:
        events.append(("replace", (str(src), str(dst))))
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    for name in ("ckpt.npz", "ckpt.safetensors"):
        events.clear()
        target = tmp_path / name
        ptc.tree_save(target, {"w": np.ones(3)})
        replaces = [i for i, (kind, _) in enumerate(events) if kind == "replace"]
        assert len(replaces) == 1
        after = events[replaces[0] + 1 :]
        dir_fds = [
            fd for kind, (p, fd) in (e for e in after if e[0] == "open") if p == str(tmp_path)
        ]  # type: ignore[misc]
        assert len(dir_fds) == 1, events
        assert ("fsync", dir_fds[0]) in after, events
        assert_same(ptc.tree_load(target, like={"w": np.ones(3)}), {"w": np.ones(3)})


_SHARDED_LOAD = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import pytreeclass as ptc
assert jax.device_count() == 8, jax.devices()
mesh = jax.make_mesh((4, 2), ("data", "model"))
path = sys.argv[1]
tree = {"w": np.arange(64.0, dtype=np.float32).reshape(8, 8), "b": np.arange(8.0, dtype=np.float32)}
ptc.tree_save(path, tree)
sw = NamedSharding(mesh, P("data", "model"))
sb = NamedSharding(mesh, P("model"))
like = {"w": jax.device_put(jnp.zeros((8, 8)), sw), "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=sb)}
out = ptc.tree_load(path, like=like)
for k, s in (("w", sw), ("b", sb)):
    assert out[k].sharding == s, (k, out[k].sharding)
    assert len(out[k].sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(out[k]), tree[k])
print("OK")
"""


def test_tree_load_puts_leaves_on_the_template_leafs_sharding(tmp_path: Path) -> None:
    """8 simulated CPU devices (XLA reads the flag when JAX starts: a subprocess)."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, "-c", _SHARDED_LOAD, str(tmp_path / "sharded.npz")],
        capture_output=True,
        text=True,
        env=env,
        cwd=HERE.parent,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr[-3000:]


_REWRITTEN_IN_PLACE = """
import os, struct, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import pytreeclass as ptc
mesh = jax.make_mesh((8,), ("x",))
w = np.arange(512 * 256, dtype=np.float32).reshape(512, 256)
likes = {
    "sharded": {"w": jax.ShapeDtypeStruct(w.shape, jnp.float32, sharding=NamedSharding(mesh, P("x")))},
    "one device": {"w": jax.ShapeDtypeStruct(w.shape, jnp.float32)},
}
starts = set()
for pad in range(8):  # the data section starts at every multiple of 8 modulo 64
    path = os.path.join(sys.argv[1], f"m{pad}.safetensors")
    ptc.tree_save(path, {"w": w}, metadata={"pad": "x" * (8 * pad)})
    with open(path, "rb") as f:
        start = 8 + struct.unpack("<Q", f.read(8))[0]
    starts.add(start % 64)
    for name, like in likes.items():
        out = ptc.tree_load(path, like=like)
        jax.block_until_ready(out)
        with open(path, "r+b") as f:  # another tool rewrites the file in place
            f.seek(start)
            f.write(np.full(w.size, -1.0, np.float32).tobytes())
        assert np.array_equal(np.asarray(out["w"]), w), (name, start % 64)
        with open(path, "r+b") as f:
            f.seek(start)
            f.write(w.tobytes())
assert 0 in starts, starts
print("OK")
"""


def test_a_loaded_leaf_never_shares_the_files_pages(tmp_path: Path) -> None:
    # A leaf spread over several devices is copied from a view of the file's pages;
    # jax.device_put(..., may_alias=False) aliases 64-byte aligned NumPy memory anyway
    # (jax-ml/jax#37830), so a file whose data happened to be aligned gave arrays that
    # changed when the file was rewritten in place.
    result = subprocess.run(
        [sys.executable, "-c", _REWRITTEN_IN_PLACE, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "OK", result.stderr[-3000:]


@pytest.mark.parametrize("n", [4, 64 * 1024])
def test_tree_from_dict_never_shares_a_users_array(n: int) -> None:
    # The same JAX behaviour: an aligned NumPy array given to tree_from_dict was aliased,
    # so changing it afterwards changed the loaded model.
    from pytreeclass._io._io_file import aligned_empty

    for user in (aligned_empty(4 * n).view(np.float32), np.zeros(n, np.float32)):
        user[:] = 0.0
        like = {"w": jax.ShapeDtypeStruct((n,), jnp.float32)}
        out = ptc.tree_from_dict({"w": user}, like=like)
        user[:] = 7.0  # at once: no copy may still be reading it
        jax.block_until_ready(out)
        assert float(np.asarray(out["w"]).max()) == 0.0
        assert out["w"].unsafe_buffer_pointer() != user.ctypes.data


def test_the_garbage_collector_is_left_as_it_was(tmp_path: Path) -> None:
    # Saving and loading pause the cyclic collector (a speed-up for many leaves); they
    # must hand it back in the state they found it, errors included.
    import gc

    path = tmp_path / "m.safetensors"
    model = make_mlp()
    assert gc.isenabled()
    ptc.tree_save(path, model)
    assert ptc.tree_load(path, like=model) == model
    assert gc.isenabled()
    with pytest.raises(ValueError, match="shape mismatch"):
        ptc.tree_load(path, like=model.at.layers[0].w.set(jnp.zeros((1, 1))))
    assert gc.isenabled()
    gc.disable()
    try:
        ptc.tree_save(path, model)
        assert ptc.tree_load(path, like=model) == model
        assert not gc.isenabled()
    finally:
        gc.enable()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.binary(max_size=40))
def test_crc32_combine_is_the_crc_of_the_concatenation(a: bytes, b: bytes, prefix: bytes) -> None:
    # The chunks of a large file are checked on worker threads and their CRCs combined.
    import zlib

    from pytreeclass._io._io_file import crc32_combine

    start = zlib.crc32(prefix)
    assert crc32_combine(zlib.crc32(a, start), zlib.crc32(b), len(b)) == zlib.crc32(a + b, start)
    assert crc32_combine(start, zlib.crc32(b), len(b)) == zlib.crc32(b, start)
