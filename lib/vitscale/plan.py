"""The planner: from a study (a sweep folder or a CSV of runs) to the compute-optimal model size and
data for a budget, and, for a vitscale sweep, an IsoFLOP sweep file around that optimum.

The fit is the joint law of `scaling.allocation` (Approach 3); the sweep file takes the study's own
recipe (the finished run on the most data), five or more variants of the model family whose sizes
bracket N*, each with the steps that spend the budget (3 x forward FLOPs per image x images seen).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vitscale import config, files, metrics, runs, search
from vitscale.models import flops, vit
from vitscale.scaling import allocation, backtest, repetition, table
from vitscale.scaling.fitting import Bootstrap

#: Sizes in a planned IsoFLOP set.
PLAN_SIZES = 5

#: A planned run must spend the budget within this fraction.
BUDGET_TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class LawSpec:
    """Which joint law a study gives and how it is fitted, the same for `run` and `predict`: the error of
    `metric`, FLOPs C = k N D (None: the study's own k), the `repetition` model (none, muennighoff), and
    `n_bootstrap` resamples for the parameter intervals."""

    metric: str = metrics.TEST_ACC
    k: float | None = None
    repetition: str = "none"
    n_bootstrap: int = 100


DEFAULT_LAW = LawSpec()


def load_points(source: str | Path, *, metric: str = metrics.TEST_ACC, k: float | None = None) -> table.Points:
    """Points of a sweep folder (its runs' and cooldown branches' ends) or of a CSV of runs; a
    ConfigError naming the file, column and row when they cannot be read."""
    source = Path(source)
    if source.is_dir():
        pts = table.from_rows(runs.collect_searched(source)[0], metrics.error_of, metric=metric)
        if len(pts.N) < table.MIN_ROWS:
            raise config.ConfigError(
                [
                    config.Problem(
                        metric, f"{len(pts.N)} finished run(s) carry it; the joint law needs {table.MIN_ROWS}"
                    )
                ],
                source,
            )
        return pts
    config.expect_path(source, "a sweep folder or a CSV of runs", field="source")
    if not source.is_file():
        raise config.ConfigError([config.Problem("source", "is neither a sweep folder nor a CSV file")], source)
    try:
        return table.read_csv(source, k=k)
    except table.TableError as e:
        raise config.ConfigError([config.Problem(e.field, e.message)], source) from None


def load_recipe(sweep_dir: Path) -> dict[str, Any]:
    """The study's recipe: params.yaml of its finished run on the most data (then the longest)."""
    best, key = None, None
    for d in runs.find_runs(sweep_dir):
        if not (d / "summary.json").exists():
            continue
        s = runs.read_json(d / "summary.json")
        if s.get("kind") != "pretrain":
            continue
        kk = (s.get("train_examples") or math.inf, s.get("total_steps", 0), d.name)
        if key is None or kk > key:
            best, key = (d, s), kk
    if best is None:
        raise config.ConfigError([config.Problem("sweep", "no finished pretraining run to take the recipe from")])
    d, s = best
    return {"params": config.load_yaml(d / "params.yaml"), "summary": s, "dir": d}


def recipe_classes(recipe: dict[str, Any]) -> int:
    """Classes of the study's head, as its run recorded them in summary.json; for a run written before
    summaries held them, solved exactly from its recorded parameter count (the head adds width + 1 per
    class), and refused by name when that count does not fit a whole number of classes."""
    s = recipe["summary"]
    if (n := s.get("num_classes")) is not None:
        return int(n)
    one, two = (flops.count_params(_model(recipe["params"], s["variant"], k), _shape(recipe["params"])) for k in (1, 2))
    k = 1 + (s.get("num_params", 0) - one) / (two - one)
    if k >= 1 and k == int(k):
        return int(k)
    raise config.ConfigError(
        [
            config.Problem(
                "num_classes",
                f"{recipe['dir'] / 'summary.json'} does not record the head's class count and its num_params "
                f"{s.get('num_params')} fits no whole number of classes: rerun that run, or add "
                '"num_classes": <classes> to its summary.json',
            )
        ]
    )


def _shape(params: dict[str, Any]) -> tuple[int, int, int]:
    return (params["image_size"], params["image_size"], params["channels"])


def _model(params: dict[str, Any], variant: str, num_classes: int) -> vit.ViT:
    return vit.make_model(
        variant, num_classes, pool_type=params.get("pool_type", "gap"), posemb=params.get("posemb", "learn")
    )


def family(
    params: dict[str, Any], num_classes: int, near: float | None = None, keep: int = PLAN_SIZES + 1
) -> list[dict[str, Any]]:
    """Variants of the table at the study's patch size and input (the `keep` nearest in size to
    `near`, by 12 depth width^2, when given): name, parameters, forward FLOPs; smallest first."""
    patch = vit.decode_variant(params["variant"]).patch_size
    names = list(vit.VARIANTS)
    if near is not None:  # counting parameters traces the model: only for the candidates

        def rough(name: str) -> float:
            w, depth, _, _ = vit.VARIANTS[name]
            return abs(math.log(12 * depth * w * w / near))

        names = sorted(names, key=rough)[:keep]
    out = []
    for name in names:
        variant = f"{name}/{patch}"
        try:
            m = _model(params, variant, num_classes)
        except ValueError:
            continue
        n = flops.count_params(m, _shape(params))
        out.append({"variant": variant, "params": n, "forward_flops": flops.forward_flops(m, _shape(params))})
    return sorted(out, key=lambda v: v["params"])


def isoflop_runs(
    recipe: dict[str, Any], budget: float, n_opt: float, num_classes: int, sizes: int = PLAN_SIZES
) -> tuple[list[dict[str, Any]], list[str]]:
    """The IsoFLOP set: `sizes` variants around N* (nearest in log size), each with total_steps that
    spend `budget` within 1% and the recipe's cooldown fraction. Returns (runs, notes)."""
    params = recipe["params"]
    fam = family(params, num_classes, near=n_opt)
    if len(fam) < sizes:
        raise config.ConfigError([config.Problem("variant", f"the family has {len(fam)} sizes, need {sizes}")])
    i = min(range(len(fam)), key=lambda j: abs(math.log(fam[j]["params"] / n_opt)))
    lo = max(0, min(i - sizes // 2, len(fam) - sizes))
    notes = []
    if i in (0, len(fam) - 1):
        notes.append(f"N* = {n_opt:.3g} lies at the end of the family's sizes: the set is one-sided")
    cool = params.get("cooldown_steps", 0) / params["total_steps"]
    out = []
    for v in fam[lo:]:
        if len(out) == sizes:
            break
        per_step = flops.training(v["forward_flops"], params["batch_size"])
        steps = round(budget / per_step)
        if steps < 1 or abs(steps * per_step - budget) > BUDGET_TOLERANCE * budget:
            notes.append(f"{v['variant']}: the budget is {budget / per_step:.3g} steps, not within 1% of a whole step")
            continue
        run = {"variant": v["variant"], "total_steps": steps, "cooldown_steps": round(cool * steps)}
        run["eval_every"] = min(params.get("eval_every", steps), steps)
        try:
            config.validate(config.PretrainConfig, {**_base(params), **run})
        except config.ConfigError as e:
            notes.append(f"{v['variant']} at {steps} steps: {e}")
            continue
        run["_params"], run["_flops"] = v["params"], steps * per_step
        out.append(run)
    if len(out) < sizes:
        raise config.ConfigError(
            [config.Problem("--budget", f"only {len(out)} sizes can spend {budget:.3g} FLOPs: " + "; ".join(notes))]
        )
    return out, notes


def _base(params: dict[str, Any]) -> dict[str, Any]:
    """The recipe without what is per run: name, the swept shape and length, branches, periods."""
    per_run = ("name", "variant", "total_steps", "cooldown_steps", "eval_every")
    base = {k: v for k, v in params.items() if k not in per_run}
    base["cooldown_branches"] = []
    base["warmup_steps"] = params.get("warmup_steps", 0)
    return base


def rate_of(sweep_dir: Path, recipe: dict[str, Any], planned: list[dict[str, Any]]) -> str:
    """Each planned run's learning rate from the study's rate law (best lr against parameters, fitted on its
    search), written into the runs; returns the line saying which law and parametrization, or why none."""
    param = recipe["params"].get("parametrization", "standard")
    law = runs.collect_searched(sweep_dir)[1]["rate_law"]
    if not isinstance(law, search.RateLaw):
        why = law or "the study has no learning-rate search"
        return f"learning rate: the recipe's lr {recipe['params']['lr']:g} for every size ({why}; {param})"
    for r in planned:
        r["lr"] = float(f"{law.predict(r['_params']):.3g}")
    lo, hi = law.b_interval
    return (
        f"learning rate per run from the study's rate law lr = {law.a:.4g} x N^{law.b:.3g} "
        f"(exponent 95% interval [{lo:.3g}, {hi:.3g}], flat: {law.flat}), assuming the {param} parametrization"
    )


def sweep_text(
    name: str, recipe: dict[str, Any], planned: list[dict[str, Any]], plan: dict[str, Any], study: str, rate: str = ""
) -> str:
    """A sweep file (yaml) of the planned runs, the prediction and the rate rule in its header comments."""
    head = [
        f"# IsoFLOP set planned by `vitscale plan {study} --budget {plan['C']:.4g}`:",
        f"# predicted optimum N* = {plan['N']:.4g} parameters, D* = {plan['D']:.4g} images, "
        f"error {plan['error']:.4g} {_iv(plan.get('error_interval'))}",
        "# runs (variant, parameters, steps, FLOPs): "
        + "; ".join(f"{r['variant']} {r['_params']:,} {r['total_steps']} {r['_flops']:.4g}" for r in planned),
    ] + ([f"# {rate}"] if rate else [])
    runs_ = [{k: v for k, v in r.items() if not k.startswith("_")} for r in planned]
    base = _base(recipe["params"])
    for key in ("eval_every", "checkpoint_every", "keep_every"):
        base.pop(key, None)  # per run (eval_every), or at its default
    if base.get("fewshot_every"):
        base["fewshot_every"] = None  # few-shot at eval_every
    doc = {"name": name, "notebook": "pretrain", "base": base, "runs": runs_}
    return "\n".join(head) + "\n" + yaml.safe_dump(doc, sort_keys=False)


def _iv(iv) -> str:
    return f"[{iv[0]:.3g}, {iv[1]:.3g}]" if iv else ""


def _check_options(source: Path, budget: float, out, unique_data: float | None, repetition_: str) -> None:
    """ConfigError naming the option for a budget or unique-data count that is not a positive number or a
    repetition model not in the list; then for a source that does not exist, or --out with a CSV."""
    problems = []
    if not (budget > 0 and math.isfinite(budget)):
        problems.append(config.Problem("--budget", f"must be a positive number of FLOPs (got {budget})"))
    if unique_data is not None and not (unique_data > 0 and math.isfinite(unique_data)):
        problems.append(config.Problem("--unique-data", f"must be a positive number of items (got {unique_data})"))
    if repetition_ not in repetition.REPETITION:
        problems.append(
            config.Problem("--repetition", f"{repetition_!r} is not one of {', '.join(repetition.REPETITION)}")
        )
    if problems:
        raise config.ConfigError(problems)
    config.expect_path(source, "a sweep folder or a CSV of runs", field="source")
    if out is not None and not source.is_dir():
        raise config.ConfigError([config.Problem("--out", "a sweep file needs a sweep folder (a CSV has no recipe)")])


def _allocate(points: table.Points, budget: float, **kw: Any) -> dict[str, Any]:
    """allocation.allocate, a parameter it cannot serve as a ConfigError naming it."""
    try:
        return allocation.allocate(points, budgets=[budget], **kw)
    except backtest.ForecastError as e:
        raise config.ConfigError([config.Problem(e.field, e.message)]) from None


def _error_text(p: dict[str, Any]) -> str:
    """The predicted error with its prediction interval, the measured coverage, and the parameter interval."""
    cov = p.get("error_interval_coverage")
    measured = "coverage not measured: too few runs" if cov is None else f"{cov:.0%} coverage in backtests"
    level = f"{p['error_interval_level']:.0%}"
    pred = _iv(p.get("error_interval")) or f"[no {level} prediction interval: {p.get('error_interval_note', '')}]"
    param = _iv(p.get("error_parameter_interval")) or "none (no bootstrap)"
    return f"{p['error']:.4g} {pred} ({level} prediction interval, {measured}; parameter interval {param})"


def _repeat_text(p: dict[str, Any]) -> str:
    src = (
        "fitted on this study"
        if p["R_D*_source"] == "fitted"
        else "Muennighoff et al.'s published value: the study cannot fit it"
    )
    return (
        f"under a fixed dataset of {p['unique']:.4g} items the plan repeats it {p['epochs']:.3g} epochs "
        f"(repeated data valued by the data-constrained law, R_D* = {p['R_D*']:.3g}, {src})"
    )


def run(
    source: str | Path,
    budget: float,
    *,
    out: str | Path | None = None,
    law: LawSpec = DEFAULT_LAW,
    max_epochs: float | None = allocation.MAX_EPOCHS,
    unique_data: float | None = None,
) -> dict[str, Any]:
    """Fit the study's `law`, plan `budget` (under a fixed dataset of `unique_data` items when given), and
    for a sweep folder write the IsoFLOP sweep file to `out` (default <study>/plan_<budget>.yaml). Returns
    {"summary", "plan", "text", "sweep_file"}; ConfigError on bad input, before anything is written."""
    source = Path(source)
    _check_options(source, budget, out, unique_data, law.repetition)
    points = load_points(source, metric=law.metric, k=law.k)
    res = _allocate(points, budget, max_epochs=max_epochs, n_bootstrap=law.n_bootstrap, repetition_=law.repetition,
                    unique=unique_data)  # fmt: skip
    s, p = res["summary"], res["summary"]["plans"][0]
    unit = points.data_name.replace("_", " ")
    lines = [
        f"{source}: joint law on {s['n_points']} points"
        + (f" ({s['n_excluded']} data-constrained left out)" if s["n_excluded"] else "")
        + f"; C = {s['k']:.3g} N D",
        f"budget {budget:.4g} FLOPs: N* = {p['N']:.4g} {_iv(p.get('N_interval'))} parameters, "
        f"D* = {p['D']:.4g} {_iv(p.get('D_interval'))} {unit} "
        f"({p['D_per_N']:.3g} {_iv(p.get('D_per_N_interval'))} per parameter); "
        f"predicted {points.error_name} error " + _error_text(p),
        "allocation exponent a (N* ~ C^a): " + s["agreement"],
        s["support"],
    ]
    if unique_data is not None:
        lines.insert(2, _repeat_text(p))
    if not p["determined"]:
        lines.insert(2, "not determined: " + next(n for n in s["notes"] if "beyond any power law" in n))
    sweep_file = None
    if source.is_dir():
        sweep_file = _write_sweep(source, budget, out, p, max_epochs, lines)
    return {"summary": s, "plan": p, "text": "\n".join(lines), "sweep_file": sweep_file, "result": res}


def recommend(source: str | Path, p: dict[str, Any]) -> dict[str, Any]:
    """The next run a study recommends at plan `p` (one of allocation's "plans"): the size of the family
    nearest N* in log parameters, the steps that spend the budget with the study's batch, its images, its
    learning rate (the study's rate law, or the recipe's rate), and the plan's predicted error with both
    intervals and the backtests' coverage. For a sweep folder; the plan's own fields for a CSV."""
    keys = ("C", "N", "D", "error", "error_interval", "error_interval_level", "error_interval_coverage",
            "error_parameter_interval", "extrapolates", "determined")  # fmt: skip
    out: dict[str, Any] = {k: p.get(k) for k in keys}
    source = Path(source)
    if not source.is_dir():
        return out
    recipe = load_recipe(source)
    params = recipe["params"]
    ncls = recipe_classes(recipe)
    v = min(family(params, ncls, near=p["N"], keep=3), key=lambda f: abs(math.log(f["params"] / p["N"])))
    steps = max(1, round(p["C"] / (3 * v["forward_flops"] * params["batch_size"])))
    run = {"_params": v["params"], "lr": params["lr"]}
    rate = rate_of(source, recipe, [run])
    return out | {"variant": v["variant"], "params": v["params"], "total_steps": steps,
                  "images": steps * params["batch_size"], "lr": run["lr"], "rate": rate}  # fmt: skip


def next_run(source: str | Path, allocation: Any) -> dict[str, Any] | None:
    """`recommend` at the largest budget an analysis planned (what the scaling report leads with); None when
    the analysis gave no plan, the plan is not determined, or the study's recipe cannot size it."""
    if not isinstance(allocation, dict) or not allocation["summary"]["plans"][-1].get("determined", True):
        return None
    try:
        return recommend(source, allocation["summary"]["plans"][-1])
    except (config.ConfigError, KeyError, ValueError):  # a recipe without its class count or input shape
        return None  # the report's sentence still gives N* and D*


def _write_sweep(source: Path, budget: float, out, p: dict[str, Any], max_epochs, lines: list[str]) -> Path:
    """The IsoFLOP sweep file of the plan, written; its lines appended to `lines`."""
    recipe = load_recipe(source)
    ncls = recipe_classes(recipe)
    planned, notes = isoflop_runs(recipe, budget, p["N"], ncls)
    rate = rate_of(source, recipe, planned)
    ex = recipe["summary"].get("train_examples")
    if ex and max_epochs is not None and p["D"] / ex > max_epochs:
        notes.append(f"D* is {p['D'] / ex:.3g} epochs of the recipe's {ex:,} images: data-constrained")
    sweep_file = Path(out) if out else source / f"plan_{budget:.3g}.yaml".replace("+", "")
    name = sweep_file.stem.replace(".", "-")
    files.atomic_write_text(sweep_file, sweep_text(name, recipe, planned, p, str(source), rate))
    lines.append(
        f"IsoFLOP sweep ({len(planned)} sizes: "
        + ", ".join(f"{r['variant']} x {r['total_steps']} steps" for r in planned)
        + f"): {sweep_file}; run it with `vitscale sweep {sweep_file}`"
    )
    lines += [rate] + [f"note: {n}" for n in notes]
    return sweep_file


#: Columns of `vitscale predict`'s output table, after the planned runs' own.
PREDICT_COLUMNS = ("predicted", "lower", "upper", "param_lower", "param_upper")

#: Columns added when the planned runs have run (`--runs` is their sweep folder): the closed loop.
ACHIEVED_COLUMNS = ("achieved", "inside")


def read_planned(path: str | Path) -> dict[str, list[float]]:
    """A table of planned runs: `params`, `images_seen`, optionally `unique_images`; ConfigError naming
    the column and row (rows count from 1 after the header) for anything missing or not a positive number."""
    try:
        with open(path, newline="") as f:
            rows = [{(k or "").strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise config.ConfigError([config.Problem("--runs", f"cannot read it as CSV: {e}")], path) from None
    if not rows:
        raise config.ConfigError([config.Problem("--runs", "no planned runs (rows) in it")], path)
    cols = ["params", "images_seen"] + (["unique_images"] if "unique_images" in rows[0] else [])
    out: dict[str, list[float]] = {c: [] for c in cols}
    for i, r in enumerate(rows, 1):
        for c in cols:
            try:
                v = float(r.get(c) or "nan")
            except ValueError:
                v = math.nan
            if not (v > 0 and math.isfinite(v)):
                raise config.ConfigError([config.Problem(c, f"row {i}: {r.get(c)!r} is not a positive number")], path)
            out[c].append(v)
    return out


def read_achieved(folder: Path, metric: str) -> tuple[dict[str, list[float]], list[dict[str, Any]]]:
    """The finished runs of a planned sweep as planned runs (`params`, `images_seen`, `unique_images`) and
    what they reached ({"run", "variant", "achieved"}); cooldown branches are not planned runs."""
    rows = [r for r in runs.collect(folder) if r.get("branch") is None and math.isfinite(metrics.error_of(r, metric))]
    if not rows:
        raise config.ConfigError([config.Problem("--runs", f"no finished run of the folder carries {metric}")], folder)
    rows.sort(key=lambda r: r["num_params"])
    planned = {
        "params": [float(r["num_params"]) for r in rows],
        "images_seen": [float(r["images_seen"]) for r in rows],
        "unique_images": [float(r.get("train_examples") or r["images_seen"]) for r in rows],
    }
    done = [{"run": r["run_id"], "variant": r["variant"], "achieved": metrics.error_of(r, metric)} for r in rows]
    return planned, done


def loop_check(rows: list[dict[str, Any]], done: list[dict[str, Any]]) -> dict[str, Any]:
    """The closed loop over planned runs that have run (smallest first): how many landed inside their
    prediction intervals, and the size the law predicted best (lowest predicted error) against the size
    that was best, with how many ladder steps apart they are."""
    inside = [r["inside"] for r in rows if math.isfinite(r["lower"])]
    pred = min(range(len(rows)), key=lambda i: rows[i]["predicted"])
    seen = min(range(len(rows)), key=lambda i: rows[i]["achieved"])
    return {
        "n": len(rows),
        "inside": int(sum(inside)) if inside else None,
        "predicted_best": done[pred]["variant"],
        "observed_best": done[seen]["variant"],
        "ladder_steps": ladder_steps(done[pred]["variant"], done[seen]["variant"]),
    }


def ladder_steps(a: str, b: str) -> int:
    """How many sizes of the variant table apart two variants are (sizes ordered by depth x width^2), so a
    planned run that has not finished still counts as a step between its neighbours."""
    order = sorted(vit.VARIANTS, key=lambda n: vit.VARIANTS[n][1] * vit.VARIANTS[n][0] ** 2)
    return abs(order.index(vit.decode_variant(a).name) - order.index(vit.decode_variant(b).name))


def loop_text(check: dict[str, Any], level: float) -> str:
    """The closed loop in two sentences."""
    inside = (
        "no prediction intervals (too few backtest residuals)"
        if check["inside"] is None
        else f"{check['inside']} of {check['n']} planned runs inside their {level:.0%} prediction intervals"
    )
    best = f"predicted best size {check['predicted_best']}, observed best {check['observed_best']}"
    return f"{inside}; {best} ({check['ladder_steps']} ladder step(s) apart)"


def predict(source: str | Path, planned_csv: str | Path, *, out: str | Path | None = None, level: float = 0.9,
            law: LawSpec = DEFAULT_LAW) -> dict[str, Any]:  # fmt: skip
    """The predicted error of each planned run (`read_planned`) from the study's joint `law`, with its
    prediction interval (`lower`, `upper`: the parameter interval stretched by the backtests' conformal
    q, scaling.backtest) and its parameter interval (`param_lower`, `param_upper`: bootstrap), at `level`.
    When `planned_csv` is the sweep folder of the planned runs, their errors are added (`achieved`,
    `inside`) and "check" closes the loop (`loop_check`). Returns {"rows", "csv", "backtest", "fit",
    "check"}; writes the CSV to `out` when given; ConfigError on bad input."""
    if not 0 < level < 1:
        raise config.ConfigError([config.Problem("--level", f"must be between 0 and 1 (got {level})")])
    if law.repetition not in repetition.REPETITION:
        raise config.ConfigError(
            [config.Problem("--repetition", f"{law.repetition!r} is not one of none, muennighoff")]
        )
    done = None
    if Path(planned_csv).is_dir():
        planned, done = read_achieved(Path(planned_csv), law.metric)
    else:
        planned = read_planned(planned_csv)
    points = load_points(source, metric=law.metric, k=law.k)
    fit, bt = allocation.forecast(points, repetition_=law.repetition, boot=Bootstrap(law.n_bootstrap, level))
    N, D = np.array(planned["params"]), np.array(planned["images_seen"])
    U = np.array(planned["unique_images"]) if "unique_images" in planned else None
    pred = np.atleast_1d(fit.predict(N, D, U))
    plo, phi = fit.predict_band(N, D, U)
    lo, hi = backtest.widen(pred, plo, phi, bt.q) if bt.q is not None else (np.full_like(pred, np.nan),) * 2
    rows = [
        {**{c: planned[c][i] for c in planned}, **dict(zip(PREDICT_COLUMNS, (pred[i], lo[i], hi[i], plo[i], phi[i])))}
        for i in range(pred.size)
    ]
    check = None
    if done is not None:
        for r, d in zip(rows, done):
            r.update(achieved=d["achieved"], inside=float(r["lower"] <= d["achieved"] <= r["upper"]))
        check = loop_check(rows, done)
    text = _csv_text(rows)
    if out is not None:
        files.atomic_write_text(Path(out), text)
    return {"rows": rows, "csv": text, "backtest": bt.as_dict(), "fit": fit, "check": check}


def _csv_text(rows: list[dict[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if not math.isfinite(v) else f"{v:.10g}" for k, v in r.items()})
    return buf.getvalue()
