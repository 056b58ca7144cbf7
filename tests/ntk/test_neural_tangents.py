"""Optional: ntkfuse's empirical NTK against neural-tangents 0.6.5 itself, through the pinned
venv of scripts/setup_neural_tangents_env.sh (scripts/crosscheck_neural_tangents.py).
Skips where that environment is absent; an environment that exists but fails is a failure."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _nt_python() -> Path:
    p = Path(os.environ.get("NTKFUSE_NT_PYTHON", ".venv-nt/bin/python"))
    return p if p.is_absolute() else ROOT / p


def _script():
    spec = importlib.util.spec_from_file_location("crosscheck_neural_tangents",
                                                  ROOT / "scripts" / "crosscheck_neural_tangents.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_matches_neural_tangents(tmp_path):
    py = _nt_python()
    if not py.exists():
        pytest.skip(f"no neural-tangents environment at {py} (build it with scripts/setup_neural_tangents_env.sh, "
                    "or point NTKFUSE_NT_PYTHON at its python)")
    script = _script()
    out = tmp_path / "crosscheck.json"
    # implementation 1 (jacobian contraction) keeps it to seconds; the script's default runs all three
    assert script.main(["--nt-python", str(py), "--out", str(out), "--implementations", "1"]) == 0
    res = json.loads(out.read_text())
    assert res["versions"]["nt_env"]["neural_tangents"] == "0.6.5"
    rows = res["rows"]
    assert res["n_not_computed"] == 0 and len(rows) == len(script.SETTINGS) + 1   # + the engine on the transformer
    assert all(r["rel_err"] <= 1e-5 for r in rows), [(r["setting"], r["rel_err"]) for r in rows]
    # the transformer: neural-tangents on ntkfuse's forward vs both ntkfuse entry points
    assert {r["ntkfuse"] for r in rows if r["setting"].startswith("bert")} == {"empirical_ntk_fn", "kernels"}
    # the conventions docs/ntk.md states: neural-tangents averages over traced axes where ntkfuse sums
    # (MLP with 3 outputs: off by 3x, relative error 2), and puts a diagonal axis in place where ntkfuse
    # puts it first (the map is needed: unmapped, the kernels differ)
    by = {r["setting"]: r for r in rows}
    assert by["mlp trace (-1,)"]["unmapped_rel_err"] == pytest.approx(2.0, rel=1e-5)
    assert not by["cnn trace (-1,) diag (2,)"]["same_layout"]
    assert by["mlp full"]["same_layout"] and by["mlp full"]["unmapped_rel_err"] <= 1e-5
