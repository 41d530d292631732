"""TensorBoard event files beside metrics.jsonl: every scalar at the same step, read back with
TensorBoard's own reader."""

import math

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from vitscale import runs


def read_events(folder) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    """({tag: {step: value}} of the scalars, {tag: text}) as TensorBoard reads a run folder."""
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    scalars, texts = {}, {}
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        values = [tensor_util.make_ndarray(e.tensor_proto) for e in events]
        if values and values[0].dtype == object:
            texts[tag] = values[-1].item().decode()
        else:
            scalars[tag] = {e.step: float(v) for e, v in zip(events, values)}
    return scalars, texts


def jsonl_scalars(path) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in runs.read_metrics(path):
        for k, v in r.items():
            if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool):
                out.setdefault(k, {})[r["step"]] = float(v)
    return out


def assert_same_scalars(folder):
    scalars, _ = read_events(folder)
    want = jsonl_scalars(folder / "metrics.jsonl")
    assert set(scalars) == set(want) and want
    for tag, by_step in want.items():
        assert set(scalars[tag]) == set(by_step), tag
        for step, v in by_step.items():
            assert scalars[tag][step] == pytest.approx(v, rel=1e-6), (tag, step)  # float32 in the event


def test_metrics_log_writes_the_same_scalars_as_events(tmp_path):
    log = runs.MetricsLog(tmp_path / "metrics.jsonl", events=True)
    log.text("parameters", "lr: 0.001")
    rng = np.random.default_rng(0)
    for step in (25, 50, 75):
        log.append({"step": step, "images_seen": 128 * step, "train/loss": float(rng.random()), "time": 1.0})
    log.append({"step": 75, "test/acc": 0.5, "fewshot/mnist_5k/10shot": 0.25, "note": "strings are not scalars"})
    assert_same_scalars(tmp_path)
    _, texts = read_events(tmp_path)
    assert texts == {"parameters": "lr: 0.001"}
    assert not math.isnan(read_events(tmp_path)[0]["train/loss"][25])
