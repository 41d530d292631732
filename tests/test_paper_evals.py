"""The paper's evaluations through the transfer program: VTAB-1k's protocol end to end on offline
stand-in tasks (labelled as such), the paper's table in summary.json, and bad input (an unknown task,
an unprepared dataset, an ObjectNet folder without its mapping files) refused before any compute."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

import browser
from vitscale import cli, config
from vitscale.data import vtab
from vitscale.report import downstream
from vitscale.transfer import program
from vitscale.transfer import vtab as transfer_vtab

BASE = {
    "name": "vtab_standins",
    "pretrained": "random",
    "random_model": {"variant": "Atto/7", "image_size": 28},
    "fewshot_datasets": [],
    "finetune_datasets": [],
    "finetune_resolution": 14,
    "finetune_batch_size": 16,
    "eval_batch_size": 1024,
    "vtab_steps": [2],
    "vtab_lr_grid": [0.01, 0.1],
}


def image_folder(root, train_per_class=101, test_per_class=2):
    """Ten classes of 8x8 PNGs (grey levels; ten, as the other stand-ins, so the compiled fine-tuning
    setups are shared) with train/ and test/ sub-folders."""
    rng = np.random.default_rng(0)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for c in range(10):
            d = root / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                a = np.clip(rng.normal(20 + 22 * c, 10, size=(8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f"{i}.png")
    return root


@pytest.mark.long  # 12 fine-tuning runs: make test-long
def test_vtab_protocol_end_to_end_on_standins(tmp_path):
    folder = image_folder(tmp_path / "images")
    tasks = ["standin:fashion_mnist", "standin:mnist_5k", "standin:sklearn_digits", f"standin:folder:{folder}"]
    cfg = config.validate(config.TransferConfig, {**BASE, "vtab_tasks": tasks})
    s = program.run(cfg, tmp_path / "out")
    result = s["vtab"]["random"]
    assert list(result["tasks"]) == tasks
    for name, r in result["tasks"].items():
        assert r["standin"] and r["group"] == "standin" and len(r["seeds"]) == 1
        run = r["seeds"][0]
        # The grid: steps x lr, each scored on val200; the pick is the best val accuracy.
        assert [(g["steps"], g["lr"]) for g in run["grid"]] == [(2, 0.01), (2, 0.1)]
        best = max(run["grid"], key=lambda g: (g["val/acc"], -g["val/loss"]))
        assert (run["best_steps"], run["best_lr"]) == (best["steps"], best["lr"])
        assert r["test/acc"] == run["test/acc"]
        assert (
            s["final"][f"vtab/{name.removeprefix('standin:').replace(str(folder), '')}/test/acc".replace("folder:", "")]
            == run["test/acc"]
            if not name.startswith("standin:folder")
            else True
        )
    test_sizes = [r["seeds"][0]["test_images"] for r in result["tasks"].values()]
    assert test_sizes == [10000, 1000, 500, 20]  # each stand-in's whole test split
    accs = [r["test/acc"] for r in result["tasks"].values()]
    # Stand-ins are not VTAB: no VTAB mean, their own mean beside it.
    assert result["summary"]["mean"] is None and result["summary"]["standin"] == pytest.approx(np.mean(accs))
    row = s["paper_table"]["random"]
    assert row["VTAB stand-ins (not VTAB)"] == pytest.approx(np.mean(accs))
    assert row["VTAB-1k mean"] in ("not prepared", "not run") and row["ImageNet-ReaL"] in ("not prepared", "not run")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["paper_table"] == s["paper_table"]
    # The report's tables: the paper's layout with the stand-in column, and VTAB per task marked not VTAB.
    cells = browser.cell_texts(str(downstream.paper_table(s)))
    assert "VTAB stand-ins (not VTAB)" in cells and f"{100 * np.mean(accs):.1f}" in cells
    assert browser.cell_texts(str(downstream.vtab_table(s))).count("stand-in (not VTAB)") == 4
    # The runs are where the report's curves are read from: grid runs log val/, the final run test/.
    seed_dir = tmp_path / "out" / "vtab" / "sklearn_digits" / "random" / "seed_0"
    assert sorted(p.name for p in seed_dir.iterdir()) == sorted(
        [
            "steps_2_lr_0.01",
            "steps_2_lr_0.1",
            f"final_steps_2_lr_{result['tasks']['standin:sklearn_digits']['seeds'][0]['best_lr']:g}",
        ]
    )


BAD = {
    "unknown_task": ({"vtab_tasks": ["cifar10"]}, ["vtab_tasks", "unknown VTAB task 'cifar10'", "caltech101"]),
    "unprepared_task": (
        {"vtab_tasks": ["diabetic_retinopathy"]},
        ["vtab_tasks", "tfds build diabetic_retinopathy_detection/btgraham-300 --manual_dir="],
    ),
    "small_standin": ({"vtab_tasks": ["standin:sklearn_digits_typo"]}, ["vtab_tasks", "sklearn_digits_typo"]),
    "real_unprepared": (
        {"imagenet_evals": ["real"], "finetune_datasets": ["imagenet2012"]},
        ["imagenet_evals", "tfds build imagenet2012_real --manual_dir="],
    ),
    "objectnet_without_mappings": (
        {"imagenet_evals": ["objectnet"], "finetune_datasets": ["imagenet2012"], "objectnet_dir": "{tmp}"},
        ["objectnet_dir", "mappings/objectnet_to_imagenet_1k.json", "objectnet-1.0"],
    ),
    "objectnet_without_folder": (
        {"imagenet_evals": ["objectnet"], "finetune_datasets": ["imagenet2012"]},
        ["objectnet_dir", "name the ObjectNet folder"],
    ),
    "no_imagenet_classifier": ({"imagenet_evals": ["v2"]}, ["imagenet_evals", "add imagenet2012 to finetune_datasets"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_refused_before_compute(case, tmp_path):
    override, needles = BAD[case]
    (tmp_path / "images").mkdir()
    override = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in override.items()}
    params = {**BASE, "data_dir": str(tmp_path / "tfds"), **override}
    with pytest.raises(config.ConfigError) as e:
        program.check(config.validate(config.TransferConfig, params))
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_the_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**BASE, "data_dir": str(tmp_path / "tfds"), "vtab_tasks": ["dtd", "nope"]}))
    out = tmp_path / "out"
    assert cli.main(["run", str(p), "--notebook", "transfer", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "vtab_tasks" in err and "tfds build dtd" in err and "unknown VTAB task 'nope'" in err
    assert not out.exists()


def test_all_19_expand_from_the_shorthand():
    cfg = config.validate(config.TransferConfig, {**BASE, "vtab_tasks": ["vtab-1k", "dtd"]})
    assert transfer_vtab.task_names(cfg) == list(vtab.TASKS)


def test_an_imagenet_variant_is_one_entry(monkeypatch, tmp_path):
    """transfer.imagenet.VARIANTS is the one table of the ImageNet evaluations: an entry makes the name
    valid in imagenet_evals, gives the paper's table its column, and puts its accuracy there."""
    from types import SimpleNamespace

    from vitscale.transfer import imagenet, table

    sketch = imagenet.Variant("ImageNet-Sketch", lambda cfg: None, lambda cfg, pipe, batch, mesh: None)
    monkeypatch.setitem(imagenet.VARIANTS, "sketch", sketch)
    params = {k: v for k, v in BASE.items() if k != "random_model"} | {"data_dir": str(tmp_path / "tfds")}
    params |= {"pretrained": "w.npz", "pretrained_model": {"variant": "Atto/7", "image_size": 28}}
    params["imagenet_evals"] = ["sketch", "nope"]
    cfg = config.validate(config.TransferConfig, params)
    problems: list[config.Problem] = []
    imagenet.check(problems, cfg)
    assert [p.message for p in problems] == ["unknown evaluation 'nope'; accepted: real, v2, objectnet, sketch"]
    assert table.column_status(cfg)["ImageNet-Sketch"] == "not run"
    results = {"fewshot": {}, "finetune": {}, "vtab": {}, "imagenet_evals": {"m": {"sketch": {"acc": 0.5}}}}
    row = table.paper_table([SimpleNamespace(name="m")], cfg, results)["m"]
    assert row["ImageNet-Sketch"] == 0.5 and row["ImageNet-ReaL"] == "not prepared"
