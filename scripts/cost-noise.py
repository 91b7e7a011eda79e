#!/usr/bin/env python3
"""How far two bar sweeps of one build disagree: the floor under the cost model's bars.

Usage: scripts/cost-noise.py DIR_A DIR_B

Each DIR holds the `*.log` files of one bar sweep (benches/COST_MODEL.md, "The bars"),
made by the same build on the same machine. For every algorithm at 64 KiB and above it
compares the two measured times (how often they differ by more than 25%, the predictions'
bar, and by more than 10%), and for every cell it asks what a perfect oracle from the other
sweep would score: the algorithm fastest in sweep A, timed in sweep B, against B's fastest
(the choice bar's 10%). Beside it, the automatic choice of each sweep against its own
sweep's fastest. A model cannot be judged finer than the machine repeats itself.
"""

import glob
import importlib.util
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("cost_bars", os.path.join(HERE, "cost-bars.py"))
cost_bars = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cost_bars)


def forced(v):
    return {k: x[0] for k, x in v.items() if not k.startswith("auto(")}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    # parse() also returns each cell's placement, which this comparison does not use.
    a, _ = cost_bars.parse(glob.glob(os.path.join(sys.argv[1], "*.log")))
    b, _ = cost_bars.parse(glob.glob(os.path.join(sys.argv[2], "*.log")))
    print("| transport | times (>= 64 KiB) | A/B outside 25% | outside 10% | median A/B "
          "| cells | A's fastest in B > 10% | B's fastest in A > 10% | A's choice > 10% | B's choice > 10% |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in sorted({k[0] for k in a}):
        ratios = []
        cells = cross_ab = cross_ba = own_a = own_b = 0
        for key in a:
            if key[0] != t or key not in b or key[3] == 0:
                continue
            fa, fb = forced(a[key]), forced(b[key])
            common = [k for k in fa if k in fb]
            if not common:
                continue
            if key[3] >= 65536:
                ratios += [fa[k] / fb[k] for k in common if fb[k] > 0]
            cells += 1
            best_a = min(fa[k] for k in common)
            best_b = min(fb[k] for k in common)
            cross_ab += fb[min(common, key=fa.get)] > 1.1 * best_b
            cross_ba += fa[min(common, key=fb.get)] > 1.1 * best_a
            ca, cb = cost_bars.chosen(a[key]), cost_bars.chosen(b[key])
            own_a += ca in fa and fa[ca] > 1.1 * best_a
            own_b += cb in fb and fb[cb] > 1.1 * best_b
        n = len(ratios)
        if n == 0:
            continue
        out25 = sum(not (0.8 <= r <= 1.25) for r in ratios)
        out10 = sum(not (1 / 1.1 <= r <= 1.1) for r in ratios)
        print(f"| {t} | {n} | {out25} ({100 * out25 / n:.0f}%) | {out10} ({100 * out10 / n:.0f}%) "
              f"| {statistics.median(ratios):.2f} | {cells} | {cross_ab} | {cross_ba} | {own_a} | {own_b} |")


if __name__ == "__main__":
    main()
