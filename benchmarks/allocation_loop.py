"""Closing the allocation loop (issue 27.6): the study's joint law, its plan at a budget, and the
planned runs' predicted vs achieved error. Prints the table docs/results.md quotes.

    python benchmarks/allocation_loop.py outputs/cpu_allocation outputs/cpu_allocation_plan --budget 4e13
"""

from __future__ import annotations

import argparse

from vitscale import metrics, plan, runs
from vitscale.scaling import allocation, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the sweep folder the law is fitted on")
    ap.add_argument("planned", help="the sweep folder of the planned IsoFLOP runs")
    ap.add_argument("--budget", type=float, required=True)
    ap.add_argument("--metric", default=metrics.TEST_ACC)
    args = ap.parse_args()

    res = allocation.allocate(plan.load_points(args.study, metric=args.metric), budgets=[args.budget])
    fit, p = res["fit"], res["summary"]["plans"][0]
    print(f"study: {res['summary']['n_points']} points; {res['summary']['notes'][-1]}")
    j = res["summary"]["joint"]
    print(
        f"joint law: E {j['E']:.4g}, A {j['A']:.4g}, B {j['B']:.4g}, alpha {j['alpha']:.3f}, beta {j['beta']:.3f}, "
        f"a {j['a']:.3f} {j['intervals'].get('a')}; k = {fit.k:.1f}"
    )
    print(f"plan at C = {p['C']:.3g}: N* {p['N']:.3g} {p.get('N_interval')}, D* {p['D']:.3g}, error {p['error']:.4f}")
    done = table.from_rows(runs.collect(args.planned), metrics.error_of, metric=args.metric)
    print(
        f"{'run':44s} {'params':>9s} {'images':>9s} {'FLOPs':>9s} {'predicted':>9s} {'interval':>18s} {'achieved':>8s}"
    )
    for r in plan.predicted_vs_achieved(fit, done):
        iv = r["interval"]
        iv_text = f"[{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""
        print(
            f"{r['run']:44s} {r['params']:9.3g} {r['images_seen']:9.3g} {r['flops']:9.3g} "
            f"{r['predicted']:9.4f} {iv_text:>18s} {r['achieved']:8.4f}"
        )


if __name__ == "__main__":
    main()
