"""ntkfuse.experiments.reports and device/records: writers and run records."""
from __future__ import annotations

import csv
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkfuse.experiments import describe_device, timestamp, versions
from ntkfuse.experiments.reports import (bar_panels, csv_text, json_text, markdown_table, read_json, text_table,
                                         write_json)


def test_json_text_converts_numpy_and_jax(tmp_path):
    obj = {"i": np.int64(3), "f": np.float32(0.5), "a": np.arange(3), "j": jnp.ones(2), "t": (1, 2)}
    assert json.loads(json_text(obj)) == {"i": 3, "f": 0.5, "a": [0, 1, 2], "j": [1.0, 1.0], "t": [1, 2]}
    write_json(tmp_path / "x" / "r.json", obj)
    assert read_json(tmp_path / "x" / "r.json")["a"] == [0, 1, 2]
    (tmp_path / "bad.json").write_text("{")
    assert read_json(tmp_path / "bad.json") is None and read_json(tmp_path / "missing.json") is None


def test_csv_text_columns_headers_and_missing():
    rows = [{"m": "a", "x": 1.5, "y": None}, {"m": "b", "x": 2}]
    text = csv_text(rows, [("m", "method"), ("x", "x"), ("y", "why")])
    assert text == "method,x,why\na,1.5,\nb,2,\n"
    assert list(csv.DictReader(io.StringIO(csv_text(rows))))[1] == {"m": "b", "x": "2", "y": ""}


def test_tables():
    head, cells = ["method", "err"], [["fusion", "0.1"], ["svd", "12.25"]]
    assert markdown_table(head, cells) == "| method | err |\n|---|---|\n| fusion | 0.1 |\n| svd | 12.25 |"
    assert markdown_table(head, cells, align="lr").splitlines()[1] == "|---|---:|"
    assert text_table(head, cells).splitlines() == ["method    err", "------  -----", "fusion    0.1",
                                                    "svd     12.25"]


@pytest.mark.parametrize("series", [
    {"run": [1.0, 2.0, np.nan]},
    {"a": [1.0, 2.0, 3.0], "b": ([1.0, 1.5, 1e4], [0.1, 0.2, 0.3])},   # error bars, log axis
    [("same", [1.0, 2.0, 3.0]), ("same", [2.0, 1.0, None])],          # repeated labels
])
def test_bar_panels_png(tmp_path, series):
    png = bar_panels([("err", series), ("other", series)], ["x", "y", "z"], tmp_path / "p.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "p.png").read_bytes() == png


def test_device_and_versions():
    d = describe_device()
    assert d["platform"] == jax.default_backend() and d["count"] == jax.device_count() >= 1
    assert d["kind"] and d["jax"] == jax.__version__
    v = versions(extra="1")
    assert {"ntkfuse", "jax", "numpy", "python"} <= set(v) and v["extra"] == "1"
    assert timestamp().endswith("+00:00")


def test_model_phrase_and_run_footer_are_the_reports_shared_sentences():
    from ntkfuse.experiments import reports
    c = {"model": "gpt2", "model_config": {"family": "gpt2", "num_layers": 12, "hidden": 768, "intermediate": 3072}}
    assert reports.model_phrase(c) == "model gpt2 (gpt2, 12 layers, d=768, D=3072)"
    assert reports.model_phrase(c, "bfloat16") == "model gpt2 (gpt2, 12 layers, d=768, D=3072, bfloat16)"
    r = {"timestamp": "2026-11-23T19:00:00", "config_hash": "abc123", "wall_s": 12.345}
    assert reports.run_footer(r) == "Run 2026-11-23T19:00:00, config hash abc123, wall time 12.3 s."
