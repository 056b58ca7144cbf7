#!/usr/bin/env bash
# A separate, pinned virtual environment where neural-tangents 0.6.5 imports, for
# scripts/crosscheck_neural_tangents.py and tests/ntk/test_neural_tangents.py.
# Never touches the main environment.
#
#   NTKFUSE_NT_VENV=/path/to/venv scripts/setup_neural_tangents_env.sh   (default: .venv-nt in the repo root)
#
# Why these pins (the lightest install that works):
# - neural-tangents 0.6.5 (Jan 2024, its last release) with the JAX of its time, 0.4.25
#   in the same season: its "structured derivatives" implementation
#   (implementation=3) uses jax.interpreters.ad.source_info_util, removed in JAX 0.4.26;
#   jacobian contraction and NTK-vector products (implementations 1, 2) also run on 0.5.x.
#   numpy/scipy/ml_dtypes of the same season (numpy 1.x ABI of jaxlib 0.4.25).
# - `--no-deps`: it declares tensorflow and tf2jax, used only by
#   `neural_tangents.experimental.empirical_ntk_fn_tf` (TF interop, via jax2tf). Its package
#   __init__ imports that module eagerly, so the cross-check puts an empty stand-in module
#   under the name `neural_tangents.experimental` into sys.modules before
#   `import neural_tangents`, inside its own process only; no installed file changes.
#   The one other import it really needs is frozendict.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NTKFUSE_NT_VENV:-$ROOT/.venv-nt}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "needs Python 3.11 (the pinned jaxlib wheels)"'
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --no-deps "jax==0.4.25" "jaxlib==0.4.25" "ml_dtypes==0.3.2" "opt_einsum==3.3.0" \
  "numpy==1.26.4" "scipy==1.12.0" "frozendict==2.4.6"
"${PIP[@]}" --no-deps "neural-tangents==0.6.5"
"$VENV/bin/python" - <<'PY'
import sys, types
sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
import jax, neural_tangents
print(f"ok: neural-tangents {neural_tangents.__version__}, jax {jax.__version__}, python {sys.version.split()[0]}")
PY
echo "venv: $VENV  (python: $VENV/bin/python)"
