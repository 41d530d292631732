"""The paper's table (ImageNet fine-tune, 10-shot ImageNet, the ImageNet evaluations of
transfer.imagenet.VARIANTS, VTAB mean and groups) as a view of the summary's results: a number where
the run has one, "not prepared" where the dataset's files are absent from data_dir and "not run"
where they are there but the parameters did not ask."""

from __future__ import annotations

from vitscale import config, metrics, pretrained
from vitscale.data import vtab as vtab_data
from vitscale.transfer import imagenet

NOT_PREPARED, NOT_RUN = "not prepared", "not run"
VTAB_COLUMNS = ("VTAB-1k mean", "VTAB natural", "VTAB specialized", "VTAB structured")  # mean, *vtab_data.GROUPS
PAPER_COLUMNS = (
    "ImageNet fine-tune",
    "ImageNet 10-shot",
    *(v.column for v in imagenet.VARIANTS.values()),
    *VTAB_COLUMNS,
)
STANDINS = "VTAB stand-ins (not VTAB)"


def _vtab_prepared(data_dir: str | None) -> bool:
    for task in vtab_data.TASKS.values():
        try:
            vtab_data.builder(task, data_dir)
        except (FileNotFoundError, ValueError, AssertionError):
            return False
    return True


def column_status(cfg: config.TransferConfig) -> dict[str, str]:
    """What an empty cell says: "not prepared" where the column's dataset has no files in data_dir (or,
    for ObjectNet, no usable objectnet_dir), else "not run"."""
    said = lambda ready: NOT_RUN if ready else NOT_PREPARED
    status = dict.fromkeys(PAPER_COLUMNS[:2], said(imagenet.prepared(imagenet.IMAGENET, cfg.data_dir)))
    status.update({v.column: said(v.missing(cfg) is None) for v in imagenet.VARIANTS.values()})
    status.update(dict.fromkeys(VTAB_COLUMNS, said(_vtab_prepared(cfg.data_dir))))
    return status


def paper_table(
    models: list[pretrained.Pretrained], cfg: config.TransferConfig, results: dict[str, dict]
) -> dict[str, dict[str, float | str]]:
    """{model: {column: accuracy or why not}} in the layout of the paper's tables, from `results`
    ({"fewshot", "finetune", "vtab", "imagenet_evals"} as in summary.json); stand-in VTAB tasks (not
    VTAB) get their own "VTAB stand-ins (not VTAB)" column when run."""
    status = column_status(cfg)
    few, fine, vt, imnet = (results[k] for k in ("fewshot", "finetune", "vtab", "imagenet_evals"))
    table = {}
    for m in models:
        row: dict[str, float | str] = dict(status)
        if imagenet.IMAGENET in fine:
            row["ImageNet fine-tune"] = fine[imagenet.IMAGENET][m.name][metrics.TEST_ACC]
        shot10 = few.get(m.name, {}).get(imagenet.IMAGENET, {}).get("10shot")
        if shot10:
            row["ImageNet 10-shot"] = shot10["mean"]
        for key, r in imnet.get(m.name, {}).items():
            row[imagenet.VARIANTS[key].column] = r["acc"]
        summary = vt.get(m.name, {}).get("summary", {})
        for key, column in zip(("mean", *vtab_data.GROUPS), VTAB_COLUMNS):
            if summary.get(key) is not None:
                row[column] = summary[key]
        if summary.get("standin") is not None:
            row[STANDINS] = summary["standin"]
        table[m.name] = row
    return table
