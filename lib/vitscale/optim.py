"""Optimizers and learning-rate schedules of "Scaling Vision Transformers".

Everything is a small composable optax transformation (big_vision style):

  clip_by_global_norm -> scale_by_<rule> -> decoupled weight decay by path
  -> scale_by_learning_rate(schedule)

so the final update of a parameter `p` with multiplier `mult` is
`-lr(t) * (u + weight_decay * mult * p)`. Weight decay is "decoupled": it is
added after clipping and after the Adafactor/Adam normalisation, but it *is*
scaled by the learning rate (the paper's head wd 3.0 / body wd 0.03 only make
sense that way). Note that big_vision scales wd by the schedule's shape but not
by the base lr; our `weight_decay` is therefore relative to the base lr.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vitscale import config

__all__ = [
    "DEFAULT_WD_RULES",
    "OPTIMIZERS",
    "SCHEDULES",
    "FactoredRMSState",
    "add_decayed_weights_by_path",
    "cooldown_branch_schedule",
    "ema_in_dtype",
    "make_optimizer",
    "make_schedule",
    "param_path",
    "scale_by_path",
    "scale_by_factored_second_moment",
    "scale_by_paper_adafactor",
    "state_bytes_per_param",
    "wd_multipliers",
]

SCHEDULES: tuple[str, ...] = get_args(config.Schedule)  # the names the parameter schemas accept
OPTIMIZERS: tuple[str, ...] = get_args(config.Optimizer)
FACTOR_RULES: tuple[str, ...] = ("trailing", "largest")

# (regex, multiplier): the first regex that `re.search`es the '/'-joined path
# wins. Paper: decoupled head wd 3.0, body kernels 0.03, everything else 0
# (biases, LayerNorm scales, position embedding, cls token, MAP probe).
DEFAULT_WD_RULES: tuple[tuple[str, float], ...] = (
    ("^head/kernel$", 3.0),
    ("kernel$", 0.03),
    (".*", 0.0),
)

WdRules = Sequence[tuple[str, float]]


# ----------------------------------------------------------------------------
# Argument validation helpers.
# ----------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_int(name: str, value: Any, minimum: int) -> int:
    """Returns `value` as int, raising ValueError naming `name` if invalid."""
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: expected an integer >= {minimum}.")
    return int(value)


def _check_float(
    name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False
) -> float:
    """Returns `value` as float if it lies in the given interval."""
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not (isinstance(value, bool))
    if ok:
        v = float(value)
        ok = math.isfinite(v)
        ok = ok and (v > lo if lo_open else v >= lo)
        ok = ok and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = ("(" if lo_open else "[") + f"{lo}, {hi}" + (")" if hi_open else "]")
        raise ValueError(f"{name}={value!r} is invalid: expected a finite number in {interval}.")
    return float(value)


# ----------------------------------------------------------------------------
# Learning-rate schedules.
# ----------------------------------------------------------------------------


def make_schedule(
    kind: str,
    base_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    timescale: float = 10_000,
    cooldown_steps: int = 0,
    end_fraction: float = 0.0,
) -> optax.Schedule:
    """Returns lr(t) = base * warmup(t) * decay(t) * cooldown(t) (float32).

    warmup(t) = min(1, t/warmup) (1 if warmup == 0);
    cooldown(t) = clip((T - t)/cooldown, 0, 1) (1 if cooldown == 0), for any kind;
    decay(t) is, with progress p = clip((t - warmup)/(T - warmup), 0, 1):
      rsqrt:    1/sqrt(1 + max(t - warmup, 0)/timescale)   (the paper's)
      cosine:   e + (1 - e) * (1 + cos(pi p))/2            (e = end_fraction)
      linear:   e + (1 - e) * (1 - p)
      constant: 1
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind={kind!r} is not a known schedule; accepted kinds: {SCHEDULES}.")
    base = _check_float("base_lr", base_lr, 0.0)
    total = _check_int("total_steps", total_steps, 1)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    cooldown = _check_int("cooldown_steps", cooldown_steps, 0)
    tau = _check_float("timescale", timescale, 0.0, lo_open=True)
    end = _check_float("end_fraction", end_fraction, 0.0, 1.0)
    if warmup > total:
        raise ValueError(f"warmup_steps={warmup} is invalid: must be <= total_steps={total}.")
    if warmup + cooldown > total:
        raise ValueError(
            f"cooldown_steps={cooldown} is invalid: warmup_steps + cooldown_steps "
            f"= {warmup + cooldown} must be <= total_steps={total}."
        )
    decay_len = float(max(total - warmup, 1))

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        t = jnp.asarray(step, jnp.float32)
        if kind == "rsqrt":
            decay = jax.lax.rsqrt(1.0 + jnp.maximum(t - warmup, 0.0) / tau)
        elif kind in ("cosine", "linear"):
            p = jnp.clip((t - warmup) / decay_len, 0.0, 1.0)
            shape = 0.5 * (1.0 + jnp.cos(jnp.pi * p)) if kind == "cosine" else 1.0 - p
            decay = end + (1.0 - end) * shape
        else:
            decay = jnp.ones_like(t)
        lr = base * decay
        if warmup:
            lr = lr * jnp.minimum(1.0, t / warmup)
        if cooldown:
            lr = lr * jnp.clip((total - t) / cooldown, 0.0, 1.0)
        return lr.astype(jnp.float32)

    return schedule


def cooldown_branch_schedule(
    base_lr: float,
    *,
    branch_start: int,
    cooldown_steps: int,
    warmup_steps: int = 0,
    timescale: float = 10_000,
    kind: str = "rsqrt",
) -> optax.Schedule:
    """A cooldown branched off a long (never-ending) rsqrt run at `branch_start`.

    Defined as `make_schedule(kind, ..., total_steps=branch_start +
    cooldown_steps, cooldown_steps=cooldown_steps)`: identical to the long run
    for t <= branch_start (the ramp (T - t)/k >= 1 there), then the long run's
    lr(t) times a linear ramp to 0 at T (the rsqrt keeps decaying underneath
    the ramp, as in big_vision), so a single long run can be cooled down at
    several points to get several "finished" models cheaply.
    """
    if kind not in ("rsqrt", "constant"):
        raise ValueError(
            f"kind={kind!r} cannot be branched (its shape depends on the total "
            f"length); accepted kinds: ('rsqrt', 'constant')."
        )
    start = _check_int("branch_start", branch_start, 0)
    cooldown = _check_int("cooldown_steps", cooldown_steps, 1)
    warmup = _check_int("warmup_steps", warmup_steps, 0)
    if warmup > start:
        raise ValueError(
            f"branch_start={start} is invalid: must be >= warmup_steps={warmup} (branch after the warmup)."
        )
    return make_schedule(
        kind, base_lr, total_steps=start + cooldown, warmup_steps=warmup, timescale=timescale, cooldown_steps=cooldown
    )


# ----------------------------------------------------------------------------
# Weight decay by parameter path.
# ----------------------------------------------------------------------------


def param_path(key_path: jax.tree_util.KeyPath) -> str:
    """'/'-joined parameter name, e.g. 'Transformer/encoder_norm/scale'."""
    return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def _compile_rules(rules: WdRules) -> list[tuple[re.Pattern[str], float]]:
    """Validates (regex, multiplier) pairs and compiles the regexes."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise ValueError(f"wd_rules={rules!r} is invalid: expected a sequence of (regex, multiplier) pairs.")
    compiled = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"wd_rules[{i}]={rule!r} is invalid: expected a (regex, multiplier) pair.")
        pattern, mult = rule
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ValueError(f"wd_rules[{i}] regex {pattern!r} is invalid: {e}.") from e
        compiled.append((regex, _check_float(f"wd_rules[{i}] multiplier", mult, 0.0)))
    return compiled


def _rule_index(path: str, compiled) -> int | None:
    """Index of the first rule whose regex matches `path` (None if none)."""
    for i, (regex, _) in enumerate(compiled):
        if regex.search(path):
            return i
    return None


def wd_multipliers(params: Any, rules: WdRules = DEFAULT_WD_RULES) -> Any:
    """Pytree (like `params`) of python-float wd multipliers: first match wins.

    Paths are '/'-joined keys of `params` itself (pass the `params` collection,
    not `{'params': ...}`); a parameter matched by no rule gets 0.0.
    """
    compiled = _compile_rules(rules)

    def mult(path, _):
        i = _rule_index(param_path(path), compiled)
        return 0.0 if i is None else compiled[i][1]

    return jax.tree_util.tree_map_with_path(mult, params)


def scale_by_path(rules: WdRules = ()) -> optax.GradientTransformation:
    """Multiplies each update by its path's multiplier (first matching rule; 1 where none matches):
    per-layer learning rates (muP's, vitscale.mup), applied before weight decay so lr x wd stays."""
    compiled = _compile_rules(rules)

    def update_fn(updates, state, params=None):
        del params

        def one(path, u):
            i = _rule_index(param_path(path), compiled)
            return u if i is None or compiled[i][1] == 1.0 else u * jnp.asarray(compiled[i][1], u.dtype)

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def add_decayed_weights_by_path(
    weight_decay: float | jax.Array, rules: WdRules = DEFAULT_WD_RULES
) -> optax.GradientTransformation:
    """Adds `weight_decay * mult(path) * p` to the updates (decoupled wd).

    One masked `optax.add_decayed_weights` per rule with a non-zero multiplier
    (big_vision style); masks are recomputed from the tree paths (static).
    """
    # An array (one copy's value in a group's vmapped update, vitscale.stacked) is checked upstream.
    wd = weight_decay if isinstance(weight_decay, jax.Array) else _check_float("weight_decay", weight_decay, 0.0)
    compiled = _compile_rules(rules)
    txs = []
    for i, (_, mult) in enumerate(compiled):
        if mult == 0.0 or (not isinstance(wd, jax.Array) and wd == 0.0):
            continue

        def mask_fn(tree, i=i):
            return jax.tree_util.tree_map_with_path(lambda path, _: _rule_index(param_path(path), compiled) == i, tree)

        txs.append(optax.masked(optax.add_decayed_weights(wd * mult), mask_fn))
    return optax.chain(*txs) if txs else optax.identity()


# ----------------------------------------------------------------------------
# The paper's Adafactor variant.
# ----------------------------------------------------------------------------


class FactoredRMSState(NamedTuple):
    """Step count and per-leaf second-moment statistics (placeholders: (1,))."""

    count: jax.Array  # int32, number of updates done so far.
    v_row: Any  # Mean of g^2 over the column axis (factored leaves).
    v_col: Any  # Mean of g^2 over the row axis (factored leaves).
    v: Any  # Full second moment (unfactored leaves).


def _factored_axes(shape: tuple[int, ...], min_dim: int, rule: str) -> tuple[int, int] | None:
    """(row_axis, col_axis) to factor over, or None for a full second moment."""
    if len(shape) < 2:
        return None
    if rule == "trailing":
        axes = (len(shape) - 2, len(shape) - 1)
    else:  # "largest": optax/big_vision rule (two largest dims, stable order).
        order = sorted(range(len(shape)), key=lambda a: shape[a])
        axes = (order[-2], order[-1])
    if min(shape[axes[0]], shape[axes[1]]) < min_dim:
        return None
    return axes


def scale_by_factored_second_moment(
    min_dim_size_to_factor: int = 32,
    decay_rate: float = 0.8,
    beta2_cap: float = 0.999,
    eps: float = 1e-30,
    factor_rule: str = "trailing",
) -> optax.GradientTransformation:
    """u = g / sqrt(v_hat), v_hat an Adafactor (factored) EMA of g^2 + eps.

    beta2(t) = min(beta2_cap, 1 - t^-decay_rate), t = 1-based step. A leaf is
    factored over its two trailing dims if both are >= min_dim_size_to_factor
    (leading dims, e.g. a scanned depth axis, are kept); rows/cols keep the mean
    of g^2 over the other axis and v_hat = outer(row, col) / mean(row). Stats
    are float32. `factor_rule="largest"` instead factors the two largest dims,
    as optax.scale_by_factored_rms (and hence big_vision) does.
    """
    min_dim = _check_int("min_dim_size_to_factor", min_dim_size_to_factor, 1)
    _check_float("decay_rate", decay_rate, 0.0, lo_open=True)
    cap = _check_float("beta2_cap", beta2_cap, 0.0, 1.0, hi_open=True)
    _check_float("eps", eps, 0.0)
    if factor_rule not in FACTOR_RULES:
        raise ValueError(f"factor_rule={factor_rule!r} is invalid; accepted: {FACTOR_RULES}.")
    placeholder = lambda: jnp.zeros((1,), jnp.float32)

    def init_fn(params):
        def stats(p):
            axes = _factored_axes(p.shape, min_dim, factor_rule)
            if axes is None:
                return placeholder(), placeholder(), jnp.zeros(p.shape, jnp.float32)
            r, c = axes
            row = tuple(d for a, d in enumerate(p.shape) if a != c)
            col = tuple(d for a, d in enumerate(p.shape) if a != r)
            return jnp.zeros(row, jnp.float32), jnp.zeros(col, jnp.float32), (placeholder())

        out = jax.tree.map(stats, params)
        pick = lambda k: jax.tree.map(lambda _, o: o[k], params, out)
        return FactoredRMSState(jnp.zeros([], jnp.int32), pick(0), pick(1), pick(2))

    def update_fn(updates, state, params=None):
        del params
        t = (state.count + 1).astype(jnp.float32)
        beta2 = jnp.minimum(cap, 1.0 - t ** (-decay_rate))

        def one(g, v_row, v_col, v):
            g32 = g.astype(jnp.float32)
            g2 = jnp.square(g32) + eps
            axes = _factored_axes(g.shape, min_dim, factor_rule)
            if axes is None:
                v = beta2 * v + (1.0 - beta2) * g2
                return (g32 * jax.lax.rsqrt(v)).astype(g.dtype), v_row, v_col, v
            r, c = axes
            v_row = beta2 * v_row + (1.0 - beta2) * jnp.mean(g2, axis=c)
            v_col = beta2 * v_col + (1.0 - beta2) * jnp.mean(g2, axis=r)
            r_in_row = r if r < c else r - 1  # Row axis inside the reduced v_row.
            row_mean = jnp.mean(v_row, axis=r_in_row, keepdims=True)
            row_factor = jax.lax.rsqrt(v_row / row_mean)
            col_factor = jax.lax.rsqrt(v_col)
            u = g32 * jnp.expand_dims(row_factor, c) * jnp.expand_dims(col_factor, r)
            return u.astype(g.dtype), v_row, v_col, v

        out = jax.tree.map(one, updates, state.v_row, state.v_col, state.v)
        pick = lambda k: jax.tree.map(lambda _, o: o[k], updates, out)
        new_state = FactoredRMSState(optax.safe_increment(state.count), pick(1), pick(2), pick(3))
        return pick(0), new_state

    return optax.GradientTransformation(init_fn, update_fn)


class EmaInDtypeState(NamedTuple):
    """The (not debiased) moving average, stored in reduced precision."""

    mu: Any


def ema_in_dtype(decay: float, dtype: Any = jnp.bfloat16) -> optax.GradientTransformation:
    """m = decay*m + (1-decay)*u computed in f32, output in f32, stored in dtype.

    Unlike optax.ema(accumulator_dtype=bf16), whose `decay * m` is computed (and
    rounded) in bf16, only the stored state is rounded; no debiasing.
    """
    dt = _dtype("dtype", dtype)

    def init_fn(params):
        return EmaInDtypeState(jax.tree.map(lambda p: jnp.zeros(p.shape, dt), params))

    def update_fn(updates, state, params=None):
        del params
        new = jax.tree.map(
            lambda u, m: decay * m.astype(jnp.float32) + (1.0 - decay) * u.astype(jnp.float32), updates, state.mu
        )
        out = jax.tree.map(lambda n, u: n.astype(u.dtype), new, updates)
        return out, EmaInDtypeState(jax.tree.map(lambda n: n.astype(dt), new))

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_paper_adafactor(
    min_dim_size_to_factor: int = 32,
    decay_rate: float = 0.8,
    beta2_cap: float = 0.999,
    eps: float = 1e-30,
    clipping_threshold: float | None = None,
    momentum: float | None = 0.9,
    momentum_dtype: Any = jnp.bfloat16,
    factor_rule: str = "trailing",
) -> optax.GradientTransformation:
    """The paper's Adafactor: factored RMS scaling, optional RMS update clip, and
    a non-debiased half-precision momentum; no parameter-scale relative lr.

    See `ema_in_dtype` for the momentum (f32 arithmetic, stored rounded).
    """
    txs = [scale_by_factored_second_moment(min_dim_size_to_factor, decay_rate, beta2_cap, eps, factor_rule)]
    if clipping_threshold is not None:
        txs.append(optax.clip_by_block_rms(_check_float("clipping_threshold", clipping_threshold, 0.0, lo_open=True)))
    if momentum:
        b1 = _check_float("momentum", momentum, 0.0, 1.0, hi_open=True)
        txs.append(ema_in_dtype(b1, _dtype("momentum_dtype", momentum_dtype)))
    return optax.chain(*txs)


# ----------------------------------------------------------------------------
# Full optimizers.
# ----------------------------------------------------------------------------


def _dtype(name: str, value: Any) -> jnp.dtype:
    """Canonical floating dtype for `value` ('bfloat16', jnp.float32, ...)."""
    try:
        dt = jnp.dtype(value)
    except TypeError as e:
        raise ValueError(
            f"{name}={value!r} is not a dtype; expected a floating dtype such as 'bfloat16' or 'float32'."
        ) from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{name}={value!r} is invalid: expected a floating dtype such as 'bfloat16' or 'float32'.")
    return dt


def make_optimizer(
    name: str,
    schedule: optax.ScalarOrSchedule,
    *,
    weight_decay: float | jax.Array = 1.0,
    wd_rules: WdRules = DEFAULT_WD_RULES,
    grad_clip_norm: float | None = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    momentum: float = 0.9,
    clip_update_rms: float | None = None,
    mu_dtype: Any = "bfloat16",
    lr_rules: WdRules = (),
    eps_scale: float = 1.0,
) -> optax.GradientTransformation:
    """Builds clip_by_global_norm -> scale_by_<name> -> lr multipliers by path -> wd by path -> -lr(t).

    `lr_rules`: (regex, multiplier) per-layer learning rates (the update, not the decay, is scaled);
    `eps_scale`: times Adam's epsilon 1e-8 (Adafactor's 1e-30 on g^2: its square), as muP asks.

    adafactor: the paper's variant (momentum b1, beta2 capped at b2, momentum in
    mu_dtype, optional update RMS clip `clip_update_rms`); adam/adamw (same):
    Adam(b1, b2) with first moment in mu_dtype; sgd: momentum (trace in mu_dtype,
    0 = plain SGD). Weight decay is `weight_decay * wd_multipliers(wd_rules)`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"name={name!r} is not a known optimizer; accepted names: {OPTIMIZERS}.")
    if not (callable(schedule) or isinstance(schedule, (int, float))):
        raise ValueError(
            f"schedule={schedule!r} is invalid: expected an optax.Schedule (callable) or a float learning rate."
        )
    b1 = _check_float("b1", b1, 0.0, 1.0, hi_open=True)
    b2 = _check_float("b2", b2, 0.0, 1.0, hi_open=True)
    momentum = _check_float("momentum", momentum, 0.0, 1.0, hi_open=True)
    mu_dt = _dtype("mu_dtype", mu_dtype)
    txs = []
    if grad_clip_norm:
        txs.append(optax.clip_by_global_norm(_check_float("grad_clip_norm", grad_clip_norm, 0.0, lo_open=True)))
    elif grad_clip_norm is not None:
        _check_float("grad_clip_norm", grad_clip_norm, 0.0)  # Rejects negatives.

    if clip_update_rms is not None:
        _check_float("clip_update_rms", clip_update_rms, 0.0, lo_open=True)
    eps_scale = _check_float("eps_scale", eps_scale, 0.0, lo_open=True)
    normalise = _scale_by(name, b1, b2, momentum, clip_update_rms, mu_dt, eps_scale)
    txs += [normalise] if normalise is not None else []  # plain SGD: nothing (the state keeps its structure)
    if any(mult != 1.0 for _, mult in _compile_rules(lr_rules)):  # none: the state keeps its old structure
        txs.append(scale_by_path(lr_rules))
    txs.append(add_decayed_weights_by_path(weight_decay, wd_rules))
    txs.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*txs)


def _scale_by(name, b1, b2, momentum, clip_update_rms, mu_dt, eps_scale) -> optax.GradientTransformation | None:
    """make_optimizer's normalisation step: the paper's Adafactor, Adam, or SGD's momentum (or nothing)."""
    if name == "adafactor":
        return scale_by_paper_adafactor(
            eps=1e-30 * eps_scale**2,
            beta2_cap=b2,
            clipping_threshold=clip_update_rms,
            momentum=b1,
            momentum_dtype=mu_dt,
        )
    if clip_update_rms is not None:
        raise ValueError(
            f"clip_update_rms={clip_update_rms!r} is only supported by name='adafactor', not name={name!r}."
        )
    if name in ("adam", "adamw"):
        return optax.scale_by_adam(b1=b1, b2=b2, eps=1e-8 * eps_scale, mu_dtype=mu_dt)
    return optax.trace(decay=momentum, accumulator_dtype=mu_dt) if momentum else None


def state_bytes_per_param(optimizer: optax.GradientTransformation, params_shapes: Any) -> float:
    """Optimizer-state bytes per parameter, via eval_shape (nothing allocated).

    `params_shapes` may hold arrays or jax.ShapeDtypeStruct leaves; every array
    leaf of the state (including step counters) is counted.
    """
    state = jax.eval_shape(optimizer.init, params_shapes)
    n_params = sum(math.prod(p.shape) for p in jax.tree.leaves(params_shapes))
    if n_params == 0:
        raise ValueError("params_shapes has no parameters (0 elements).")
    n_bytes = sum(math.prod(s.shape) * jnp.dtype(s.dtype).itemsize for s in jax.tree.leaves(state))
    return n_bytes / n_params
