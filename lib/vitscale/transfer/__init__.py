"""Transfer: how good are a pretrained model's representations downstream? One file per protocol:

- program.py   check(cfg) and run(cfg, out_dir): models -> few-shot -> fine-tuning -> VTAB -> ImageNet
               evaluations -> summary.json (notebooks/transfer.ipynb, `vitscale run parameters/transfer/...`)
- finetune.py  the fine-tuning recipe and the one grid search (the lr grid, VTAB's (steps, lr) grid)
- vtab.py      VTAB-1k: per task and seed, the search on train800/val200, the retrain, the means
- imagenet.py  ReaL, v2, ObjectNet of the ImageNet-1k classifier: `VARIANTS`, one entry each
- table.py     the paper's table as a view of the summary's results
"""
