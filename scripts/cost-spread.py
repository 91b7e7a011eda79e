#!/usr/bin/env python3
"""How far the runs pooled in a tuning file disagree: whether a machine repeats itself well
enough for a calibration of three runs.

Usage: scripts/cost-spread.py TUNING_FILE

A tuning file keeps every run's time of every algorithm at every calibrated size, per world
size (`oxccl-bench --calibrate F --average`, benches/COST_MODEL.md). For each entry and world
size with at least three runs, it counts the run times at 64 KiB and above (the sizes the
prediction bar judges) that are more than 25% off the median of their runs, the median being
what the profile is fitted to. Where a run in ten or more is that far off, one machine state
lasts long enough to catch whole runs, and the median of three may be two runs of it: pool
more runs, spread over time (the twenty-third session's AMD EPYC VM: 10% of run times off by
more than 25%, against 1% on the Intel Xeon VM of the sessions before).
"""

import json
import statistics
import sys
from collections import defaultdict

FIRST_POINT = 6  # residual point 6 is 64 KiB (16 B x 4^6)


def spread(entry):
    """{world size: (runs, points, run times more than 25% off their median)}"""
    out = {}
    by_world = defaultdict(lambda: defaultdict(list))
    for name, rows in entry.get("samples", {}).get("times", {}).items():
        for r in rows:
            if int(r[1]) == 1:
                by_world[int(r[0])][name].append(r[2:])
    for p, algos in sorted(by_world.items()):
        runs, points, off = 0, 0, 0
        for name, rs in algos.items():
            runs = max(runs, len(rs))
            if len(rs) < 3:
                continue
            for i in range(FIRST_POINT, max(len(r) for r in rs)):
                xs = [r[i] for r in rs if i < len(r) and r[i] > 0]
                if len(xs) < 3:
                    continue
                m = statistics.median(xs)
                points += len(xs)
                off += sum(1 for x in xs if abs(x / m - 1) > 0.25)
        out[p] = (runs, points, off)
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    entries = json.load(open(sys.argv[1]))["entries"]
    print("| host | processor | transport | ranks | runs | run times off their median by more than 25% |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for e in entries:
        for p, (runs, points, off) in spread(e).items():
            share = f"{off}/{points} ({100 * off / points:.1f}%)" if points else "fewer than 3 runs"
            print(f"| {e['host']} | {e['cpu']} | {e['transport']} | {p} | {runs} | {share} |")


if __name__ == "__main__":
    main()
