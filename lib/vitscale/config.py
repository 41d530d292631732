"""Typed, validated parameters: one schema per notebook kind.

Every check runs before any compute: unknown names, wrong types, unknown datasets, variants,
optimizers or schedules, shapes that do not fit (patch vs image size, width vs heads), a batch
that does not split over the devices. Errors name the field, the value and what is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """Parameters that cannot run; the message names every offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False, frozen=False)


def _known_datasets(names: list[str]) -> list[str]:
    from vitscale import data

    for name in names:
        data.check_dataset_name(name)
    return names


def _positive_unique(values: list, what: str) -> list:
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be positive, got {values}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat, got {values}")
    return values


class CooldownBranch(_Strict):
    """A run that leaves the main rsqrt run at `start` and cools down linearly over `steps`."""

    start: int = Field(gt=0)
    steps: int = Field(gt=0)


class PretrainConfig(_Strict):
    """Parameters of a pretraining run (notebooks/pretrain.ipynb)."""

    name: str = "pretrain"  # run name, shown in reports
    # --- data
    dataset: str = "fashion_mnist"  # TFDS name; offline: fashion_mnist, mnist_5k, sklearn_digits
    data_dir: str | None = None  # TFDS data_dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
    train_split: str = "train"
    test_split: str = "test"
    train_examples: int | None = Field(default=None, gt=0)  # data axis: first n of train_split
    image_size: int = Field(default=28, gt=0)
    channels: int = Field(default=1, ge=1, le=3)
    crop_padding: int = Field(default=2, ge=0)  # random crop: reflect-pad then crop back
    flip: bool = True  # random horizontal flip
    # --- model
    variant: str = "Pico/4"  # NAME/PATCH, see vitscale.models.vit.VARIANTS
    width: int | None = Field(default=None, gt=0)  # overrides of the variant's shape
    depth: int | None = Field(default=None, gt=0)
    mlp_dim: int | None = Field(default=None, gt=0)
    num_heads: int | None = Field(default=None, gt=0)
    pool_type: Literal["gap", "tok", "map", "none"] = "gap"
    posemb: Literal["learn", "sincos2d"] = "learn"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    head_bias_init: float | None = None  # None: 0 for softmax_xent, -10 for sigmoid_xent (paper)
    remat: bool = False  # recompute each block's activations in the backward pass
    scan: bool = False  # one compiled block scanned over depth
    dtype: Literal["float32", "bfloat16"] = "float32"  # activations; parameters stay float32
    # --- optimisation
    loss: Literal["softmax_xent", "sigmoid_xent"] = "softmax_xent"
    optimizer: str = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1.0, ge=0)  # times the per-path multipliers in wd_rules
    wd_rules: list[tuple[str, float]] | None = None  # (regex over param path, multiplier); None: paper's
    grad_clip_norm: float | None = Field(default=1.0, gt=0)
    b2: float = Field(default=0.999, gt=0, lt=1)  # Adam's second-moment decay
    schedule: str = "cosine"
    warmup_steps: int = Field(default=100, ge=0)
    timescale: int = Field(default=10_000, gt=0)  # rsqrt
    cooldown_steps: int = Field(default=0, ge=0)  # linear cooldown at the end (rsqrt, constant)
    cooldown_branches: list[CooldownBranch] = []  # extra runs branching off the rsqrt run
    total_steps: int = Field(default=1000, gt=0)
    batch_size: int = Field(default=128, gt=0)  # global batch, split over devices and hosts
    seed: int = Field(default=0, ge=0)
    # --- evaluation, logging, checkpoints
    # Test-split evaluation period. A forward pass is ~1/3 of a training step, so evaluation costs about
    # test images / (3 x eval_every x batch_size) of a run: 10,000 / (3 x 500 x 128) = 5% (measured: 4.4%).
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
    # "auto": 4 or 2 on a CPU (faster there: train.default_chains), 1 on GPU/TPU.
    grad_chains: Annotated[int, Field(gt=0)] | Literal["auto"] = "auto"
    coordinator_address: str | None = None  # multi-host: host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        from vitscale import data

        data.check_dataset_name(v)
        return v

    @field_validator("fewshot_datasets")
    @classmethod
    def _fewshot_datasets(cls, v: list[str]) -> list[str]:
        return _known_datasets(v)

    @field_validator("fewshot_shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "shot counts")

    @field_validator("variant")
    @classmethod
    def _variant(cls, v: str) -> str:
        from vitscale.models.vit import decode_variant

        decode_variant(v)
        return v

    @field_validator("optimizer")
    @classmethod
    def _optimizer(cls, v: str) -> str:
        from vitscale.optim import OPTIMIZERS

        if v not in OPTIMIZERS:
            raise ValueError(f"optimizer {v!r} is not one of {list(OPTIMIZERS)}")
        return v

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        from vitscale.optim import SCHEDULES

        if v not in SCHEDULES:
            raise ValueError(f"schedule {v!r} is not one of {list(SCHEDULES)}")
        return v

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: list[int]) -> list[int]:
        if len(v) != 2 or any(n == 0 or n < -1 for n in v) or v.count(-1) > 1:
            raise ValueError(f"mesh must be [data, fsdp] with positive sizes and at most one -1, got {v}")
        return v

    @model_validator(mode="after")
    def _shapes(self) -> PretrainConfig:
        v, problems = self.model_shape(), []
        if self.image_size % v["patch_size"]:
            problems.append(
                f"image_size {self.image_size} is not divisible by the patch size {v['patch_size']} of "
                f"variant {self.variant!r}"
            )
        if v["width"] % v["num_heads"]:
            problems.append(f"width {v['width']} is not divisible by num_heads {v['num_heads']}")
        if self.posemb == "sincos2d" and v["width"] % 4:
            problems.append(f"posemb 'sincos2d' needs width divisible by 4, got width {v['width']}")
        if self.warmup_steps > self.total_steps:
            problems.append(f"warmup_steps {self.warmup_steps} exceeds total_steps {self.total_steps}")
        if self.warmup_steps + self.cooldown_steps > self.total_steps:
            problems.append(
                f"warmup_steps + cooldown_steps ({self.warmup_steps} + {self.cooldown_steps}) exceed "
                f"total_steps {self.total_steps}"
            )
        for b in self.cooldown_branches:
            if self.schedule != "rsqrt":
                problems.append(f"cooldown_branches need schedule 'rsqrt', got {self.schedule!r}")
            if not self.warmup_steps <= b.start < self.total_steps:
                problems.append(
                    f"cooldown branch start {b.start} must lie in [warmup_steps {self.warmup_steps}, "
                    f"total_steps {self.total_steps})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def model_shape(self) -> dict[str, int]:
        """The variant's shape with any explicit overrides applied."""
        from vitscale.models.vit import decode_variant

        v = decode_variant(self.variant)
        return dict(
            patch_size=v.patch_size,
            width=self.width or v.width,
            depth=self.depth or v.depth,
            mlp_dim=self.mlp_dim or v.mlp_dim,
            num_heads=self.num_heads or v.num_heads,
        )

    def check_devices(self, device_count: int, process_count: int = 1) -> None:
        """Batch sizes must split over the devices of the mesh (checked before any compute)."""
        from vitscale.sharding import mesh_shape

        data, fsdp = mesh_shape(self.mesh, device_count)
        if self.batch_size % device_count:
            raise ConfigError(
                f"batch_size {self.batch_size} is not divisible by the device count "
                f"{device_count}; use a multiple of {device_count}"
            )
        if self.batch_size % process_count:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by the process count {process_count}")
        per_device = self.batch_size // device_count
        if self.grad_chains != "auto" and per_device % self.grad_chains:
            raise ConfigError(
                f"grad_chains {self.grad_chains} does not divide the batch per device ({self.batch_size} "
                f"/ {device_count} devices = {per_device}); use 'auto' or a divisor of {per_device}"
            )


def _format(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        field = ".".join(str(p) for p in err["loc"]) or "checks"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown parameter (value {err.get('input')!r})"
        elif "input" in err and err["type"] != "value_error":
            msg += f" (got {err['input']!r})"
        lines.append(f"  {field}: {msg}")
    return "invalid parameters:\n" + "\n".join(lines)


def validate(schema: type[BaseModel], params: dict[str, Any]) -> Any:
    """Build `schema` from a dict; a readable ConfigError naming each bad field otherwise."""
    try:
        return schema(**params)
    except ValidationError as e:
        fields = ", ".join(sorted(schema.model_fields))
        raise ConfigError(_format(e) + f"\naccepted parameters: {fields}") from None


def resolved(schema: type[BaseModel], params: dict[str, Any]) -> dict[str, Any]:
    """`params` (e.g. a run folder's params.yaml) as `schema` resolves them today: fields added since
    the file was written take their defaults, so a run made before a new parameter existed still
    compares equal to the same run now. Parameters that no longer validate come back unchanged."""
    try:
        return validate(schema, params).model_dump(mode="json")
    except ConfigError:
        return params


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a parameter file (a YAML mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"parameter file {path} does not exist")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"parameter file {path} must be a mapping of names to values")
    return params


def describe(cfg: BaseModel) -> str:
    """The parameters that differ from the schema's defaults, as YAML (the notebook shows this;
    params.yaml in the run folder has them all)."""
    changed = {
        k: v
        for k, v in cfg.model_dump(mode="json").items()
        if v != type(cfg).model_fields[k].get_default(call_default_factory=True)
    }
    return yaml.safe_dump(changed, sort_keys=False) or "(all defaults)\n"


def dump(cfg: BaseModel) -> str:
    """Resolved parameters as YAML (what params.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


class TransferConfig(_Strict):
    """Parameters of a transfer run (notebooks/transfer.ipynb): few-shot linear evaluation and
    fine-tuning of a pretrained ViT, optionally next to a random init of the same shape.

    References are checked here, before any compute: the run folder (params.yaml and a checkpoint),
    dataset names, per-class image counts against the shot counts, the fine-tuning resolution
    against the model's patch size."""

    name: str = "transfer"  # run name, shown in reports
    # --- the model
    pretrained: str  # a pretraining run folder (absolute, or relative to the repository root, e.g.
    #                  outputs/demo), or "random": an untrained model as `random_model` describes
    random_model: dict[str, Any] = {}  # with pretrained "random": the model as PretrainConfig fields
    #                                    (variant, image_size, channels, pool_type, posemb, ...)
    compare_random: bool = False  # also run everything from a random init of the same shape (the baseline)
    data_dir: str | None = None  # TFDS data_dir; None = $TFDS_DATA_DIR or ~/tensorflow_datasets
    # --- few-shot linear evaluation (frozen pre_logits, closed-form ridge; at the pretraining resolution)
    fewshot_datasets: list[str] = ["mnist_5k", "sklearn_digits"]
    fewshot_shots: list[int] = [1, 5, 10, 25]  # images per class
    fewshot_seeds: int = Field(default=3, gt=0)  # draws of the few-shot set per shot count
    fewshot_l2: float = Field(default=2.0**10, gt=0)  # ridge regularisation (the paper's 2^10)
    # --- fine-tuning (SGD momentum, no weight decay, clipping at 1, cosine with warmup)
    finetune_datasets: list[str] = ["mnist_5k"]  # [] = few-shot only
    finetune_resolution: int | None = Field(default=None, gt=0)  # None: the pretraining resolution
    finetune_steps: int = Field(default=500, gt=0)
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

    @field_validator("fewshot_datasets", "finetune_datasets")
    @classmethod
    def _datasets(cls, v: list[str]) -> list[str]:
        return _known_datasets(v)

    @field_validator("fewshot_shots")
    @classmethod
    def _shots(cls, v: list[int]) -> list[int]:
        return _positive_unique(v, "shot counts")

    @field_validator("lr_grid")
    @classmethod
    def _lr_grid(cls, v: list[float]) -> list[float]:
        return _positive_unique(v, "learning rates")

    @field_validator("mesh")
    @classmethod
    def _mesh(cls, v: list[int]) -> list[int]:
        return PretrainConfig._mesh(v)

    @model_validator(mode="after")
    def _references(self) -> TransferConfig:
        import numpy as np

        from vitscale import data, fewshot

        pre = self.pretrain_config()  # raises naming the run folder or random_model
        if self.pretrained == "random" and self.compare_random:
            raise ValueError(
                "compare_random compares a pretrained run with a random init; with pretrained 'random' set it to false"
            )
        problems = []
        shape = pre.model_shape()
        res = self.resolution()
        if res % shape["patch_size"]:
            problems.append(
                f"finetune_resolution {res} is not divisible by the patch size {shape['patch_size']} of "
                f"the pretrained model (variant {pre.variant!r})"
            )
        if self.warmup_steps > self.finetune_steps:
            problems.append(f"warmup_steps {self.warmup_steps} exceeds finetune_steps {self.finetune_steps}")
        k = max(self.fewshot_shots)
        for name in self.fewshot_datasets:
            pool_split, _ = fewshot.downstream_splits(name)
            try:
                pool = data.load_split(name, pool_split, self.data_dir)
            except (FileNotFoundError, ValueError) as e:
                problems.append(f"fewshot_datasets: {name!r} cannot be read: {e}")
                continue
            counts = np.bincount(pool.labels, minlength=pool.num_classes)
            short = {c: int(n) for c, n in enumerate(counts) if n < k}
            if short:
                problems.append(
                    f"fewshot_datasets: {name!r} has fewer than {k} images (the largest of fewshot_shots "
                    f"{self.fewshot_shots}) in these classes of its {pool_split!r} split: {short}"
                )
        for name in self.finetune_datasets:
            try:
                n = data.num_examples(name, "train", self.data_dir)
            except (KeyError, FileNotFoundError, ValueError) as e:
                problems.append(f"finetune_datasets: {name!r} has no readable 'train' split ({e})")
                continue
            if round(n * self.holdout_fraction) < 1 or n - round(n * self.holdout_fraction) < 1:
                problems.append(
                    f"holdout_fraction {self.holdout_fraction} of the {n} training images of {name!r} "
                    "leaves an empty held-out or training part"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def pretrain_config(self) -> PretrainConfig:
        """The pretrained model's parameters: the run folder's params.yaml, or `random_model`."""
        if self.pretrained == "random":
            try:
                return PretrainConfig(**self.random_model)
            except ValidationError as e:
                raise ValueError("random_model: " + _format(e).removeprefix("invalid parameters:\n").strip()) from None
        if self.random_model:
            raise ValueError(
                f"random_model {self.random_model} is only used with pretrained 'random'; the model of "
                f"run {self.pretrained!r} comes from its params.yaml"
            )
        from vitscale import finetune

        return finetune.read_pretrain_config(finetune.find_run(self.pretrained))

    def resolution(self) -> int:
        """The fine-tuning resolution: finetune_resolution, or the pretraining one."""
        return self.finetune_resolution or self.pretrain_config().image_size

    def check_devices(self, device_count: int, process_count: int = 1) -> None:
        """The fine-tuning batch must split over the devices of the mesh (checked before any compute)."""
        from vitscale.sharding import mesh_shape

        mesh_shape(self.mesh, device_count)
        if self.finetune_batch_size % device_count:
            raise ConfigError(
                f"finetune_batch_size {self.finetune_batch_size} is not divisible by the device count "
                f"{device_count}; use a multiple of {device_count}"
            )
        if self.finetune_batch_size % process_count:
            raise ConfigError(
                f"finetune_batch_size {self.finetune_batch_size} is not divisible by the process count {process_count}"
            )


class ScalingConfig(_Strict):
    """Parameters of a scaling analysis (notebooks/scaling_analysis.ipynb)."""

    sweep_dir: str  # a sweep's output folder
    metrics: list[str] | None = None  # e.g. ["test_error", "fewshot/mnist_5k/10shot"]; None: all found
    x: Literal["train_flops", "images_seen", "device_seconds", "num_params"] = "train_flops"  # compute axis
    n_bootstrap: int = Field(default=200, ge=0)  # bootstrap resamples of the frontier

    @field_validator("sweep_dir")
    @classmethod
    def _sweep_dir(cls, v: str) -> str:
        if not Path(v).is_dir():
            raise ValueError(f"sweep_dir {v!r} is not a folder (a sweep's output folder, e.g. outputs/cpu_scaling)")
        return v

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, v: list[str] | None) -> list[str] | None:
        pattern = re.compile(r"test_error|test_loss|fewshot/[^/]+/\d+shot|finetune/[^/]+")
        bad = [m for m in v or [] if not pattern.fullmatch(m)]
        if bad:
            raise ValueError(
                f"metrics {bad} are not test_error, test_loss, fewshot/<dataset>/<k>shot or finetune/<dataset>"
            )
        return v
