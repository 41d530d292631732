"""What a person reads: the analysis and the programs return values, these modules turn them into
rows, words and figures (values in, HTML out).

- page.py             HTML tables, sections, details: every report's helpers (numbers: vitscale.formats)
- basics.py           the notebooks' first cell: offline plotly, a run's parameters grouped
- pretraining.py      notebooks/pretrain.ipynb: curves, few-shot during pretraining, headline numbers
- downstream.py       notebooks/transfer.ipynb: few-shot, fine-tuning, VTAB, the paper's table
- scaling.py          scaling_analysis.ipynb: headline, constants, findings and runs tables
- scaling_figures.py  the scaling figures: error against compute with fits, extrapolation, ...
- allocation.py       the allocation section (IsoFLOP contours and profiles, the plan), and its page
- search.py           the learning-rate section (the rate law, U-curves, what won per point)
- sweep_index.py      outputs/<sweep>/index.html
"""
