"""One vocabulary of metric names, shared by metrics.jsonl, summary.json, the analysis and the plots.

A metric is `<split>/<quantity>` (train/loss, test/acc, val/acc), `fewshot/<dataset>/<k>shot`
(mean few-shot accuracy over seeds; `..._std` its spread), or `finetune/<dataset>/test/acc`.
The scaling analysis works on errors: an accuracy's error is 1 - accuracy, a loss is its own error.
"""

from __future__ import annotations

import math
import re

TRAIN_LOSS = "train/loss"
GRAD_NORM = "train/grad_norm"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
VAL_ACC = "val/acc"
VAL_LOSS = "val/loss"
LR = "lr"
IMAGES_PER_S = "images_per_s"
IMAGES_PER_S_PER_DEVICE = "perf/images_per_s_per_device"
MFU = "perf/mfu"  # model FLOPs utilisation of the logged interval (vitscale.perf)
# Fields that measure the machine, not the run: they differ between two runs that are otherwise bit for bit equal.
TIMING = frozenset({"time", IMAGES_PER_S, IMAGES_PER_S_PER_DEVICE, MFU})

_FEWSHOT = re.compile(r"fewshot/(?P<dataset>[^/]+)/(?P<shots>\d+)shot")
_FINETUNE = re.compile(r"finetune/(?P<dataset>[^/]+)/test/acc")
# The paper's table beyond fine-tuning: ImageNet-ReaL / -v2 / ObjectNet accuracy of the ImageNet
# classifier, and VTAB-1k per task, mean and group (vtab/<task|mean|natural|...>/test/acc).
_IMAGENET_EVAL = re.compile(r"(?P<eval>real|v2|objectnet)/acc")
_VTAB = re.compile(r"vtab/(?P<task>[^/]+)/test/acc")
# The metrics a scaling analysis can fit (`ScalingConfig.metrics`), as a pattern and in words.
ANALYSABLE = re.compile(rf"{TEST_ACC}|{TEST_LOSS}|{_FEWSHOT.pattern}")
ANALYSABLE_TEXT = f"{TEST_ACC}, {TEST_LOSS} or fewshot/<dataset>/<k>shot"


def on_split(split: str, quantity: str) -> str:
    """A metric's name from its split and kind: "test", "acc" -> "test/acc"."""
    return f"{split}/{quantity}"


def fewshot(dataset: str, shots: int) -> str:
    return f"fewshot/{dataset}/{shots}shot"


def spread(name: str) -> str:
    """The name of a mean metric's spread over seeds: "fewshot/x/10shot" -> "fewshot/x/10shot_std"."""
    return f"{name}_std"


def finetune(dataset: str) -> str:
    return f"finetune/{dataset}/test/acc"


def is_fewshot(name: str) -> bool:
    """A mean few-shot accuracy (not its `_std` spread)."""
    return bool(_FEWSHOT.fullmatch(name))


def fewshot_label(name: str) -> str:
    """A few-shot metric's label, "fewshot/mnist_5k/10shot" -> "mnist_5k/10shot" (how a legend names it)."""
    return name.removeprefix("fewshot/")


def vtab(task: str) -> str:
    """VTAB-1k test accuracy of a task, or of "mean" / a group."""
    return f"vtab/{task}/test/acc"


def imagenet_eval(name: str) -> str:
    """An ImageNet evaluation's accuracy metric: "real" | "v2" | "objectnet" -> its name."""
    return f"{name}/acc"


def is_accuracy(name: str) -> bool:
    return name.endswith("/acc") or bool(_FEWSHOT.fullmatch(name))


def error(name: str, value: float | None) -> float:
    """The error a metric's value stands for (NaN when missing): 1 - accuracy, or the loss itself."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return 1.0 - float(value) if is_accuracy(name) else float(value)


def sort_key(name: str) -> tuple:
    """Analysable metrics in report order: test accuracy, test loss, then few-shot by dataset and shots."""
    m = _FEWSHOT.fullmatch(name)
    if m:
        return (2, m["dataset"], int(m["shots"]))
    return (0 if name == TEST_ACC else 1, name, 0)


def title(name: str) -> str:
    """How reports name the error of a metric: "test error", "10-shot error, mnist_5k", ..."""
    if m := _FEWSHOT.fullmatch(name):
        return f"{m['shots']}-shot error, {m['dataset']}"
    if m := _FINETUNE.fullmatch(name):
        return f"fine-tuning error, {m['dataset']}"
    if m := _VTAB.fullmatch(name):
        return f"VTAB-1k error, {m['task']}"
    if m := _IMAGENET_EVAL.fullmatch(name):
        return {"real": "ImageNet-ReaL error", "v2": "ImageNet-v2 error", "objectnet": "ObjectNet error"}[m["eval"]]
    split, _, quantity = name.partition("/")
    return f"{split} error" if quantity == "acc" else name.replace("/", " ")


def error_of(row: dict, metric: str) -> float:
    """A run's (row's) error for an analysable `metric` (1 - accuracy, or the loss); NaN when it lacks it."""
    if not ANALYSABLE.fullmatch(metric):
        raise ValueError(f"metric {metric!r} is not analysable; accepted: {ANALYSABLE_TEXT}")
    return error(metric, row.get(metric))
