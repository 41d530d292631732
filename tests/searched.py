"""The small searched sweep that the long sweep tests run through `vitscale sweep` (one home for its spec)."""

import subprocess
import sys
from pathlib import Path


def spec(name: str, total_steps: int, eval_every: int, **extra) -> dict:
    """Atto/7 on 256 Fashion-MNIST images, three rates; 1e30 overflows float32 on the first update."""
    base = {
        "dataset": "fashion_mnist",
        "variant": "Atto/7",
        "train_examples": 256,
        "val_examples": 256,
        "test_split": "test[:256]",
        "eval_batch_size": 256,
        "batch_size": 32,
        "total_steps": total_steps,
        "warmup_steps": 2,
        "eval_every": eval_every,
        "log_every": 3,
        "grad_clip_norm": None,
    }
    return {"name": name, "notebook": "pretrain", "base": base, "search": {"lr": [0.0005, 0.001, 1.0e30]}, **extra}


def vitscale(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """The `vitscale` command of this interpreter's environment, its output captured."""
    exe = str(Path(sys.executable).parent / "vitscale")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
