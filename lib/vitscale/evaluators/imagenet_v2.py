"""ImageNet-v2 (Recht et al. 2019, "Do ImageNet Classifiers Generalize to ImageNet?"): top-1 of an
ImageNet-1k classifier on TFDS `imagenet_v2`, matched-frequency by default, the other two variants by
name, with the preprocessing of ImageNet validation (the pipeline the caller passes)."""

from __future__ import annotations

import tensorflow_datasets as tfds

from vitscale.data import datasets, pipeline
from vitscale.evaluators import classify

VARIANTS = ("matched-frequency", "threshold-0.7", "topimages")
SPLIT = "test"


def dataset(variant: str = "matched-frequency") -> str:
    return f"imagenet_v2/{variant}"


def prepare_command(variant: str = "matched-frequency") -> str:
    # TFDS downloads the variant's tar; its original host moved (tensorflow/datasets#4842), so bring the
    # file (imagenetv2-<variant>.tar.gz) into TFDS's download folder where the URL no longer answers.
    return f"tfds build {dataset(variant)} --data_dir=<data_dir> (its download moved: tensorflow/datasets#4842)"


def examples(variant: str = "matched-frequency", data_dir: str | None = None):
    builder = tfds.builder(dataset(variant), data_dir=data_dir or datasets.default_data_dir())
    ds = builder.as_dataset(split=SPLIT, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: {"image": ex["image"], "label": ex["label"]})


def evaluate(
    logits, params, pipe: pipeline.Pipeline, mesh, *, variant="matched-frequency", data_dir=None, batch_size=512
) -> dict[str, float | int]:
    """{acc, images} of a 1000-class ImageNet classifier on one ImageNet-v2 variant."""
    batches = classify.example_batches(examples(variant, data_dir), pipe, batch_size)
    out = classify.predict(logits, params, batches, mesh)
    return {"acc": float((out["pred"] == out["label"]).mean()), "images": int(len(out["pred"]))}
