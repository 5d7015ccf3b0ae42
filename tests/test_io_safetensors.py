"""tree_save / tree_load in both formats: `.safetensors` (read and written by the real
`safetensors` package too), `.npz` (read by NumPy), Python numbers at the edges, and every
way a safetensors header can be wrong."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pytreeclass as ptc

from .test_io import _bits, assert_same, damage, make_mlp

safetensors_numpy = pytest.importorskip("safetensors.numpy")
safetensors = pytest.importorskip("safetensors")

FORMATS = ["npz", "safetensors"]


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


# -- round trips in both formats ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_special_dtype_round_trips(tmp_path: Path, fmt: str) -> None:
    tree = {
        "bf16": jnp.array([1.5, -2.0, jnp.nan, jnp.inf], jnp.bfloat16),
        "f8e4m3fn": jnp.array([0.5, -448.0], ml_dtypes.float8_e4m3fn),
        "f8e5m2": jnp.array([0.5, 3.0], ml_dtypes.float8_e5m2),
        "f8fnuz": jnp.array([0.5, 3.0], ml_dtypes.float8_e4m3fnuz),
        "i4": jnp.array([-8, 7], jnp.int4),
        "u4": jnp.array([0, 15], jnp.uint4),
        "bool": jnp.array([True, False]),
        "c64": jnp.array([1 + 2j], jnp.complex64),
        "c128": np.array([[1 + 2j, 3 - 4j]], np.complex128),
        "key": jax.random.key(3),
        "keys": jax.random.split(jax.random.key(4), 3),
        "rbg": jax.random.key(5, impl="rbg"),
        "np": np.arange(6, dtype=np.int64).reshape(2, 3),
        "np_scalar": np.float32(2.5),
        "big_endian": np.arange(3, dtype=">f4"),
        "transposed": np.arange(6.0).reshape(2, 3).T,
        "py": (True, 3, 1.25, 1 + 1j, 2**64 - 1, -(2**63)),
        "empty": jnp.zeros((0, 3)),
        "big": np.arange(3_000_000, dtype=np.float32),
    }
    path = tmp_path / f"t.{fmt}"
    ptc.tree_save(path, tree)
    loaded = ptc.tree_load(path, like=tree)
    expected = {**tree, "big_endian": np.arange(3, dtype="<f4")}  # stored little-endian
    assert_same(loaded, expected)
    assert [type(v) for v in loaded["py"]] == [bool, int, float, complex, int, int]
    assert isinstance(loaded["np"], np.ndarray) and isinstance(loaded["np_scalar"], np.float32)
    assert isinstance(loaded["bf16"], jax.Array)


_DTYPES = ["float32", "bfloat16", "float16", "int8", "uint8", "int32", "bool", "float8_e4m3fn"]
_leaf = st.builds(
    lambda shape, dtype, seed: (np.random.default_rng(seed).normal(size=tuple(shape)) * 10).astype(
        jnp.dtype(dtype)
    ),
    st.lists(st.integers(0, 4), max_size=3),
    st.sampled_from(_DTYPES),
    st.integers(0, 2**16),
)
_trees = st.recursive(
    st.one_of(_leaf, st.floats(allow_nan=False), st.integers(-(2**63), 2**63 - 1)),
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), children, max_size=3),
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(tree=_trees, fmt=st.sampled_from(FORMATS), as_jax=st.booleans())
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, tree: object, fmt: str, as_jax: bool
) -> None:
    if as_jax:
        tree = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, tree)
    path = tmp_path_factory.mktemp("prop") / f"t.{fmt}"
    try:
        ptc.tree_save(path, tree)
    except ValueError as e:  # dict keys such as "0" beside list index 0
        assert fmt == "safetensors" and "both have the flat name" in str(e)
        return
    assert_same(ptc.tree_load(path, like=tree), tree)
    # A file with the same leaves loads whatever the arrays' values in the template.
    zeros = jax.tree.map(lambda x: (x * 0).astype(x.dtype) if hasattr(x, "shape") else x, tree)
    assert_same(ptc.tree_load(path, like=zeros), tree)


@pytest.mark.parametrize("fmt", FORMATS)
def test_sharded_template_places_the_leaves(tmp_path: Path, fmt: str) -> None:
    device = jax.devices()[-1]
    sharding = jax.sharding.SingleDeviceSharding(device)
    like = {"w": jax.ShapeDtypeStruct((2, 2), jnp.float32, sharding=sharding), "n": 0}
    path = tmp_path / f"w.{fmt}"
    ptc.tree_save(path, {"w": jnp.eye(2), "n": 4})
    out = ptc.tree_load(path, like=like)
    assert out["w"].sharding == sharding and out["n"] == 4


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_keyword_overrides_the_suffix(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "weights.bin"
    ptc.tree_save(path, {"w": np.ones(2, np.float32)}, format=fmt)  # type: ignore[arg-type]
    starts_like_zip = path.read_bytes()[:2] == b"PK"
    assert starts_like_zip == (fmt == "npz")
    out = ptc.tree_load(path, like={"w": np.zeros(2, np.float32)}, format=fmt)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out["w"], [1.0, 1.0])
    with pytest.raises(
        ValueError, match=r"tree_save: format must be 'npz' or 'safetensors', not 'pt'"
    ):
        ptc.tree_save(path, {}, format="pt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tree_load: format must be 'npz' or 'safetensors'"):
        ptc.tree_load(path, like={}, format="zip")  # type: ignore[arg-type]


# -- Python numbers at the edges (both formats) -------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_ints_beyond_64_bits_are_refused_at_save(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"n.{fmt}"
    with pytest.raises(
        OverflowError,
        match=r"tree_save: the Python int at \['n'\] \(1180591620717411303424\) does not fit in 64 bits",
    ):
        ptc.tree_save(path, {"n": 2**70})
    with pytest.raises(OverflowError, match=r"does not fit in 64 bits"):
        ptc.tree_save(path, {"n": -(2**63) - 1})
    assert not path.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_saved_python_number_checks_the_template_shape(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"n.{fmt}"
    ptc.tree_save(path, {"w": 0.5, "n": 300})
    with pytest.raises(
        ValueError,
        match=r"shape mismatch at \['w'\]: the file has a Python float, the template float32\[3,4\]",
    ):
        ptc.tree_load(path, like={"w": jnp.zeros((3, 4)), "n": 0})
    out = ptc.tree_load(path, like={"w": jnp.zeros(()), "n": jnp.zeros((), jnp.int16)})
    assert out["w"].dtype == jnp.float32 and int(out["n"]) == 300
    with pytest.raises(
        ValueError,
        match=r"value mismatch at \['n'\]: the file has the Python int 300, which does not fit int8",
    ):
        ptc.tree_load(path, like={"w": 0.0, "n": np.zeros((), np.int8)})


@pytest.mark.parametrize("fmt", FORMATS)
def test_float_overflowing_the_template_dtype_is_refused(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"x.{fmt}"
    ptc.tree_save(path, {"x": 1e300})
    with pytest.raises(
        ValueError, match=r"the Python float 1e\+300, which does not fit float32, the template's"
    ):
        ptc.tree_load(path, like={"x": jnp.zeros(())})
    ptc.tree_save(path, {"x": float("inf")})  # inf stays inf: nothing is lost
    assert float(ptc.tree_load(path, like={"x": jnp.zeros(())})["x"]) == float("inf")


# -- safetensors: interchange with the real package ---------------------------------------------


def test_safetensors_file_is_read_by_the_safetensors_package(tmp_path: Path) -> None:
    model = make_mlp()
    path = tmp_path / "model.safetensors"
    ptc.tree_save(path, model)
    loaded = safetensors_numpy.load_file(str(path))
    expected = jax.device_get(ptc.tree_to_dict(model))
    assert (
        sorted(loaded)
        == sorted(expected)
        == sorted(["layers.0.w", "layers.0.b", "layers.1.w", "layers.1.b", "mean", "lr"])
    )
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == np.asarray(value).dtype
    with safetensors.safe_open(str(path), framework="np") as f:
        metadata = f.metadata()
    meta = json.loads(metadata.pop("pytreeclass"))
    assert metadata == {"format": "pt"}  # what transformers' from_pretrained requires
    assert meta.pop("structure")["classes"][0]["name"].endswith(":MLP")  # test_io_structure
    assert meta == {
        "format": "pytreeclass.tree",
        "version": 2,
        "leaves": {"lr": {"python": "float"}},
    }


# Values a swapped dtype code cannot pass through unchanged: negative ones for the signed
# types, ones past the signed range for the unsigned (so int32 and uint32 read as each
# other differ), and shapes that a swapped width would change.
_CODE_VALUES = {
    "BOOL": [[True, False], [False, True]],
    "U8": [[0, 1], [200, 255]],
    "I8": [[-1, 1], [-128, 127]],
    "U16": [[0, 1], [40_000, 65_535]],
    "I16": [[-1, 1], [-32_768, 32_767]],
    "F16": [[-1.5, 0.25], [65_504.0, -0.0]],
    "BF16": [[-1.5, 0.25], [3.0e38, -0.0]],
    "U32": [[0, 1], [3_000_000_000, 4_294_967_295]],
    "I32": [[-1, 1], [-(2**31), 2**31 - 1]],
    "F32": [[-1.5, 0.1], [3.0e38, float("inf")]],
    "U64": [[0, 1], [2**63 + 5, 2**64 - 1]],
    "I64": [[-1, 1], [-(2**63), 2**63 - 1]],
    "F64": [[-1.5, 0.1], [1e300, float("-inf")]],
    "C64": [[1 + 2j, -3j], [0.5, -1 - 1j]],
    "F8_E5M2": [[-1.5, 0.25], [57_344.0, -0.0]],
    "F8_E4M3": [[-1.5, 0.25], [448.0, -0.0]],
}


def _code_arrays() -> dict[str, np.ndarray]:
    from pytreeclass._io._io_safetensors import _DTYPES

    assert set(_DTYPES) == set(_CODE_VALUES)  # a new code gets values here
    return {code: np.array(_CODE_VALUES[code], dtype=dt) for code, dt in _DTYPES.items()}


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_every_dtype_code_is_read_back_by_the_reference_reader(tmp_path: Path) -> None:
    """Our reader agrees with our writer whatever the codes are: the reference reader
    catches a swapped pair (int32 and uint32, say) that a round trip cannot."""
    arrays = _code_arrays()
    path = tmp_path / "codes.safetensors"
    ptc.tree_save(path, {code.lower(): a for code, a in arrays.items()})
    header = _header(path)
    read = []
    with safetensors.safe_open(str(path), framework="np") as f:
        for code, a in arrays.items():
            assert header[code.lower()]["dtype"] == code
            try:
                back = f.get_tensor(code.lower())
            except (AttributeError, TypeError):  # no NumPy dtype for it in this safetensors
                continue
            assert _bits_equal(back, a), (code, back, a)
            read.append(code)
    assert {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64"} <= set(read)


def test_every_dtype_code_the_reference_writes_is_read_by_ours(tmp_path: Path) -> None:
    arrays = _code_arrays()
    written = {}
    for code, a in arrays.items():
        path = tmp_path / f"{code}.safetensors"
        try:
            safetensors_numpy.save_file({"x": a}, str(path))
        except (ValueError, TypeError, KeyError):  # a dtype this safetensors cannot write
            continue
        assert _header(path)["x"]["dtype"] == code
        written[code] = path
    assert {"BOOL", "U8", "I8", "U16", "I16", "F16", "U32", "I32", "F32", "U64", "I64"} <= set(
        written
    )
    for code, path in written.items():
        a = arrays[code]
        out = ptc.tree_load(path, like={"x": np.zeros(a.shape, a.dtype)})
        assert _bits_equal(np.asarray(out["x"]), a), code
        # A template of the swapped dtype is refused, not reinterpreted.
        other = np.dtype(np.uint32 if a.dtype == np.int32 else np.int32)
        if other != a.dtype:
            with pytest.raises(ValueError, match=r"\['x'\]"):
                ptc.tree_load(path, like={"x": np.zeros(a.shape, other)})


@pytest.mark.parametrize("n", range(8))
def test_header_is_padded_to_a_multiple_of_8_with_spaces(tmp_path: Path, n: int) -> None:
    """The data section starts 8-byte aligned, so each tensor starts at a multiple of its
    item size in the file (the reference writer's layout; memory-mapping readers rely on
    it). Names of n extra characters walk the header length through every residue."""
    tree = {"w" + "x" * n: np.arange(3, dtype=np.float64), "b": np.arange(3, dtype=np.int16)}
    path = tmp_path / "pad.safetensors"
    ptc.tree_save(path, tree)
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    assert size % 8 == 0
    text = raw[8 : 8 + size].decode()
    assert text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" ")))
    assert len(text) - len(text.rstrip(" ")) < 8 and text.rstrip(" ").endswith("}")
    header = json.loads(text)
    for name, value in tree.items():
        begin, end = header[name]["data_offsets"]
        assert (8 + size + begin) % value.dtype.itemsize == 0
        assert raw[8 + size + begin : 8 + size + end] == value.tobytes()


def test_bfloat16_is_a_standard_safetensors_dtype(tmp_path: Path) -> None:
    path = tmp_path / "bf16.safetensors"
    w = jnp.array([[1.5, -2.0]], jnp.bfloat16)
    ptc.tree_save(path, {"w": w, "f8": jnp.array([0.5], ml_dtypes.float8_e4m3fn)})
    header = _header(path)
    assert header["w"]["dtype"] == "BF16" and header["f8"]["dtype"] == "F8_E4M3"
    with safetensors.safe_open(str(path), framework="np") as f:
        back = f.get_tensor("w")
    assert back.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.astype(np.float32), np.asarray(w, np.float32))


def test_files_written_by_the_safetensors_package_load(tmp_path: Path) -> None:
    path = tmp_path / "hf.safetensors"
    tensors = {
        "layers.0.w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "layers.0.b": np.ones(4, np.float16),
        "layers.1.w": np.zeros((4, 2), np.int8),
        "layers.1.b": np.array([True, False]),
        "mean": np.array(2.0, np.float32),
        "lr": np.array(0.5),
    }
    safetensors_numpy.save_file(tensors, str(path), metadata={"source": "elsewhere"})
    like = make_mlp()
    like = like.at.layers[0].b.set(jnp.zeros(4, jnp.float16))
    like = like.at.layers[1].w.set(jnp.zeros((4, 2), jnp.int8))
    like = like.at.layers[1].b.set(jnp.zeros(2, bool))
    out = ptc.tree_load(path, like=like)
    assert ptc.tree_to_dict(jax.tree.map(np.asarray, out)).keys() == tensors.keys()
    np.testing.assert_array_equal(out.layers[0].w, tensors["layers.0.w"])
    assert out.layers[1].b.dtype == jnp.bool_ and out.lr == 0.5 and type(out.lr) is float
    with pytest.raises(ValueError, match=r"missing from the file: layers\.2\.w"):
        ptc.tree_load(path, like=like.at.layers.set([*like.layers, like.layers[0]]))


def test_safetensors_reader_refuses_unknown_dtype_codes(tmp_path: Path) -> None:
    path = tmp_path / "f4.safetensors"
    _write_raw(path, {"w": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}, b"\x00")
    with pytest.raises(
        ValueError, match=r"the tensor 'w' has dtype 'F4', which pytreeclass does not read"
    ):
        ptc.tree_load(path, like={"w": jnp.zeros(2)})


def test_names_two_leaves_share_are_refused(tmp_path: Path) -> None:
    tree = {"a.b": jnp.ones(1), "a": {"b": jnp.ones(1)}}
    with pytest.raises(
        ValueError,
        match=r"tree_save: the leaves at \['a'\]\['b'\] and \['a.b'\] of the tree both have the flat name 'a.b'",
    ):
        ptc.tree_save(tmp_path / "x.safetensors", tree)
    ptc.tree_save(tmp_path / "x.npz", tree)  # key paths tell them apart
    with pytest.raises(ValueError, match=r"tree_load: the leaves .* of the template both have"):
        ptc.tree_load(tmp_path / "x.safetensors", like=tree)


def test_safetensors_save_is_atomic_too(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    ptc.tree_save(path, {"w": np.ones(3)})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"the leaf at \['name'\] is a str"):
        ptc.tree_save(path, {"w": np.zeros(3), "name": "x"})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]


# -- safetensors: damaged files ---------------------------------------------------------------


def _write_raw(path: Path, header: dict | bytes, data: bytes = b"") -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.fixture
def st_saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    ptc.tree_save(path, make_mlp())
    return path


_W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        (b"{not json", b"", "its header is not valid JSON"),
        (b"[1, 2]", b"", "its header is not a JSON object"),
        ({"w": [1]}, b"", "the header entry for 'w' is not an object"),
        ({"w": {**_W, "shape": [-2]}}, bytes(8), "the tensor 'w' has no valid shape"),
        ({"w": {**_W, "data_offsets": [8, 0]}}, bytes(8), "no valid data_offsets"),
        ({"w": {**_W, "data_offsets": [0, 4]}}, bytes(8), r"has 4 bytes for \(2,\)"),
        ({"w": _W, "v": _W}, bytes(16), "overlap or leave gaps"),
        ({"w": _W}, bytes(12), "the data section holds 12 bytes but its leaves need 8"),
        (
            {"w": _W, "__metadata__": {"a": 1}},
            bytes(8),
            "its __metadata__ is not a mapping of strings",
        ),
        (
            {"w": _W, "__metadata__": {"pytreeclass": "{"}},
            bytes(8),
            "its pytreeclass manifest is not valid JSON",
        ),
        ({"w": _W, "__metadata__": {"pytreeclass": "{}"}}, bytes(8), "not a pytreeclass manifest"),
        (
            {
                "w": _W,
                "__metadata__": {"pytreeclass": '{"format": "pytreeclass.tree", "version": 2}'},
            },
            bytes(8),
            "no valid leaf list",
        ),
        (
            {
                "w": _W,
                "__metadata__": {
                    "pytreeclass": '{"format": "pytreeclass.tree", "version": 2, '
                    '"leaves": {"v": {"python": "float"}}}'
                },
            },
            bytes(8),
            "its manifest lists 'v', which it lacks",
        ),
        (
            {
                "w": _W,
                "__metadata__": {
                    "pytreeclass": '{"format": "pytreeclass.tree", "version": 2, '
                    '"leaves": {"w": {"dtype": "int4", "shape": [2]}}}'
                },
            },
            bytes(8),
            "the manifest entry for 'w' is inconsistent",
        ),
    ],
    ids=[
        "bad-json",
        "not-object",
        "entry-not-object",
        "bad-shape",
        "bad-offsets",
        "wrong-size",
        "overlap",
        "spare-bytes",
        "metadata-not-strings",
        "manifest-bad-json",
        "foreign-manifest",
        "no-leaves",
        "manifest-extra-name",
        "manifest-inconsistent",
    ],
)
def test_bad_safetensors_headers_are_clear_errors(
    tmp_path: Path, header: dict | bytes, data: bytes, message: str
) -> None:
    path = tmp_path / "bad.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(ValueError, match=r"tree_load: cannot read .*" + message):
        ptc.tree_load(path, like={"w": jnp.zeros(2)})


def test_header_length_beyond_the_file_and_empty_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10**6) + b"{}")
    with pytest.raises(ValueError, match=r"its header length \(1000000 bytes\) exceeds the file"):
        ptc.tree_load(path, like={})
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="it is shorter than a safetensors header"):
        ptc.tree_load(path, like={})


def test_newer_safetensors_manifest_says_to_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "new.safetensors"
    meta = {"pytreeclass": json.dumps({"format": "pytreeclass.tree", "version": 3, "leaves": {}})}
    _write_raw(path, {"w": _W, "__metadata__": meta}, bytes(8))
    with pytest.raises(ValueError, match=r"has format version 3; .* Upgrade pytreeclass"):
        ptc.tree_load(path, like={"w": jnp.zeros(2)})


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.5, 0.99])
def test_truncated_safetensors_file_is_a_clear_error(st_saved: Path, fraction: float) -> None:
    size = st_saved.stat().st_size
    with open(st_saved, "r+b") as f:
        f.truncate(int(size * fraction))
    with pytest.raises(ValueError, match=r"tree_load: cannot read .*truncated, corrupt"):
        ptc.tree_load(st_saved, like=make_mlp())


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_damaged_safetensors_fail_with_value_error_or_load(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Truncations and byte flips anywhere: a clear ValueError, or a tree of the right
    structure (safetensors has no checksum: a flipped data byte changes a value)."""
    tree = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.ones(4, jnp.bfloat16), "n": 1.5}
    path = tmp_path_factory.mktemp("fuzz") / "t.safetensors"
    ptc.tree_save(path, tree)
    damage(path, data)
    try:
        loaded = ptc.tree_load(path, like=tree)
    except ValueError as e:
        assert str(e).startswith("tree_load:")
    else:
        assert jax.tree.structure(loaded) == jax.tree.structure(tree)
        # type and dtype only: a flipped data byte may change a value (even a Python
        # number's), never a leaf's type or dtype
        kinds = [_bits(x)[:2] if hasattr(x, "dtype") else type(x) for x in jax.tree.leaves(loaded)]
        assert kinds == [
            _bits(x)[:2] if hasattr(x, "dtype") else type(x) for x in jax.tree.leaves(tree)
        ]


def test_loading_never_maps_the_file_into_the_result(tmp_path: Path) -> None:
    """Leaves own their memory: overwriting the file afterwards changes nothing."""
    path = tmp_path / "w.safetensors"
    w = np.arange(1 << 20, dtype=np.float32)
    ptc.tree_save(path, {"w": w, "v": np.ones(3, np.float32)})
    out = ptc.tree_load(path, like={"w": np.zeros_like(w), "v": np.zeros(3, np.float32)})
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(bytes(8))
    np.testing.assert_array_equal(out["w"], w)
    assert out["w"].flags.writeable
