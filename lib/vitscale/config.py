"""Typed parameters: one pydantic schema per notebook kind, and the table of kinds.

Schemas are values. Building one checks types, ranges and what follows from the values alone
(patch vs image size, width vs heads, schedule lengths, regular expressions); it imports neither
JAX nor TensorFlow and reads no file. What needs disk, datasets or devices is each program's
`check(cfg)`, called once before any compute. Errors are `ConfigError`s: a list of (field, message).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from vitscale import metrics
from vitscale.data import ops
from vitscale.models.variants import decode_variant

Optimizer = Literal["adafactor", "adam", "adamw", "sgd"]
Schedule = Literal["rsqrt", "cosine", "linear", "constant"]
Input = Literal["auto", "memory", "stream"]  # how a split is read (data.sources): auto chooses by its size and shapes


def _pp(v: list[str] | None) -> list[str] | None:
    """A pp_* list, each op checked against the ops' grammar (data.ops; no TensorFlow needed)."""
    if v is not None:
        if not v:
            raise ValueError("must list at least one op, or be null for the default")
        for text in v:
            ops.parse(text)
    return v


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with a parameter: the field (dotted path) and what is wrong with it."""

    field: str
    message: str


class ConfigError(ValueError):
    """Parameters that cannot run; carries every problem found, each naming its field."""

    def __init__(self, problems: list[Problem] | str, source: str | Path | None = None):
        self.problems = [Problem("parameters", problems)] if isinstance(problems, str) else list(problems)
        self.source = str(source) if source is not None else None
        super().__init__(str(self))

    def lines(self) -> list[str]:
        """`<file>: <field>: <message>` per problem (the file when known)."""
        where = f"{self.source}: " if self.source else ""
        return [f"{where}{p.field}: {p.message}" for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def with_source(self, source: str | Path) -> ConfigError:
        return ConfigError(self.problems, source)

    def _render_traceback_(self) -> list[str]:
        """How IPython shows it in a notebook: the problems, no traceback (bad input, not a bug)."""
        return [f"ConfigError: {len(self.problems)} problem(s) with the parameters", *self.lines()]


def _problems_text(problems: list[Problem]) -> str:
    """Cross-field problems as the text of one pydantic ValueError (one `field: message` per line)."""
    return "\n".join(f"{p.field}: {p.message}" for p in problems)


class _Schema(BaseModel):
    # Frozen values; unknown names refused; NaN and infinity refused for every float field.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


def _positive_unique(values: list, what: str) -> list:
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat, got {values}")
    return values


def _mesh(v: list[int]) -> list[int]:
    if len(v) != 2 or any(n == 0 or n < -1 for n in v) or v.count(-1) > 1:
        raise ValueError(f"mesh must be [data, fsdp] with positive sizes and at most one -1 (got {v})")
    return v


class CooldownBranch(_Schema):
    """A run that leaves the main rsqrt run at `start` and cools down linearly over `steps`."""

    start: int = Field(gt=0)
    steps: int = Field(gt=0)


class Shape(NamedTuple):
    """A model's resolved shape: its variant's, with any overrides applied."""

    patch_size: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int


class ModelSpec(_Schema):
    """The model a set of weights belongs to: what decides its parameters' names and shapes (and gelu,
    its numerics). One schema for pretraining (PretrainConfig is a ModelSpec: flat keys in its files),
    `random_model`, `pretrained_model`, export's .yaml and the weights reader (vitscale.pretrained)."""

    image_size: int = Field(default=28, gt=0)
    channels: int = Field(default=1, ge=1, le=3)
    variant: str = "Pico/4"  # NAME/PATCH, see vitscale.models.vit.VARIANTS
    width: int | None = Field(default=None, gt=0)  # overrides of the variant's shape
    depth: int | None = Field(default=None, gt=0)
    mlp_dim: int | None = Field(default=None, gt=0)
    num_heads: int | None = Field(default=None, gt=0)
    pool_type: Literal["gap", "tok", "map", "none"] = "gap"
    posemb: Literal["learn", "sincos2d"] = "learn"
    scan: bool = False  # one compiled block scanned over depth
    representation_size: int | None = Field(default=None, gt=0)  # tanh layer `pre_logits` (original ViT)
    gelu: Literal["tanh", "erf"] = "tanh"  # tanh: flax's approximation (big_vision); erf: exact (timm's nn.GELU)
    # How init, forward multipliers and per-layer rates scale with width (vitscale.mup): "standard", or "mup"
    # (Tensor Programs V) relative to a model of width `base_width`, where muP equals the standard model.
    parametrization: Literal["standard", "mup"] = "standard"
    base_width: int | None = Field(default=None, gt=0)  # mup: the width muP equals the standard model at
    base_head_dim: int | None = Field(default=None, gt=0)  # mup: None = head_dim * base_width / width
    base_depth: int | None = Field(default=None, gt=0)  # mup: CompleteP residual scaling base_depth/depth; None: off

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: str) -> str:
        decode_variant(v)
        return v

    @model_validator(mode="after")
    def _shapes(self) -> ModelSpec:
        problems = self.shape_problems()
        if problems:
            raise ValueError(_problems_text(problems))
        return self

    def shape_problems(self) -> list[Problem]:
        """What does not fit together: the image size vs the patch, the width vs the heads and posemb."""
        v, problems = self.shape, []
        if self.image_size % v.patch_size:
            problems.append(
                Problem(
                    "image_size",
                    f"{self.image_size} is not divisible by the patch size {v.patch_size} of variant {self.variant!r}",
                )
            )
        if v.width % v.num_heads:
            problems.append(Problem("num_heads", f"width {v.width} is not divisible by num_heads {v.num_heads}"))
        if self.posemb == "sincos2d" and v.width % 4:
            problems.append(Problem("posemb", f"'sincos2d' needs a width divisible by 4, got width {v.width}"))
        return problems + self._parametrization_problems()

    def _parametrization_problems(self) -> list[Problem]:
        """muP needs its base width, and applies to the encoder's own attention (not a MAP head's)."""
        mup_fields = [k for k in ("base_width", "base_head_dim", "base_depth") if getattr(self, k) is not None]
        if self.parametrization == "standard":
            return [Problem(k, "is only used with parametrization 'mup'") for k in mup_fields]
        problems = []
        if self.base_width is None:
            problems.append(Problem("base_width", "parametrization 'mup' needs a base width (a positive integer)"))
        if self.pool_type == "map":
            problems.append(Problem("pool_type", "'map' has no muP rule here; use gap, tok or none with 'mup'"))
        return problems

    @property
    def shape(self) -> Shape:
        """The variant's shape with any explicit overrides applied."""
        v = decode_variant(self.variant)
        return Shape(
            v.patch_size,
            self.width or v.width,
            self.depth or v.depth,
            self.mlp_dim or v.mlp_dim,
            self.num_heads or v.num_heads,
        )

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.shape.patch_size

    def model_spec(self) -> ModelSpec:
        """Just the model (of a PretrainConfig: its model fields)."""
        return ModelSpec(**{k: getattr(self, k) for k in ModelSpec.model_fields})

    def changed(self) -> dict[str, Any]:
        """The fields that differ from the defaults, the variant always and first (export's `pretrained_model`)."""
        return {"variant": self.variant, **self.model_spec().model_dump(mode="json", exclude_defaults=True)}


class PretrainConfig(ModelSpec):
    """Parameters of a pretraining run (notebooks/pretrain.ipynb). The model fields (image_size,
    channels, variant, shape overrides, pool_type, posemb, scan, representation_size, gelu) are
    ModelSpec's, flat in the file."""

    name: str = "pretrain"  # run name, shown in reports
    # --- data
    dataset: str = "fashion_mnist"  # TFDS name; offline: fashion_mnist, mnist_5k, sklearn_digits
    data_dir: str | None = None  # TFDS data_dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
    train_split: str = "train"
    test_split: str = "test"
    train_examples: int | None = Field(default=None, gt=0)  # data axis: first n of train_split
    # Held out from the end of train_split, never trained on: val/loss and val/acc at every evaluation,
    # what a sweep's `search:` chooses its best run by (the test split never chooses anything). 0: none.
    val_examples: int = Field(default=0, ge=0)
    crop_padding: int = Field(default=2, ge=0)  # random crop: reflect-pad then crop back
    flip: bool = True  # random horizontal flip
    # How splits are read (vitscale.data.sources): "memory" decodes a split into one array; "stream" reads the
    # prepared array_record files by index and decodes example by example; "auto" streams splits whose
    # images vary in shape or would not fit (data.sources.MEMORY_LIMIT_BYTES).
    input: Input = "auto"
    # Preprocessing as op lists (data.ops), e.g. ["decode", "inception_crop(224)", "flip_lr", "value_range(-1, 1)"].
    # None: today's pipeline from image_size, channels, crop_padding and flip (data.ops.default_ops).
    pp_train: list[str] | None = None
    pp_eval: list[str] | None = None  # test split and few-shot features; None: resize to image_size
    # --- model (beyond ModelSpec: how it trains, not its weights' shapes)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    head_bias_init: float | None = None  # None: 0 for softmax_xent, -10 for sigmoid_xent (paper)
    remat: bool = False  # recompute each block's activations in the backward pass
    # Precision policy. "bfloat16": matmul inputs and activations in bf16; parameters, LayerNorm
    # statistics, the attention softmax, the head and the loss in float32 (vitscale.models.vit).
    dtype: Literal["float32", "bfloat16"] = "float32"
    init_from: str | None = None  # a released or exported .npz (vitscale.pretrained) as the step-0 weights
    # --- optimisation
    loss: Literal["softmax_xent", "sigmoid_xent"] = "softmax_xent"
    optimizer: Optimizer = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1.0, ge=0)  # times the per-path multipliers in wd_rules
    wd_rules: list[tuple[str, float]] | None = None  # (regex over param path, multiplier); None: paper's
    # (regex over param path, learning-rate multiplier), first match wins; None: the parametrization's
    # (standard: 1 everywhere; mup: vitscale.mup.MUP_LR_RULES at this width). Weight decay keeps lr x wd.
    lr_rules: list[tuple[str, float]] | None = None
    grad_clip_norm: float | None = Field(default=1.0, gt=0)
    b2: float = Field(default=0.999, gt=0, lt=1)  # Adam's second-moment decay
    schedule: Schedule = "cosine"
    warmup_steps: int = Field(default=100, ge=0)
    timescale: int = Field(default=10_000, gt=0)  # rsqrt
    cooldown_steps: int = Field(default=0, ge=0)  # linear cooldown at the end (rsqrt, constant)
    cooldown_branches: list[CooldownBranch] = []  # extra runs branching off the rsqrt run
    total_steps: int = Field(default=1000, gt=0)
    batch_size: int = Field(default=128, gt=0)  # global batch, split over devices and hosts
    seed: int = Field(default=0, ge=0)
    # --- evaluation, logging, checkpoints
    # Test-split evaluation period: a forward pass is ~1/3 of a step, so evaluation costs about
    # test images / (3 x eval_every x batch_size) of a run (5% for the demo).
    eval_every: int = Field(default=500, gt=0)
    eval_batch_size: int = Field(default=512, gt=0)  # rounded up to a multiple of the device count
    log_every: int = Field(default=25, gt=0)
    fewshot_datasets: list[str] = []  # e.g. ["mnist_5k", "sklearn_digits"]; evaluated every fewshot_every
    fewshot_shots: list[int] = [1, 5, 10, 25]
    fewshot_seeds: int = Field(default=3, gt=0)
    fewshot_every: int | None = Field(default=None, gt=0)  # None: at eval_every
    checkpoint_every: int | None = Field(default=None, gt=0)  # None: at eval_every
    keep_checkpoints: int = Field(default=2, gt=0)  # the last few ...
    keep_every: int | None = Field(default=None, gt=0)  # ... and every M-th step
    # --- devices
    mesh: list[int] = [-1, 1]  # (data, fsdp) axis sizes; -1 takes the remaining devices
    # Independent forward/backward passes per device whose gradients are averaged (same update).
    # "auto": 4 or 2 on a CPU (faster there: backend.default_chains), 1 on GPU/TPU.
    grad_chains: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    # Each device's matmul peak in FLOP/s for the MFU meter (perf/mfu, summary.json's mfu). None: from
    # vitscale.perf's table by device kind and dtype, or on a CPU a matmul measured once per host.
    peak_flops: float | None = Field(default=None, gt=0)
    coordinator_address: str | None = None  # multi-host: host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None

    @field_validator("fewshot_shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "shot counts")

    @field_validator("pp_train", "pp_eval")
    @classmethod
    def _pp_ops(cls, v: list[str] | None) -> list[str] | None:
        return _pp(v)

    @field_validator("wd_rules", "lr_rules")
    @classmethod
    def _wd_rules(cls, v: list[tuple[str, float]] | None) -> list[tuple[str, float]] | None:
        for pattern, mult in v or []:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"regular expression {pattern!r} does not compile: {e}") from None
            if mult < 0:
                raise ValueError(f"multiplier of {pattern!r} must be >= 0, got {mult}")
        return v

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: list[int]) -> list[int]:
        return _mesh(v)

    @model_validator(mode="after")
    def _shapes(self) -> PretrainConfig:  # ModelSpec's, overridden: its problems and the schedule's in one list
        problems = self.shape_problems()
        if self.warmup_steps + self.cooldown_steps > self.total_steps:
            problems.append(
                Problem(
                    "warmup_steps",
                    f"warmup_steps + cooldown_steps ({self.warmup_steps} + "
                    f"{self.cooldown_steps}) exceed total_steps {self.total_steps}",
                )
            )
        for i, b in enumerate(self.cooldown_branches):
            if self.schedule != "rsqrt":
                problems.append(Problem("cooldown_branches", f"need schedule 'rsqrt', got {self.schedule!r}"))
                break
            if not self.warmup_steps <= b.start < self.total_steps:
                problems.append(
                    Problem(
                        f"cooldown_branches.{i}.start",
                        f"{b.start} must lie in [warmup_steps {self.warmup_steps}, total_steps {self.total_steps})",
                    )
                )
        if problems:
            raise ValueError(_problems_text(problems))
        return self

    @classmethod
    def from_model(cls, model: ModelSpec) -> PretrainConfig:
        """Pretraining's defaults with `model`'s fields (a random init's or a weights file's model)."""
        return cls(**model.model_dump())

    def train_split_name(self) -> str:
        """The TFDS split the run trains on: train_split, or its first train_examples, without the
        last val_examples."""
        if self.train_examples:
            return f"{self.train_split}[:{self.train_examples}]"
        return f"{self.train_split}[:-{self.val_examples}]" if self.val_examples else self.train_split

    def val_split_name(self) -> str | None:
        """The TFDS split of the held-out validation images (the last val_examples of train_split)."""
        return f"{self.train_split}[-{self.val_examples}:]" if self.val_examples else None


RANDOM = "random"  # the value of TransferConfig.pretrained that asks for an untrained model
NPZ = ".npz"  # TransferConfig.pretrained ending so names a weights file (vitscale.pretrained), not a run folder


class TransferConfig(_Schema):
    """Parameters of a transfer run (notebooks/transfer.ipynb): few-shot linear evaluation and
    fine-tuning of a pretrained ViT, optionally next to a random init of the same shape."""

    name: str = "transfer"  # run name, shown in reports
    # --- the model
    pretrained: str  # a pretraining run folder (absolute, or relative to the study folder, e.g.
    #                  outputs/demo), or "random": an untrained model as `random_model` describes
    random_model: ModelSpec | None = None  # with pretrained "random": its model (None: ModelSpec's defaults)
    pretrained_model: ModelSpec | None = None  # with pretrained a .npz file: its model, the variant at least
    #   (README "Released weights"; `vitscale export` writes it beside the file)
    compare_random: bool = False  # also run everything from a random init of the same shape (the baseline)
    data_dir: str | None = None  # TFDS data_dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
    input: Input = "auto"  # how downstream splits are read, as PretrainConfig.input
    # --- few-shot linear evaluation (frozen pre_logits, closed-form ridge; at the pretraining resolution)
    fewshot_datasets: list[str] = ["mnist_5k", "sklearn_digits"]
    fewshot_shots: list[int] = [1, 5, 10, 25]  # images per class
    fewshot_seeds: int = Field(default=3, gt=0)  # draws of the few-shot set per shot count
    fewshot_l2: float = Field(default=2.0**10, gt=0)  # ridge regularisation (the paper's 2^10)
    # --- fine-tuning (SGD momentum, no weight decay, clipping at 1, cosine with warmup)
    finetune_datasets: list[str] = ["mnist_5k"]  # [] = few-shot only
    finetune_resolution: int | None = Field(default=None, gt=0)  # None: the pretraining resolution
    finetune_steps: int = Field(default=500, gt=0)
    # Fine-tuning preprocessing (data.ops); None: resize to the fine-tuning resolution, no augmentation.
    pp_finetune: list[str] | None = None
    pp_finetune_eval: list[str] | None = None  # held-out and test splits; None: resize likewise
    finetune_batch_size: int = Field(default=128, gt=0)  # global batch, split over devices
    lr_grid: list[float] = [0.01, 0.03, 0.1]  # picked by held-out accuracy
    holdout_fraction: float = Field(default=0.02, gt=0, lt=1)  # of the training split, for picking the lr
    retrain: bool = True  # then train on the whole training split with the best lr (paper); False: keep
    #                       the best grid run (trained on the other 98%)
    warmup_steps: int = Field(default=50, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    grad_clip_norm: float = Field(default=1.0, gt=0)  # global gradient norm
    eval_every: int = Field(default=100, gt=0)  # held-out (grid) or test (final run) evaluation period
    eval_batch_size: int = Field(default=512, gt=0)
    log_every: int = Field(default=25, gt=0)
    seed: int = Field(default=0, ge=0)  # fine-tuning batches and the random init
    mesh: list[int] = [-1, 1]  # (data, fsdp) axis sizes; -1 takes the remaining devices
    peak_flops: float | None = Field(default=None, gt=0)  # per device, for MFU; None: vitscale.perf's
    # --- VTAB-1k (data/vtab.py, google-research/task_adaptation's definition): per task and seed,
    #     fine-tune on train800 over vtab_steps x vtab_lr_grid, pick on val200, retrain on train800val200,
    #     score test. Fine-tuning as above (SGD momentum, cosine, finetune_resolution, finetune_batch_size).
    #     Its splits are read into memory whatever `input` says (test splits at finetune_resolution at most).
    vtab_tasks: list[str] = []  # task names (TASKS in data/vtab.py), "vtab-1k" for all 19,
    #                             or standin:<dataset> (an offline dataset in the same protocol, not VTAB)
    vtab_steps: list[int] = [500, 2500]  # AugReg's grid (Steiner et al. 2021)
    vtab_lr_grid: list[float] = [0.001, 0.003, 0.01, 0.03]  # AugReg's grid
    vtab_seeds: int = Field(default=1, gt=0)  # fine-tuning runs per task (seeds 0..n-1)
    vtab_warmup_steps: int = Field(default=0, ge=0)  # linear warmup of each VTAB run (< the smallest vtab_steps)
    # --- ImageNet robustness (transfer/imagenet.py's VARIANTS: real, v2, objectnet; names checked there, so
    #     that a variant is one entry): an ImageNet-1k classifier, the model fine-tuned on imagenet2012 here
    #     (in finetune_datasets), else `pretrained` itself when its head has 1000 classes, scored with the
    #     fine-tuning's evaluation preprocessing (pp_finetune_eval)
    imagenet_evals: list[str] = []
    imagenet_v2_variant: Literal["matched-frequency", "threshold-0.7", "topimages"] = "matched-frequency"
    objectnet_dir: str | None = None  # the ObjectNet folder as distributed (objectnet-1.0/ with images/, mappings/)

    @field_validator("vtab_steps")
    @classmethod
    def _vtab_steps(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "step counts")

    @field_validator("vtab_lr_grid")
    @classmethod
    def _vtab_lrs(cls, v: list[float]) -> list[float]:
        return _positive_unique(v, "learning rates")

    @field_validator("fewshot_shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "shot counts")

    @field_validator("pp_finetune", "pp_finetune_eval")
    @classmethod
    def _pp_ops(cls, v: list[str] | None) -> list[str] | None:
        return _pp(v)

    @field_validator("lr_grid")
    @classmethod
    def _lr_grid(cls, v: list[float]) -> list[float]:
        return _positive_unique(v, "learning rates")

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: list[int]) -> list[int]:
        return _mesh(v)

    @field_validator("random_model", "pretrained_model", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v == {} else v  # params.yaml files written before ModelSpec hold {} for "not given"

    @model_validator(mode="after")
    def _static(self) -> TransferConfig:
        problems = []
        if self.pretrained == RANDOM and self.compare_random:
            problems.append(
                Problem(
                    "compare_random",
                    "compares a pretrained run with a random init; with pretrained 'random' set it to false",
                )
            )
        npz = self.pretrained.endswith(NPZ)
        if npz and (self.pretrained_model is None or "variant" not in self.pretrained_model.model_fields_set):
            problems.append(Problem("pretrained_model.variant", f"is needed to read {self.pretrained!r}"))
        if self.pretrained_model is not None and not npz:
            problems.append(
                Problem("pretrained_model", "is only used with a .npz file as pretrained; a run folder has params.yaml")
            )
        if self.random_model is not None and self.pretrained != RANDOM:
            problems.append(
                Problem(
                    "random_model",
                    f"is only used with pretrained 'random'; the model of run "
                    f"{self.pretrained!r} comes from its params.yaml",
                )
            )
        if self.vtab_tasks and self.vtab_warmup_steps >= min(self.vtab_steps):
            problems.append(
                Problem("vtab_warmup_steps", f"{self.vtab_warmup_steps} is not below the smallest vtab_steps")
            )
        if "objectnet" in self.imagenet_evals and not self.objectnet_dir:
            problems.append(
                Problem("objectnet_dir", "imagenet_evals has objectnet: name the ObjectNet folder (objectnet-1.0/)")
            )
        if self.imagenet_evals and "imagenet2012" not in self.finetune_datasets and not self.pretrained.endswith(NPZ):
            problems.append(
                Problem(
                    "imagenet_evals",
                    "needs an ImageNet-1k classifier: add imagenet2012 to finetune_datasets, or name ImageNet "
                    "fine-tuned weights (a .npz with a 1000-class head) as pretrained",
                )
            )
        if self.warmup_steps > self.finetune_steps:
            problems.append(
                Problem("warmup_steps", f"{self.warmup_steps} exceeds finetune_steps {self.finetune_steps}")
            )
        if problems:
            raise ValueError(_problems_text(problems))
        return self


class ScalingConfig(_Schema):
    """Parameters of a scaling analysis (notebooks/scaling_analysis.ipynb)."""

    sweep_dir: str  # a sweep's output folder
    metrics: list[str] | None = None  # e.g. ["test/acc", "fewshot/mnist_5k/10shot"]; None: all found
    x: Literal["train_flops", "images_seen", "device_seconds", "num_params"] = "train_flops"  # compute axis
    n_bootstrap: int = Field(default=200, ge=0)  # bootstrap resamples of the frontier
    # Training FLOPs the allocation section plans for (compute-optimal N, D, predicted error); None:
    # 1x, 4x and 16x the largest run's compute.
    budgets: list[PositiveFloat] | None = None
    # Repeated data: "none" leaves runs beyond 5 epochs out of the joint law; "muennighoff" fits them with the
    # effective data of Muennighoff et al. 2023 (scaling.repetition) and reports R_D*.
    repetition: Literal["none", "muennighoff"] = "none"
    # Compute cuts of the backtests (fit below, predict above; x for the frontier laws, training FLOPs for the
    # joint law); None: cuts holding out the top 20%, 35% and 50% of the runs where enough runs stay below.
    backtest_cuts: list[PositiveFloat] | None = None

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str] | None) -> list[str] | None:
        bad = [m for m in v or [] if not metrics.ANALYSABLE.fullmatch(m)]
        if bad:
            raise ValueError(f"metrics {bad} are not {metrics.ANALYSABLE_TEXT}")
        return v


class SlurmResources(_Schema):
    """What each run of a sweep asks SLURM for (the sweep file's `slurm:` mapping): one job per run,
    one process per node; a run on several nodes joins one JAX job from SLURM's environment."""

    partition: str | None = None
    time_min: int = Field(default=60, gt=0)  # wall-clock limit of one run's job, minutes
    nodes: int = Field(default=1, gt=0)  # nodes per run (multi-host runs: one JAX process per node)
    gpus_per_node: int = Field(default=0, ge=0)
    cpus_per_task: int | None = Field(default=None, gt=0)
    mem_gb: float | None = Field(default=None, gt=0)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = []  # shell lines before the run, e.g. ["module load cuda", "source .venv/bin/activate"]


# The notebook kinds: notebooks/<kind>.ipynb is parametrised by schema KINDS[kind].
KINDS: dict[str, type[_Schema]] = {
    "pretrain": PretrainConfig,
    "transfer": TransferConfig,
    "scaling_analysis": ScalingConfig,
}
RUN_KINDS = ("pretrain", "transfer")  # those `vitscale run parameters/<kind>/<name>.yaml` executes


# ----------------------------------------------------------------------------- building and showing
def _schema_at(schema: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The nested schema an error location points into (e.g. ModelSpec for ("pretrained_model",)), if any."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = schema.model_fields.get(part) if isinstance(schema, type) else None
        if field is None:
            return None
        found = [
            t for t in (field.annotation, *_args(field.annotation)) if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not found:
            return None
        schema = found[0]
    return schema


def _args(annotation: Any) -> tuple:
    """Every type inside `annotation` (X | None, list[X], ...)."""
    return tuple(a for arg in get_args(annotation) for a in (arg, *_args(arg)))


EXCERPT_CHARS = 80  # the most of an offending value an error message quotes
MESSAGE_CHARS = 1000  # the most of one problem's message (a validator's text may quote its value)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """repr(value) as an error message quotes it: at most `limit` characters, a longer one cut with
    "…", never building the whole text of a huge value (a string or list of a million items)."""
    if isinstance(value, str | bytes | list | tuple) and len(value) > limit:
        value = value[:limit]
    elif isinstance(value, dict) and len(value) > limit:
        value = dict(list(value.items())[:limit])
    return cut(repr(value), limit)


def cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    """`text` (a message) at most `limit` characters, a longer one cut with "…"."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _problems(e: ValidationError, schema: type[BaseModel]) -> list[Problem]:
    out = []
    for err in e.errors():
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            accepted = ", ".join(sorted((_schema_at(schema, loc[:-1]) or schema).model_fields))
            out.append(Problem(field, f"unknown parameter (got {excerpt(err.get('input'))}; accepted: {accepted})"))
        elif err["type"] == "value_error" and _schema_at(schema, loc) is not None:  # a model validator's lines
            for line in msg.splitlines():
                name, _, text = line.partition(": ")
                out.append(Problem(f"{field}.{name}" if field else name, cut(text)))
        else:
            if "input" in err and err["type"] != "value_error":
                msg += f" (got {excerpt(err['input'])})"
            out.append(Problem(field or "parameters", cut(msg)))
    return out


def validate(schema: type[BaseModel], params: dict[str, Any], source: str | Path | None = None) -> Any:
    """Build `schema` from a dict; a ConfigError naming each bad field otherwise."""
    if not isinstance(params, dict):
        problem = Problem("parameters", f"must be a mapping of names to values (got {excerpt(params)})")
        raise ConfigError([problem], source)
    try:
        return schema(**params)
    except ValidationError as e:
        raise ConfigError(_problems(e, schema), source) from None


def resolved(schema: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """`params` (e.g. an older params.yaml) as `schema` resolves them today, so a run made before a
    parameter existed still compares equal to the same run now. Invalid ones come back unchanged."""
    try:
        return validate(schema, params).model_dump(mode="json")
    except ConfigError:
        return params


# ----------------------------------------------------------------------------- reading YAML files
# Every YAML file vitscale reads (parameter and sweep files, a run's params.yaml) goes through
# `load_yaml`, whose limits hold before any value is built or validated: a file a collaborator sends
# cannot exhaust memory, and a key written twice cannot silently win.
MAX_YAML_BYTES = 1_000_000  # a parameter or sweep file is a few kB; cpu_scaling.yaml, the largest, 3 kB
MAX_YAML_NODES = 100_000  # values once anchors' aliases are expanded (billion laughs: 9**9 and more)


class _YamlRefused(yaml.YAMLError):
    """A YAML file within YAML's grammar that vitscale does not read: (field, message)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _key(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    """A mapping key as the loader builds it (so `1` and `0x1` are one key), or None if not a scalar."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:merge":
        return None
    try:
        key = loader.construct_object(node, deep=True)
        hash(key)
    except (yaml.YAMLError, TypeError, ValueError):
        return None
    return key


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a mapping naming one key twice (the key, and both lines)."""

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = _key(self, key_node)
            if key is None:
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _YamlRefused(
                    str(key), f"given twice, at lines {seen[key]} and {line}; keep one (YAML keeps the last silently)"
                )
            seen[key] = line
        return node


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """How many values `node` holds once every alias is expanded, counted without expanding (each
    shared node once); stops past `limit`. A node that contains itself is refused."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_:
            raise _YamlRefused(f"line {n.start_mark.line + 1}", "an anchor that contains its own alias")
        open_.add(id(n))
        children = [] if isinstance(n, yaml.ScalarNode) else n.value
        total = 1
        for child in children:
            for c in child if isinstance(child, tuple) else (child,):
                total = min(total + size(c), limit + 1)
        open_.discard(id(n))
        sizes[id(n)] = total
        return total

    return size(node)


def expect_path(path: str | Path, expected: str, folder: bool | None = None, field: str = "path") -> Path:
    """`path`, or a ConfigError naming it and what was `expected` there: it does not exist, or it is a
    file where a folder is expected (`folder`) or a folder where a file is (`folder=False`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([Problem(field, f"does not exist (expected {expected})")], path)
    if folder is True and not path.is_dir():
        raise ConfigError([Problem(field, f"is not a folder, expected {expected}")], path)
    if folder is False and path.is_dir():
        raise ConfigError([Problem(field, f"is a directory, expected {expected}")], path)
    return path


def _read_yaml_text(path: Path, what: str) -> str:
    """The text of a YAML file that exists, is a file, is at most MAX_YAML_BYTES and is UTF-8."""
    expect_path(path, what, folder=False, field="file")
    with path.open("rb") as f:
        data = f.read(MAX_YAML_BYTES + 1)
    if len(data) > MAX_YAML_BYTES:
        size = path.stat().st_size
        raise ConfigError(
            [Problem("file", f"is {size:,} bytes; a YAML file vitscale reads may hold at most {MAX_YAML_BYTES:,}")],
            path,
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([Problem("file", f"is not UTF-8 text (byte {e.start}: {e.reason})")], path) from None


def _parse_yaml(text: str) -> Any:
    """One YAML document, its size checked with aliases expanded before any value is built."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_NODES) > MAX_YAML_NODES:
            raise _YamlRefused(
                "file", f"holds more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(path: str | Path, what: str = "a YAML parameter file") -> dict[str, Any]:
    """Read a parameter file (a YAML mapping) within the limits above; errors name the file, and the
    line and column, or the key written twice and its two lines."""
    path = Path(path)
    text = _read_yaml_text(path, what)
    try:
        params = _parse_yaml(text) or {}  # an empty file (or a bare `0`, `[]`): no parameters, as before
    except _YamlRefused as e:
        raise ConfigError([Problem(e.field, e.message)], path) from None
    except RecursionError:
        raise ConfigError([Problem("file", "is nested too deeply to read")], path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "file"
        why = " ".join(str(x) for x in (getattr(e, "problem", None) or e, getattr(e, "context", None) or "") if x)
        raise ConfigError([Problem(where, f"not valid YAML: {cut(why.strip())}")], path) from None
    if not isinstance(params, dict):
        raise ConfigError(
            [Problem("file", f"must be a mapping of names to values (got {type(params).__name__})")], path
        )
    return params


def describe(cfg: BaseModel) -> str:
    """The parameters that differ from the schema's defaults, as YAML (what the notebook shows)."""
    fields = type(cfg).model_fields
    changed = {
        k: v for k, v in cfg.model_dump(mode="json").items() if v != fields[k].get_default(call_default_factory=True)
    }
    return yaml.safe_dump(changed, sort_keys=False) or "(all defaults)\n"


def dump(cfg: BaseModel) -> str:
    """Resolved parameters as YAML (what params.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
