"""Few-shot linear transfer of a frozen model during and after training (the paper's protocol).

The numpy core is `fewshot_lsr` beside it; this module feeds it: downstream splits through the
input pipeline, the model's frozen pre_logits over the mesh, flat metrics for metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from vitscale import sharding
from vitscale.data import datasets, pipeline, sources
from vitscale.evaluators import fewshot_lsr


class FewShotEvaluator:
    """Few-shot linear transfer to downstream datasets, built once (the splits are loaded then); each
    `run(features_fn, params)` computes the frozen features of every pool and test split once. Shot
    counts are checked against the pools' classes beforehand (the programs' check step), so here a
    short class is a plain error."""

    def __init__(
        self,
        names: Sequence[str],
        pipe: pipeline.Pipeline,
        mesh,
        *,
        shots: Sequence[int] = fewshot_lsr.DEFAULT_SHOTS,
        seeds: Sequence[int] = fewshot_lsr.DEFAULT_SEEDS,
        l2: float = fewshot_lsr.DEFAULT_L2,
        data_dir: str | None = None,
        batch_size: int = 512,
        mode: str = "auto",
    ):
        self.shots, self.seeds, self.l2 = tuple(shots), tuple(seeds), l2
        self.pipe, self.mesh, self.batch_size = pipe, mesh, sharding.eval_batch_size(batch_size)
        self.splits = {}
        for name in names:
            pool_name, test_name = datasets.downstream_splits(name)
            self.splits[name] = (
                sources.load(name, pool_name, data_dir, mode),
                sources.load(name, test_name, data_dir, mode),
            )

    def features(
        self, features_fn: Callable, params, split: sources.Split | sources.Source
    ) -> tuple[np.ndarray, np.ndarray]:
        """(features (pre_logits) as float64, labels) of a whole split, in order: one pass over it, in
        memory or streamed, through the pipeline's evaluation ops (at the model's resolution)."""
        feats, labels = [], []
        for batch in pipeline.eval_batches(split, self.pipe, self.batch_size):
            out = features_fn(params, sharding.put_batch({"image": batch["image"]}, self.mesh)["image"])
            feats.append(np.asarray(jax.device_get(out))[batch["mask"]])
            labels.append(batch["label"][batch["mask"]])
        return np.concatenate(feats).astype(np.float64), np.concatenate(labels).astype(np.int32)

    def evaluate(self, features_fn: Callable, params) -> dict[str, dict[str, dict[str, object]]]:
        """{dataset: fewshot_lsr.evaluate_features(...) result} of `features_fn(params, images)`."""
        results = {}
        for name, (pool, test) in self.splits.items():
            pool_x, pool_y = self.features(features_fn, params, pool)
            test_x, test_y = self.features(features_fn, params, test)
            results[name] = fewshot_lsr.evaluate_features(
                pool_x,
                pool_y,
                test_x,
                test_y,
                shots=self.shots,
                seeds=self.seeds,
                l2=self.l2,
                num_classes=pool.num_classes,
            )
        return results

    def run(self, features_fn: Callable, params) -> dict[str, float]:
        """Flat metrics for metrics.jsonl: fewshot/<dataset>/<k>shot (mean) and ..._std."""
        out: dict[str, float] = {}
        for name, result in self.evaluate(features_fn, params).items():
            out.update(fewshot_lsr.flatten(datasets.metric_name(name), result))
        return out
