"""ObjectNet (Barbu et al. 2019) from the user's copy of the dataset, as distributed (objectnet-1.0/
with images/<class folder>/ and mappings/), scored the way its authors prescribe for ImageNet models:

- only the ObjectNet classes that overlap ImageNet-1k count (mappings/objectnet_to_imagenet_1k.json:
  ObjectNet label -> "; "-separated ImageNet class names; mappings/imagenet_to_label_2012_v2: one
  ImageNet class name a line; mappings/pytorch_to_imagenet_2012_id.json: class index (the sorted-synset
  order of PyTorch and TFDS alike) -> line of that file; mappings/folder_to_objectnet_label.json: image
  folder -> ObjectNet label);
- a prediction is the top ImageNet class among those that map to an ObjectNet class, and is correct
  when it maps to the image's class;
- every image has a 1-pixel red border, which is cropped before preprocessing.

So it is the classification evaluator with predictions restricted to the mapped ImageNet classes and,
as each image's label, the set of ImageNet classes that map to its ObjectNet class.

Source of the protocol: the README distributed in objectnet-1.0/ (remove the 1-pixel red border
before testing; the mapping files for the classes that overlap ImageNet-1k) and Barbu et al. 2019,
"ObjectNet: A large-scale bias-controlled dataset for pushing the limits of object recognition
models" (NeurIPS), which score ImageNet models on the overlapping classes only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from vitscale.data import pipeline
from vitscale.evaluators import classification

FOLDER_TO_LABEL = "mappings/folder_to_objectnet_label.json"
TO_IMAGENET = "mappings/objectnet_to_imagenet_1k.json"
IMAGENET_NAMES = "mappings/imagenet_to_label_2012_v2"
INDEX_TO_LINE = "mappings/pytorch_to_imagenet_2012_id.json"
MAPPINGS = (FOLDER_TO_LABEL, TO_IMAGENET, IMAGENET_NAMES, INDEX_TO_LINE)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
BORDER = 1  # pixels


def root(path: str | Path) -> Path:
    """The dataset folder: `path` itself when it holds mappings/, else its objectnet-1.0/ sub-folder."""
    p = Path(path).expanduser()
    return p / "objectnet-1.0" if not (p / "mappings").is_dir() and (p / "objectnet-1.0").is_dir() else p


def missing(path: str | Path) -> list[str]:
    """What a usable ObjectNet folder lacks (empty: usable)."""
    r = root(path)
    if not r.is_dir():
        return [f"{path} is not a folder"]
    out = [str(r / m) for m in MAPPINGS if not (r / m).is_file()]
    if not (r / "images").is_dir():
        out.append(str(r / "images"))
    return out


def class_map(path: str | Path) -> tuple[dict[str, int], dict[int, set[int]]]:
    """({image folder: ObjectNet class index} for the overlapping classes, {ImageNet class: ObjectNet
    classes it maps to}). ObjectNet classes are indexed in sorted label order."""
    r = root(path)
    folder_to_label = json.loads((r / FOLDER_TO_LABEL).read_text())
    to_imagenet = json.loads((r / TO_IMAGENET).read_text())
    lines = [line.strip() for line in (r / IMAGENET_NAMES).read_text().splitlines()]
    index: dict[str, list[int]] = {}  # class name -> class indices (a few names name two classes)
    for i, line in json.loads((r / INDEX_TO_LINE).read_text()).items():
        index.setdefault(lines[int(line)], []).append(int(i))
    labels = sorted(to_imagenet)
    imagenet_to_objectnet: dict[int, set[int]] = {}
    for j, label in enumerate(labels):
        for name in to_imagenet[label].split(";"):
            if name.strip() not in index:
                raise ValueError(f"{r / TO_IMAGENET}: ImageNet class {name.strip()!r} is not in {r / IMAGENET_NAMES}")
            for i in index[name.strip()]:
                imagenet_to_objectnet.setdefault(i, set()).add(j)
    folders = {f: labels.index(lab) for f, lab in folder_to_label.items() if lab in to_imagenet}
    return folders, imagenet_to_objectnet


def crop_border(image: tf.Tensor) -> tf.Tensor:
    """The image without its 1-pixel border (ObjectNet's red frame)."""
    return image[BORDER:-BORDER, BORDER:-BORDER]


def examples(path: str | Path) -> tf.data.Dataset:
    """The images of the overlapping classes, decoded and border-cropped, with their ObjectNet class
    ("objectnet") and its label set: the ImageNet classes that map to it ("label", -1-padded)."""
    r = root(path)
    folders, imagenet_to_objectnet = class_map(r)
    files, labels = [], []
    for folder, label in sorted(folders.items()):
        for f in sorted((r / "images" / folder).glob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(str(f))
                labels.append(label)
    if not files:
        raise ValueError(f"{r / 'images'} holds no image of the classes that overlap ImageNet-1k")
    to_imagenet = {j: sorted(i for i, js in imagenet_to_objectnet.items() if j in js) for j in set(labels)}
    width = max(len(v) for v in to_imagenet.values())
    sets = np.asarray([to_imagenet[y] + [-1] * (width - len(to_imagenet[y])) for y in labels], np.int64)

    def read(f, y, s):
        image = tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False)
        return {"image": crop_border(image), "objectnet": y, "label": s}

    return tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int64), sets)).map(read)


def evaluator(path: str | Path, pipe: pipeline.Pipeline, batch_size: int, mesh) -> classification.Classification:
    """{acc, images, classes} of a 1000-class ImageNet classifier on ObjectNet's overlapping classes."""
    folders, imagenet_to_objectnet = class_map(path)
    return classification.Classification(
        lambda: examples(path), pipe, batch_size, mesh,
        classes=sorted(imagenet_to_objectnet), info={"classes": len(set(folders.values()))},
    )  # fmt: skip
