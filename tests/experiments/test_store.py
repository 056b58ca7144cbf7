"""ntkfuse.experiments.store: rows saved atomically, reused only under their tag,
another configuration's directory refused, --fresh semantics."""
from __future__ import annotations

import json

import pytest

from ntkfuse.experiments.store import ResultStore, StoreError, open_store, row_filename


class MyError(ValueError):
    pass


@pytest.mark.parametrize("row_id, name", [
    (("fusion",), "fusion.json"),
    ("fusion", "fusion.json"),
    (("fusion", 3), "fusion__3.json"),
    (("mmd", "sst2", 0.001, 0), "mmd__sst2__0.001__0.json"),
])
def test_row_filename_plain_ids(row_id, name):
    assert row_filename(row_id) == name


@pytest.mark.parametrize("a, b", [
    (("a/b",), ("a-b",)),            # an unsafe character is replaced, yet the ids stay apart
    (("a__b",), ("a", "b")),         # the separator inside a part
    ((".hidden",), ("-hidden",)),
])
def test_row_filenames_never_collide(a, b):
    assert row_filename(a) != row_filename(b)
    assert "/" not in row_filename(a)


def test_rows_reused_only_under_their_tag(tmp_path):
    s = open_store(tmp_path / "run", "h1", {"x": 1}, tool="t")
    assert isinstance(s, ResultStore)
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {"tool": "t", "config_hash": "h1",
                                                                     "config": {"x": 1}}
    assert s.load_row(("m", 0), "tag1") is None
    row = s.save_row(("m", 0), {"value": 1.5}, tag="tag1")
    assert row == {"value": 1.5, "tag": "tag1"}
    assert s.load_row(("m", 0), "tag1") == row
    assert s.load_row(("m", 0), "tag2") is None
    assert s.load_row(("m", 1), "tag1") is None
    assert not list((tmp_path / "run" / "rows").glob(".*"))   # no temporary files left
    # a row that already holds its tag in a custom field (ntk_compare's method_hash)
    s2 = open_store(tmp_path / "c", "h", {}, tool="t", rows="methods", tag_field="method_hash")
    s2.save_row(("fusion",), {"method": "fusion", "method_hash": "abc"})
    assert (tmp_path / "c" / "methods" / "fusion.json").exists()
    assert s2.load_row(("fusion",), "abc")["method"] == "fusion"


def test_other_configuration_refused_unless_fresh(tmp_path):
    root = tmp_path / "run"
    s = open_store(root, "h1", {}, tool="t", caches=("ref.npz", "ckpt"))
    s.save_row(("a",), {"v": 1}, tag="x")
    (root / "ref.npz").write_bytes(b"1")
    (root / "ckpt").mkdir()
    (root / "ckpt" / "f").write_text("1")
    with pytest.raises(MyError, match=r"holds results of a different configuration \(hash h1, this run h2\)"):
        open_store(root, "h2", {}, tool="t", caches=("ref.npz", "ckpt"), error=MyError)
    # the same configuration reopens with its rows
    assert open_store(root, "h1", {}, tool="t").load_row(("a",), "x") == {"v": 1, "tag": "x"}
    s = open_store(root, "h2", {}, tool="t", caches=("ref.npz", "ckpt"), fresh=True)
    assert s.load_row(("a",), "x") is None
    assert not (root / "ref.npz").exists() and not (root / "ckpt").exists()
    assert json.loads((root / "run.json").read_text())["config_hash"] == "h2"


def test_foreign_directory_refused(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not a result directory of ntk_compare"):
        open_store(tmp_path / "d", "h", {}, tool="ntk_compare")
    assert (tmp_path / "d" / "notes.txt").read_text() == "mine"
    open_store(tmp_path / "empty", "h", {}, tool="t")  # new or empty directories are fine
