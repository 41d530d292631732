"""What every run notebook shows first, drawn so that the executed notebook's HTML opens offline.

`setup_notebook()` sets the renderer to "plotly_mimetype+vitscale_notebook": JupyterLab draws the
plotly mimetype, and the text/html part (with plotly.js embedded once by that call's output, and no
MathJax from a CDN) is what nbconvert's HTML export keeps. The cell that calls it must keep its output.
`parameters(cfg)` lists a run's resolved parameters, grouped; `show_all` shows figures in turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import NotebookRenderer

from vitscale import formats
from vitscale.report import page

RENDERER = "plotly_mimetype+vitscale_notebook"


class OfflineNotebookRenderer(NotebookRenderer):
    """plotly's notebook renderer without its MathJax <script src> from a CDN in every figure; plotly.js
    is embedded by `setup_notebook` (`embed`), once, not on the first `show` (figures inside HTML
    sections never call it)."""

    def activate(self):
        pass

    def embed(self):
        super().activate()

    def to_mimebundle(self, fig_dict):
        return {
            "text/html": pio.to_html(
                fig_dict,
                config=self.config,
                include_plotlyjs=self.include_plotlyjs,
                include_mathjax=False,
                full_html=False,
                default_width="100%",
                default_height=525,
                validate=False,
            )
        }


pio.renderers["vitscale_notebook"] = OfflineNotebookRenderer()


def setup_notebook() -> None:
    """Use a renderer whose output survives into HTML and embeds plotly.js (offline)."""
    pio.renderers.default = RENDERER
    pio.renderers["vitscale_notebook"].embed()
    pio.templates.default = "plotly_white"


# How a report groups a run's parameters; a field in none of them is listed under "other".
PRETRAIN_GROUPS = {
    "model": (
        "variant width depth mlp_dim num_heads pool_type posemb dropout head_bias_init representation_size gelu "
        "dtype remat scan init_from model"
    ).split(),
    "data": (
        "dataset data_dir train_split test_split train_examples image_size channels crop_padding flip input "
        "pp_train pp_eval"
    ).split(),
    "recipe": (
        "loss optimizer lr weight_decay wd_rules grad_clip_norm b2 schedule warmup_steps timescale cooldown_steps "
        "cooldown_branches total_steps batch_size seed"
    ).split(),
    "evaluation": (
        "eval_every eval_batch_size log_every fewshot_datasets fewshot_shots fewshot_seeds fewshot_every"
    ).split(),
    "run": "name checkpoint_every keep_checkpoints keep_every mesh grad_chains coordinator_address num_processes "
    "process_id".split(),
}


TRANSFER_GROUPS = {
    "model": "pretrained random_model pretrained_model compare_random".split(),
    "data": (
        "data_dir input fewshot_datasets finetune_datasets finetune_resolution pp_finetune pp_finetune_eval"
    ).split(),
    "recipe": (
        "finetune_steps finetune_batch_size lr_grid holdout_fraction retrain warmup_steps momentum grad_clip_norm seed"
    ).split(),
    "evaluation": "fewshot_shots fewshot_seeds fewshot_l2 eval_every eval_batch_size log_every".split(),
    "run": "name mesh".split(),
}


def parameters(cfg: Any, groups: dict[str, Sequence[str]] | None = None) -> page.Html:
    """Every resolved parameter of a run (defaults included), grouped (model, data, recipe,
    evaluation, ...) in a collapsed block: what ran, without opening params.yaml."""
    values = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dict(cfg)
    if groups is None:
        groups = TRANSFER_GROUPS if "pretrained" in values else PRETRAIN_GROUPS
    placed: set[str] = set()
    parts = []
    for group, keys in groups.items():
        rows = [{"parameter": k, "value": _param_text(values[k])} for k in keys if k in values]
        placed |= {k for k in keys if k in values}
        if rows:
            parts.append(page.table(rows, title=group))
    rest = [{"parameter": k, "value": _param_text(v)} for k, v in values.items() if k not in placed]
    if rest:
        parts.append(page.table(rest, title="other"))
    return page.details(f"All parameters ({len(values)}, defaults included)", *parts)


def _param_text(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, dict | list):
        return json.dumps(v)
    return formats.auto(v) if not isinstance(v, int) or isinstance(v, bool) else str(v)


def show_all(figures: Sequence[go.Figure | page.Sentence | page.Html]) -> None:
    """Show figures one after the other (keeps loops out of notebooks)."""
    for fig in figures:
        fig.show()
