"""The peer baselines ntkfuse is compared with, written for this project: what a user would
write without ntkfuse, in PyTorch / scikit-learn. Each is a stand-alone script (no ntkfuse
import, so it measures the peer alone) that a bench runs in a subprocess with `--peer`:

  torch_ntk.py       empirical NTK of MLP parameters with torch (per-example loop, torch.func vmap)
  sklearn_kmeans.py  scikit-learn KMeans over the sub-MLPs (neurons) of MLP blocks
  torch_finetune.py  fine-tuning step time and peak memory, full vs MLP-narrowed model
  torch_common.py    what the two torch peers share (layer syntax, CUDA sync)

The HF PyTorch forward and the PyTorch surrogate loop are in-process peers inside
`bench_forward.py` and `bench_surrogate.py`.
"""
from pathlib import Path

DIR = Path(__file__).resolve().parent
TORCH_NTK = DIR / "torch_ntk.py"
SKLEARN_KMEANS = DIR / "sklearn_kmeans.py"
TORCH_FINETUNE = DIR / "torch_finetune.py"
