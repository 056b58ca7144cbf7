"""orbax save/restore of compressed models: tree structure (MLP kinds, None biases, static
fields) rebuilt from metadata, fusion counts stored as arrays, bit-identical outputs, older
layouts (counts as JSON) still read, errors."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import ntkfuse
from ntkfuse import DenseMLP, FusedMLP, LowRankMLP
from ntkfuse.compress import compress, restore_compressed, save_compressed


@pytest.fixture(scope="module")
def model():
    cfg = ntkfuse.ModelConfig(family="roberta", vocab_size=60, hidden=8, intermediate=32, num_layers=3,
                              num_heads=2, max_positions=24, pad_token_id=1)
    p = ntkfuse.init_params(cfg, jax.random.key(0))
    p = compress(cfg, p, "fusion", [0, 2], 12, jax.random.key(1), n_init=2)
    p = compress(cfg, p, "svd", [1], 12, jax.random.key(2))
    blk = p["layers"][0]["mlp"]   # a bias-free fused block too
    p = ntkfuse.replace_mlps(p, {0: FusedMLP(blk.w1, None, blk.w2, None, blk.counts)})
    batch = {"input_ids": np.array([[3, 5, 6, 7, 9], [4, 8, 10, 2, 1]]),
             "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])}
    return cfg, p, batch


def test_roundtrip_is_bit_identical(model, tmp_path):
    cfg, p, batch = model
    meta = {"method": "fusion", "width": 12, "layers": [0, 2], "seed": 1}
    path = save_compressed(tmp_path / "ckpt", cfg, p, meta)
    info = json.loads((path / "ntkfuse.json").read_text())
    assert info["meta"] == meta and info["ntkfuse_version"] == ntkfuse.__version__
    cfg2, p2, meta2 = restore_compressed(path)
    assert cfg2 == cfg
    assert meta2 == {**meta, "ntkfuse_version": ntkfuse.__version__}
    assert jax.tree_util.tree_structure(p2) == jax.tree_util.tree_structure(p)   # kinds, counts, Nones
    assert [type(l["mlp"]) for l in p2["layers"]] == [FusedMLP, LowRankMLP, FusedMLP]
    assert p2["layers"][2]["mlp"].counts.dtype == np.float32 and p2["layers"][0]["mlp"].b1 is None
    np.testing.assert_array_equal(p2["layers"][2]["mlp"].counts, p["layers"][2]["mlp"].counts)
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(p2)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    o1 = np.asarray(ntkfuse.forward(cfg, p, batch).logits)
    o2 = np.asarray(ntkfuse.forward(cfg2, p2, batch).logits)
    assert np.array_equal(o1, o2)


def test_save_errors(model, tmp_path):
    cfg, p, _ = model
    path = save_compressed(tmp_path / "c", cfg, p, {"method": "x"})
    with pytest.raises(FileExistsError):
        save_compressed(path, cfg, p, {})
    save_compressed(path, cfg, ntkfuse.replace_mlps(p, {1: DenseMLP(*[ntkfuse.get_mlp(p, 2).fold().__dict__[n]
                                                                      for n in ("w1", "b1", "w2", "b2")])}),
                    {"method": "y"}, overwrite=True)
    assert restore_compressed(path)[2]["method"] == "y"
    with pytest.raises(TypeError):   # meta must be JSON: nothing is written
        save_compressed(tmp_path / "bad", cfg, p, {"key": object()})
    assert not (tmp_path / "bad").exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith(".")] == []   # no temp dirs left
    with pytest.raises(FileNotFoundError, match="ntkfuse.json"):
        restore_compressed(tmp_path)


def _write_old_format(path, cfg, p, fmt):
    """A genuine checkpoint of an older layout: fixed fields (counts) as JSON ints under "fixed"
    (/2) or beside "fields" (/1), no counts arrays in the orbax store."""
    import orbax.checkpoint as ocp
    from ntkfuse.checkpoints.orbax import _encode
    arrays = {}
    tree = _encode(p, arrays)
    for layer in tree["items"]["layers"]["items"]:
        mlp = layer["items"]["mlp"]
        fixed = mlp.pop("static")
        if "counts" in mlp["fields"]:
            name = mlp["fields"].pop("counts")["name"]
            fixed["counts"] = [int(c) for c in np.asarray(arrays.pop(name))]
        if fmt == 2:
            mlp["fixed"] = fixed
        else:
            mlp.update(fixed)
    path.mkdir()
    with ocp.StandardCheckpointer() as ck:
        ck.save(path / "arrays", arrays)
    (path / "ntkfuse.json").write_text(json.dumps({"format": f"ntkfuse-compressed/{fmt}", "ntkfuse_version": "0",
                                                   "config": cfg.to_dict(), "meta": {}, "tree": tree}))


def test_counts_stored_as_arrays_and_older_formats_still_read(model, tmp_path):
    """/3 keeps fixed fields (FusedMLP.counts) among the arrays and static fields under "static";
    checkpoints of /2 and /1 (counts as JSON) restore to the same tree, bit for bit."""
    cfg, p, batch = model
    path = save_compressed(tmp_path / "ckpt", cfg, p, {})
    info = json.loads((path / "ntkfuse.json").read_text())
    assert info["format"] == "ntkfuse-compressed/3"
    spec = info["tree"]["items"]["layers"]["items"][2]["items"]["mlp"]
    assert spec["kind"] == "FusedMLP" and spec["static"] == {}
    assert spec["fields"]["counts"]["t"] == "array" and spec["fields"]["counts"]["dtype"] == "float32"
    want = np.asarray(ntkfuse.forward(cfg, p, batch).logits)
    for fmt in (2, 1):
        _write_old_format(tmp_path / f"v{fmt}", cfg, p, fmt)
        _, old, _ = restore_compressed(tmp_path / f"v{fmt}")
        assert jax.tree_util.tree_structure(old) == jax.tree_util.tree_structure(p)
        for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(old)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert np.array_equal(np.asarray(ntkfuse.forward(cfg, old, batch).logits), want)
    info["format"] = "ntkfuse-compressed/0"
    (path / "ntkfuse.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="unsupported format"):
        restore_compressed(path)


def test_compress_package_reexports_orbax_functions():
    import ntkfuse.checkpoints as ck
    import ntkfuse.compress as cp
    assert cp.save_compressed is ck.save_compressed and cp.restore_compressed is ck.restore_compressed
