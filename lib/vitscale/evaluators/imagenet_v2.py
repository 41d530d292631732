"""ImageNet-v2 (Recht et al. 2019, "Do ImageNet Classifiers Generalize to ImageNet?"): top-1 of an
ImageNet-1k classifier on TFDS `imagenet_v2`, matched-frequency by default, the other two variants by
name, with the preprocessing of ImageNet validation (the pipeline the caller passes): the
classification evaluator over another dataset."""

from __future__ import annotations

import tensorflow_datasets as tfds

from vitscale.data import datasets, pipeline
from vitscale.evaluators import classification

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


def evaluator(
    pipe: pipeline.Pipeline, batch_size: int, mesh, variant: str = "matched-frequency", data_dir: str | None = None
) -> classification.Classification:
    """{acc, images, variant} of a 1000-class ImageNet classifier on one ImageNet-v2 variant."""
    read = lambda: examples(variant, data_dir)  # read when run (a test stands its own examples in)
    return classification.Classification(read, pipe, batch_size, mesh, info={"variant": variant})
