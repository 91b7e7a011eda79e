#!/usr/bin/env python3
"""Replays the trials' decision (src/select.rs, `measured_best`) under other error floors.

Usage:
  scripts/trial-replay.py --bench BIN [--runs N] --out FILE.json   # measure, then replay
  scripts/trial-replay.py --replay FILE.json                       # replay a saved run

Measuring runs `oxccl-bench --compare auto,<every algorithm>` N times (default 5) for each
call shape of CELLS with OXCCL_DEBUG=INFO, and keeps, per run, what the trials measured (each
candidate's typical call, its standard error and its price, from the `trials` log line) and
every algorithm's own loop time in the same run. Replaying takes, for each floor, the
candidate `measured_best` would fix from those trial numbers, and prices the choice by the
medians of the algorithms' own loops over the runs: its time over the fastest candidate's.
The trial numbers do not depend on the floor, so one measurement serves every floor.
"""

import argparse
import json
import math
import os
import re
import statistics
import subprocess

# Call shapes (transport, ranks, collective, bytes) whose trials had disagreed with the model
# in the twentieth session's sweep.
CELLS = [
    ("shm", 3, "reduce_scatter", 16380), ("shm", 3, "reduce_scatter", 252),
    ("shm", 4, "reduce_scatter", 16384), ("shm", 4, "reduce_scatter", 65536),
    ("shm", 8, "all_reduce", 16), ("shm", 8, "all_gather", 1024),
    ("shm", 2, "reduce_scatter", 1024), ("shm", 2, "all_to_all", 256),
    ("tcp", 3, "all_reduce", 1048576), ("tcp", 3, "all_reduce", 262144),
    ("tcp", 4, "all_reduce", 4194304), ("tcp", 4, "all_reduce", 65536),
    ("tcp", 4, "all_gather", 1048576), ("tcp", 3, "all_reduce", 16777216),
    ("tcp", 2, "reduce_scatter", 65536), ("tcp", 8, "reduce_scatter", 1048576),
    ("tcp", 3, "reduce_scatter", 65532), ("tcp", 2, "all_to_all", 16),
    ("tcp", 2, "all_gather", 1024), ("tcp", 3, "all_to_all", 60),
]
ALGOS = {
    "all_reduce": "ring,recursive_doubling,direct,tree,halving_doubling",
    "all_gather": "ring,recursive_doubling,bruck",
    "reduce_scatter": "ring,direct,halving_doubling",
    "all_to_all": "pairwise,bruck",
}
# select::MODEL_LOG_SPREAD.
MODEL_LOG_SPREAD = 0.2
FLOORS = [0.0, 0.05, 0.1, 0.15, 0.2, math.inf]
TRIAL = re.compile(r"([\w+-]+) ([\d.]+) us ±([\d.]+)% \(priced ([\d.]+) us\)")
ROW = re.compile(r"^\s+\d+\s+\d+\s")


def measure(bench, runs):
    out = []
    for t, p, coll, size in CELLS:
        n, w = ("100", "10") if size < (4 << 20) else ("20", "5")
        cmd = [bench, "--ranks", str(p), "--transport", t, "-b", str(size), "-e", str(size), "-n", n,
               "-w", w, "-c", "0", "--collective", coll, "--compare", "auto," + ALGOS[coll]]
        env = dict(os.environ, OXCCL_DEBUG="INFO")
        for _ in range(runs):
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
            trial, times = None, {}
            for line in (r.stdout + r.stderr).splitlines():
                if "trials (slowest" in line and "rank=0" in line:
                    trial = [(m.group(1), float(m.group(2)), float(m.group(3)), float(m.group(4)))
                             for m in TRIAL.finditer(line)]
                if ROW.match(line):
                    q = line.split()
                    times[q[13]] = float(q[5])
            out.append({"cell": [t, p, coll, size], "trial": trial, "times": times})
    return out


def decide(trial, floor):
    """The candidate `measured_best` fixes from one rank-0 trial line, with `floor`."""
    base, best = trial[0], (0, 0.0)
    vm = MODEL_LOG_SPREAD ** 2
    for i, t in enumerate(trial[1:], 1):
        ratio = math.log(t[3] / base[3])
        if math.isinf(floor):
            d = ratio
        else:
            var = (t[2] / 100) ** 2 + (base[2] / 100) ** 2 + 2 * floor * floor
            d = (math.log(t[1] / base[1]) * vm + ratio * var) / (vm + var)
        if d < best[1]:
            best = (i, d)
    return trial[best[0]][0]


def replay(runs):
    cells = {}
    for r in runs:
        if r["trial"]:
            cells.setdefault(tuple(r["cell"]), []).append(r)
    totals = {f: [] for f in FLOORS}
    print("| transport | ranks | collective | bytes | medians of the candidates' loops (us) | "
          + " | ".join("model" if math.isinf(f) else f"floor {f}" for f in FLOORS) + " |")
    print("| --- | ---: | --- | ---: | --- |" + " ---: |" * len(FLOORS))
    for cell, rs in cells.items():
        cands = [x[0] for x in rs[0]["trial"]]
        med = {a: statistics.median(r["times"][a] for r in rs if a in r["times"]) for a in cands}
        best = min(med.values())
        cols = []
        for f in FLOORS:
            regs = [med[decide(r["trial"], f)] / best for r in rs]
            totals[f] += regs
            cols.append(f"{statistics.mean(regs):.2f}")
        loops = ", ".join(f"{a} {med[a]:.1f}" for a in cands)
        print(f"| {cell[0]} | {cell[1]} | {cell[2]} | {cell[3]} | {loops} | " + " | ".join(cols) + " |")
    print("\n| floor (log) | runs | mean choice/fastest | over 1.10 | over 1.05 |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for f in FLOORS:
        v = totals[f]
        name = "model alone" if math.isinf(f) else f"{f}"
        print(f"| {name} | {len(v)} | {statistics.mean(v):.3f} | {sum(x > 1.10 for x in v)} | {sum(x > 1.05 for x in v)} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out")
    ap.add_argument("--replay")
    a = ap.parse_args()
    if a.replay:
        runs = json.load(open(a.replay))
    elif a.bench and a.out:
        runs = measure(a.bench, a.runs)
        json.dump(runs, open(a.out, "w"))
    else:
        ap.error("give --bench and --out, or --replay")
    replay(runs)


if __name__ == "__main__":
    main()
