"""Hugging Face files as they are: `.safetensors` metadata, sharded checkpoints with an
index, PyTorch pickles refused; `tree_read` and `tree_info` on every layout."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy as safetensors_numpy

import pytreeclass as ptc
from pytreeclass._io import _io_shards
from pytreeclass._io._io_shards import parse_size

from .models import MLP, Linear, make_mlp


def _model(n: int = 4) -> MLP:
    layers = [
        Linear(jnp.full((8, 8), i, jnp.float32), jnp.full(8, -i, jnp.float32)) for i in range(n)
    ]
    return MLP(layers)


def _metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), framework="np") as f:
        return {k: v for k, v in f.metadata().items() if k != "pytreeclass"}


# -- metadata --------------------------------------------------------------------------------


def test_safetensors_carry_format_pt_and_user_metadata(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    ptc.tree_save(path, make_mlp())
    assert _metadata(path) == {"format": "pt"}
    ptc.tree_save(path, make_mlp(), metadata={"format": "flax", "step": "10"})
    assert _metadata(path) == {"format": "flax", "step": "10"}
    assert ptc.tree_info(path).metadata == {"format": "flax", "step": "10"}
    ptc.tree_save(path, make_mlp(), metadata={"source": "me"})
    assert _metadata(path) == {"format": "pt", "source": "me"}


@pytest.mark.parametrize(
    ("metadata", "error", "match"),
    [
        ([("a", "b")], TypeError, "metadata must be a dict of str to str, not a list"),
        ({"step": 10}, TypeError, r"metadata\['step'\] = 10: .*str\(v\)"),
        ({1: "x"}, TypeError, r"metadata\[1\] = 'x'"),
        ({"pytreeclass": "x"}, ValueError, "'pytreeclass' is reserved"),
    ],
)
def test_bad_metadata_is_refused(tmp_path: Path, metadata: Any, error: type, match: str) -> None:
    path = tmp_path / "m.safetensors"
    with pytest.raises(error, match=match):
        ptc.tree_save(path, make_mlp(), metadata=metadata)
    assert not path.exists()


@pytest.mark.parametrize(
    ("kw", "which"), [({"metadata": {}}, "metadata"), ({"max_shard_size": 10}, "max_shard_size")]
)
def test_safetensors_options_are_refused_for_npz(tmp_path: Path, kw: Any, which: str) -> None:
    with pytest.raises(ValueError, match=f"{which}= is for .safetensors files"):
        ptc.tree_save(tmp_path / "m.npz", make_mlp(), **kw)


@pytest.mark.parametrize("shards", [None, 100])
def test_a_leaf_named_metadata_is_refused(tmp_path: Path, shards: Any) -> None:
    tree = {"__metadata__": jnp.ones(2), "w": jnp.ones(1)}
    with pytest.raises(ValueError, match=r"the leaf at \['__metadata__'\] has the flat name"):
        ptc.tree_save(tmp_path / "m.safetensors", tree, max_shard_size=shards)
    assert not os.listdir(tmp_path)
    ptc.tree_save(tmp_path / "m.npz", tree)  # .npz names leaves by key path: fine there
    assert ptc.tree_load(tmp_path / "m.npz")["__metadata__"].tolist() == [1, 1]


# -- shard sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, 1),
        ("5GB", 5 * 10**9),
        ("500MB", 500 * 10**6),
        ("1.5kb", 1500),
        ("2GiB", 2 * 2**30),
        (" 10 MiB ", 10 * 2**20),
        ("123", 123),
    ],
)
def test_sizes_use_hugging_face_units(size: Any, expected: int) -> None:
    assert parse_size("tree_save", size) == expected


@pytest.mark.parametrize(
    ("size", "error"),
    [
        (0, ValueError),
        (-5, ValueError),
        ("5 parsecs", ValueError),
        ("GB", ValueError),
        ("0MB", ValueError),
        (1.5, TypeError),
        (True, TypeError),
    ],
)
def test_bad_sizes_are_refused(tmp_path: Path, size: Any, error: type) -> None:
    match = "not a positive size" if error is ValueError else "max_shard_size must be"
    with pytest.raises(error, match=match):
        ptc.tree_save(tmp_path / "m.safetensors", make_mlp(), max_shard_size=size)


# -- the sharded layout ----------------------------------------------------------------------


def test_shards_follow_the_hugging_face_layout(tmp_path: Path) -> None:
    model = _model(4)  # 4 layers of 256 + 32 bytes, and a 4-byte mean
    ptc.tree_save(tmp_path / "model.safetensors", model, max_shard_size=300)
    files = sorted(os.listdir(tmp_path))
    assert files == [
        "model-00001-of-00004.safetensors",
        "model-00002-of-00004.safetensors",
        "model-00003-of-00004.safetensors",
        "model-00004-of-00004.safetensors",
        "model.safetensors.index.json",
    ]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    flat = jax.device_get(ptc.tree_to_dict(model))
    assert index["metadata"]["total_size"] == sum(v.nbytes for v in flat.values())
    assert sorted(index["weight_map"]) == sorted(flat)  # every tensor
    seen: dict[str, np.ndarray] = {}
    for shard in files[:4]:
        got = safetensors_numpy.load_file(str(tmp_path / shard))  # the reference reader
        assert _metadata(tmp_path / shard) == {"format": "pt"}
        assert sum(v.nbytes for v in got.values()) <= 300
        assert all(index["weight_map"][k] == shard for k in got)
        seen.update(got)
    assert sorted(seen) == sorted(flat)
    for k, v in flat.items():
        np.testing.assert_array_equal(seen[k], v)
    for reader in (ptc.tree_load, ptc.tree_read, ptc.tree_info):
        assert reader(tmp_path / "model.safetensors.index.json") is not None


def test_a_tensor_larger_than_a_shard_gets_its_own(tmp_path: Path) -> None:
    tree = {"a": jnp.ones(2), "big": jnp.ones(1000), "c": jnp.ones(2)}
    ptc.tree_save(tmp_path / "m.safetensors.index.json", tree, max_shard_size="1KB")
    info = ptc.tree_info(tmp_path / "m.safetensors.index.json")
    assert info.format == "sharded safetensors" and len(info.files) == 3
    assert info.tensors["big"].file == "m-00002-of-00003.safetensors"
    out = ptc.tree_load(tmp_path / "m.safetensors.index.json", like=tree)
    assert ptc.tree_equal(out, tree)


def test_an_index_path_needs_a_shard_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is a shard index; give max_shard_size="):
        ptc.tree_save(tmp_path / "m.safetensors.index.json", make_mlp())


def test_saving_again_removes_stale_shards(tmp_path: Path) -> None:
    ptc.tree_save(tmp_path / "m.safetensors", _model(4), max_shard_size=300)
    assert len(os.listdir(tmp_path)) == 5
    (tmp_path / "notes-00001-of-00002.txt").write_text("mine")
    ptc.tree_save(tmp_path / "m.safetensors", _model(4), max_shard_size="10MB")
    assert sorted(os.listdir(tmp_path)) == [
        "m-00001-of-00001.safetensors",
        "m.safetensors.index.json",
        "notes-00001-of-00002.txt",
    ]
    assert ptc.tree_equal(ptc.tree_load(tmp_path / "m.safetensors.index.json"), _model(4))


def test_a_crash_between_shards_is_detected_not_loaded(tmp_path: Path, monkeypatch: Any) -> None:
    index = tmp_path / "m.safetensors.index.json"
    old = _model(4)
    ptc.tree_save(index, old, max_shard_size=300)
    real = _io_shards.write_safetensors
    calls = []

    def crash_on_second(f: Any, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while writing shard 2
        real(f, *args)

    monkeypatch.setattr(_io_shards, "write_safetensors", crash_on_second)
    new = ptc.at(old).layers[0].w.set(jnp.zeros((8, 8)))
    with pytest.raises(KeyboardInterrupt):
        ptc.tree_save(index, new, max_shard_size=300)
    monkeypatch.undo()
    # shard 1 is the new one, the index and shards 2-4 the old: refused, naming the shard
    with pytest.raises(
        ValueError, match=r"shard 'm-00001-of-00004.safetensors' was written by another save"
    ):
        ptc.tree_load(index)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    ptc.tree_save(index, new, max_shard_size=300)  # saving again repairs it
    assert ptc.tree_equal(ptc.tree_load(index), new)


# -- files Hugging Face tools write ----------------------------------------------------------


def _hf_checkpoint(folder: Path) -> dict[str, np.ndarray]:
    """A sharded checkpoint as transformers writes one: reference safetensors files with
    {"format": "pt"}, an index with total_size and a weight_map, no pytreeclass manifest."""
    tensors = {
        "transformer.h.0.attn.c_attn.weight": np.arange(24, dtype=np.float32).reshape(4, 6),
        "transformer.h.0.attn.c_attn.bias": np.zeros(6, np.float32),
        "transformer.wte.weight": np.ones((5, 4), ml_dtypes.bfloat16),
        "transformer.h.0.ln_1.weight": np.ones(4, np.float16),
    }
    names = list(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[:2],
        "model-00002-of-00002.safetensors": names[2:],
    }
    for file, members in shards.items():
        safetensors_numpy.save_file(
            {k: tensors[k] for k in members}, str(folder / file), metadata={"format": "pt"}
        )
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
        "weight_map": {k: file for file, members in shards.items() for k in sorted(members)},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return tensors


def test_hugging_face_shards_are_read(tmp_path: Path) -> None:
    tensors = _hf_checkpoint(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    got = ptc.tree_read(index)
    assert sorted(got) == sorted(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype
        np.testing.assert_array_equal(got[k], v)
    info = ptc.tree_info(index)
    assert info.structure is None and info.metadata == {"format": "pt"}
    assert info.tensors["transformer.wte.weight"] == ptc.TensorInfo(
        (5, 4), "bfloat16", 40, "model-00002-of-00002.safetensors"
    )
    assert "structure: none recorded (load it with like=)" in repr(info)
    like = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in tensors.items()}
    out = ptc.tree_load(index, like=like)
    np.testing.assert_array_equal(
        out["transformer.h.0.attn.c_attn.weight"], tensors["transformer.h.0.attn.c_attn.weight"]
    )
    with pytest.raises(ValueError, match="records no tree structure"):
        ptc.tree_load(index)


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda t: "not json", ValueError, "it is not valid JSON"),
        (
            lambda t: json.dumps({"weight_map": {"w": "../model-00001-of-00002.safetensors"}}),
            ValueError,
            "no weight_map",
        ),
        (lambda t: json.dumps({"metadata": {}}), ValueError, "no weight_map"),
        (
            lambda t: t.replace("model-00002-of-00002", "model-00003-of-00002"),
            FileNotFoundError,
            "the shard 'model-00003-of-00002.safetensors' that .* lists is missing",
        ),
        (
            lambda t: t.replace('"transformer.wte.weight"', '"transformer.wpe.weight"'),
            ValueError,
            "lacks the tensor 'transformer.wpe.weight'",
        ),
        (
            lambda t: json.dumps(
                {
                    "weight_map": {
                        k: v for k, v in json.loads(t)["weight_map"].items() if "wte" not in k
                    }
                }
            ),
            ValueError,
            "holds, unlisted in the index, the tensor 'transformer.wte.weight'",
        ),
        (
            lambda t: t.replace('"total_size"', '"pytreeclass": 1, "total_size"'),
            ValueError,
            "manifest is not an object",
        ),
        (
            lambda t: t.replace('"total_size"', '"pytreeclass": {"format": "x"}, "total_size"'),
            ValueError,
            "not a pytreeclass manifest",
        ),
        (
            lambda t: t.replace(
                '"total_size"',
                '"pytreeclass": {"format": "pytreeclass.tree", "version": 9}, "total_size"',
            ),
            ValueError,
            "format version 9",
        ),
    ],
)
def test_bad_indexes_are_reported(tmp_path: Path, edit: Any, error: type, match: str) -> None:
    _hf_checkpoint(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(edit(index.read_text()))
    for reader in (ptc.tree_read, ptc.tree_info):
        with pytest.raises(error, match=match):
            reader(index)


# -- PyTorch pickles -------------------------------------------------------------------------

UNPICKLED: list[str] = []


class _Payload:
    def __reduce__(self) -> Any:
        return (UNPICKLED.append, ("code ran",))


def _torch_like_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": _Payload()}, protocol=2))
        zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize(
    "name", ["pytorch_model.bin", "model.pt", "x.npz", "x.safetensors", "weights.dat"]
)
@pytest.mark.parametrize("kind", ["raw", "zip"])
def test_pytorch_pickles_are_refused_unopened(tmp_path: Path, name: str, kind: str) -> None:
    path = tmp_path / name
    if kind == "raw":
        path.write_bytes(pickle.dumps({"w": _Payload()}, protocol=2))
    else:
        _torch_like_zip(path)
    for call in (
        lambda: ptc.tree_load(path, like={"w": jnp.zeros(1)}),
        lambda: ptc.tree_load(path),
        lambda: ptc.tree_read(path),
        lambda: ptc.tree_info(path),
    ):
        with pytest.raises(
            ValueError,
            match=r"is a pickle \(as PyTorch's torch\.save .* never unpickles.*safetensors\.torch import save_file",
        ):
            call()
    assert UNPICKLED == []


def test_a_pytorch_shard_index_names_the_pickle(tmp_path: Path) -> None:
    shard = tmp_path / "pytorch_model-00001-of-00001.bin"
    _torch_like_zip(shard)
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"weight_map": {"w": shard.name}}))
    with pytest.raises(ValueError, match=r"pytorch_model-00001-of-00001\.bin' is a pickle"):
        ptc.tree_read(index)
    assert UNPICKLED == []


def test_a_damaged_file_is_still_called_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="truncated, corrupt"):
        ptc.tree_load(path)


# -- tree_read / tree_info -------------------------------------------------------------------


def _leaves() -> dict[str, Any]:
    return {
        "layers": [{"w": jnp.arange(6.0).reshape(2, 3)}, {"w": jnp.ones((2, 3), jnp.bfloat16)}],
        "key": jax.random.key(3),
        "lr": 0.5,
        "step": np.int64(7),
        "empty": np.zeros((0, 3), np.float32),
        "f8": jnp.ones(3, ml_dtypes.float8_e5m2),
    }


@pytest.mark.parametrize("name", ["t.npz", "t.safetensors", "t.safetensors.index.json"])
@pytest.mark.parametrize("mmap", [True, False])
def test_tree_read_gives_every_tensor_by_flat_name(tmp_path: Path, name: str, mmap: bool) -> None:
    tree = _leaves()
    shard = {"max_shard_size": 16} if name.endswith(".json") else {}
    ptc.tree_save(tmp_path / name, tree, **shard)
    got = ptc.tree_read(tmp_path / name, mmap=mmap)
    flat = ptc.tree_to_dict(tree)
    assert sorted(got) == sorted(flat)
    for k, v in flat.items():
        if k == "key":
            assert jnp.issubdtype(got[k].dtype, jax.dtypes.prng_key)
            np.testing.assert_array_equal(jax.random.key_data(got[k]), jax.random.key_data(v))
            continue
        assert np.asarray(got[k]).dtype == np.asarray(v).dtype and got[k].shape == np.shape(v)
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(v))
    w = got["layers.0.w"]
    if mmap:  # a read-only view of the mapped file
        assert not w.flags.writeable and isinstance(w.base, np.memmap)
    else:
        assert w.base is None or not isinstance(w.base, np.memmap)
    # feeds tree_from_dict
    restored = ptc.tree_from_dict({k: got[k] for k in flat}, like=tree)
    assert jax.tree.structure(restored) == jax.tree.structure(tree)


def test_tree_read_of_an_older_npz_names_by_key_path(tmp_path: Path) -> None:
    path = tmp_path / "old.npz"
    ptc.tree_save(path, {"a": {"b": jnp.ones(1)}, "c": [jnp.zeros(2)]})
    _edit_manifest(path, lambda m: m.pop("names"))
    assert sorted(ptc.tree_read(path)) == ["a.b", "c.0"]


def test_tree_read_refuses_two_npz_leaves_with_one_flat_name(tmp_path: Path) -> None:
    path = tmp_path / "twice.npz"
    ptc.tree_save(path, {"a.b": jnp.ones(1), "a": {"b": jnp.zeros(1)}})  # .npz keeps both
    with pytest.raises(ValueError, match=r"two leaves of .* have the flat name 'a\.b'"):
        ptc.tree_read(path)


def test_tree_read_maps_no_bytes_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    ptc.tree_save(path, {"w": jnp.ones(1000)})
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="corrupt"):
        ptc.tree_read(path)


def test_tree_info_reads_no_tensor_data(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    ptc.tree_save(path, {"w": jnp.ones(1000)})
    data = bytearray(path.read_bytes())
    at = data.rindex(b"\x00\x00\x80\x3f")  # a byte of the last 1.0 in the data
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="bad CRC-32"):
        ptc.tree_load(path)
    info = ptc.tree_info(path)  # headers only: the damage is not seen
    assert info.tensors["w"] == ptc.TensorInfo((1000,), "float32", 4000, "t.npz")


def test_tree_info_repr_is_a_short_table(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    ptc.tree_save(path, _model(12), metadata={"step": "3"})
    info = ptc.tree_info(path)
    text = repr(info)
    lines = text.splitlines()
    assert lines[0] == "TreeInfo('big.safetensors': safetensors, 25 tensors, 3.5 kB)"
    assert lines[1] == "  structure: tests.models.MLP"
    assert lines[2] == "  metadata: {'format': 'pt', 'step': '3'}"
    assert "  ... 10 more" in lines and len(lines) == 3 + 15 + 1
    assert "  layers.0.w   float32[8,8]" in lines
    assert info.nbytes == 12 * 288 + 4 and len(info.names) == 25
    small = repr(ptc.tree_info(_save_npz(tmp_path, {"lr": 0.1})))
    assert small.splitlines()[1:] == ["  structure: dict", "  lr  Python float"]


def _save_npz(folder: Path, tree: Any) -> Path:
    path = folder / "s.npz"
    ptc.tree_save(path, tree)
    return path


def _edit_manifest(path: Path, edit: Any) -> None:
    src = path.read_bytes()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(src)
    with zipfile.ZipFile(tmp) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "__manifest__.json":
                manifest = json.loads(data)
                edit(manifest)
                data = json.dumps(manifest).encode()
            zout.writestr(info, data)
    tmp.unlink()
