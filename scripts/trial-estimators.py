#!/usr/bin/env python3
"""Replays the trials' decisions of a sweep under other estimators of a candidate's typical call.

Usage:
  scripts/trial-estimators.py [--min-us U] [--misses] DIR [DIR ...]

Each DIR holds logs of `oxccl-bench --explain` runs made with OXCCL_DEBUG=DEBUG and named
like the bar sweep's (`shm-3-small.log`: transport, ranks): for instance
  for t in shm tcp; do for p in 2 3 4 8; do
    OXCCL_DEBUG=DEBUG oxccl-bench --ranks $p --transport $t -b 16 -e 1M -f 4 -n 100 -w 10 \
      -c 0 --explain --collective all_reduce,all_gather,reduce_scatter,all_to_all > DIR/$t-$p-small.log 2>&1
  done; done
At DEBUG every rank logs its trial calls one by one (src/communicator/trials.rs), and the INFO
line gives each candidate's price and the candidate fixed. For each decision the script
computes every rank's typical call per candidate under each estimator, pools the spread as
`typical_all` does, weighs the slowest rank's times against the prices as
`select::measured_best` does, and prices the candidate it fixes by the same sweep's forced
rows (each algorithm's own loop, out of place): its time over the fastest candidate's.
"model" is the model's choice alone, "logged" what the build fixed, "trimmed mean" the
build's estimator replayed (it should agree with "logged").

Decisions whose candidates' calls average under --min-us (default 0.01) microseconds are
left out.
"""

import argparse
import glob
import importlib.util
import math
import os
import re
import statistics
from collections import defaultdict


def _script(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(__file__), file))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cost_bars = _script("cost_bars", "cost-bars.py")
# `decide` is `select::measured_best`'s weighing, as scripts/trial-replay.py replays it.
trial_replay = _script("trial_replay", "trial-replay.py")

DEBUG = re.compile(
    r"DEBUG oxccl::communicator::trials: (\w+) of (\d+) B( \(buffers some rank cannot map\))?: "
    r"this rank's trial runs in order \(us\): (.*) rank=(\d+)"
)
INFO = re.compile(
    r"INFO oxccl::communicator::trials: (\w+) of (\d+) B \(([^)]*)\): trials \([^)]*\) (.*): "
    r"(\w+) from now on \(the model's choice: (\w+)\) rank=0"
)
CANDIDATE = re.compile(r"([\w+-]+) ([\d.]+) us ±([\d.]+)% \(priced ([\d.]+) us\)")
RUNS = re.compile(r"([\w+-]+) \[([\d. ]*)\]")
# select::TRIAL_LOG_FLOOR.
TRIAL_LOG_FLOOR = 0.1


def mean_and_error(v):
    """The mean of v and its standard error relative to it (1 where under two runs)."""
    if not v:
        return math.inf, 1.0
    m = sum(v) / len(v)
    if len(v) < 2 or m == 0:
        return m, 1.0
    var = sum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, math.sqrt(var) / m / math.sqrt(len(v))


def trimmed_mean(r):
    """The build's: the mean of the fastest three quarters (`kept`, `typical_of_kept`)."""
    v = sorted(r)[: len(r) - len(r) // 4]
    return mean_and_error(v), v


def plain_mean(r):
    return mean_and_error(list(r)), list(r)


def drop_sixteenth(r):
    """The mean without the slowest sixteenth (at least one call from 8 calls on)."""
    v = sorted(r)
    d = max(1, len(v) // 16) if len(v) >= 8 else 0
    v = v[: len(v) - d]
    return mean_and_error(v), v


def median_of_means(r):
    """The median of 8 groups of consecutive calls' means (from 16 calls; else trimmed)."""
    if len(r) < 16:
        return trimmed_mean(r)
    g = 8
    s = len(r) // g
    means = [sum(r[i * s : (i + 1) * s]) / s for i in range(g)]
    med = statistics.median(means)
    err = 1.2533 * statistics.stdev(means) / math.sqrt(g) / med if med else 1.0
    return (med, err), means


def capped_mean(r):
    """The mean with every call capped at 8 times the median (from 4 calls; else trimmed)."""
    if len(r) < 4:
        return trimmed_mean(r)
    cap = 8 * max(statistics.median(r), 1e-3)
    v = [min(x, cap) for x in r]
    return mean_and_error(v), v


ESTIMATORS = {
    "trimmed mean": trimmed_mean,
    "mean": plain_mean,
    "drop slowest 1/16": drop_sixteenth,
    "median of means": median_of_means,
    "capped at 8x median": capped_mean,
}


def typical_all(runs, estimator):
    """Every candidate's (typical, error), each error at least the pooled spread's (as the build)."""
    out, kept = [], []
    for r in runs:
        (m, e), k = estimator(r)
        out.append([m, e])
        kept.append(k)
    sum_sq, dof = 0.0, 0
    for k, t in zip(kept, out):
        if len(k) < 2 or t[0] in (0, math.inf):
            continue
        sum_sq += sum(((x - t[0]) / t[0]) ** 2 for x in k)
        dof += len(k) - 1
    if dof:
        spread = math.sqrt(sum_sq / dof)
        for k, t in zip(kept, out):
            if len(k) >= 2:
                t[1] = max(t[1], spread / math.sqrt(len(k)))
    return out


def measured_best(times, algos, predicted):
    """The candidate `select::measured_best` fixes: times[r][i] = (typical, error) of rank
    r's candidate i, each candidate counted at its slowest rank."""
    worst = [max((t[i] for t in times), key=lambda x: x[0]) for i in range(len(algos))]
    trial = [(a, w[0], 100 * w[1], pr) for a, w, pr in zip(algos, worst, predicted)]
    return trial_replay.decide(trial, TRIAL_LOG_FLOOR)


def decisions(path):
    """(transport, ranks, shape, loop times, prices, candidates, fixed, runs by rank) per decision."""
    transport, ranks = os.path.basename(path).split("-")[:2]
    ranks = int(ranks)
    cells, _ = cost_bars.parse([path])  # the placements are not used here
    runs, info = defaultdict(dict), {}
    with open(path) as f:
        for line in f:
            m = DEBUG.search(line)
            if m:
                key = (m.group(1), int(m.group(2)), bool(m.group(3)))
                runs[key][int(m.group(5))] = [[float(x) for x in s.split()] for _, s in RUNS.findall(m.group(4))]
            m = INFO.search(line)
            if m:
                key = (m.group(1), int(m.group(2)), "cannot map" in m.group(3))
                info[key] = ([(a, float(pr)) for a, _, _, pr in CANDIDATE.findall(m.group(4))], m.group(5))
    for key, by_rank in runs.items():
        if key not in info or len(by_rank) < ranks:
            continue
        candidates, fixed = info[key]
        cell = next((v for (_, _, coll, size), v in cells.items() if coll == key[0] and size == key[1]), None)
        if cell is None or any(a not in cell for a, _ in candidates) or min(pr for _, pr in candidates) <= 0:
            continue
        loop = {a: cell[a][0] for a, _ in candidates}
        yield transport, ranks, key, loop, candidates, fixed, [by_rank[r] for r in sorted(by_rank)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--min-us", type=float, default=0.01)
    ap.add_argument("--misses", action="store_true", help="list each rule's choices over 1.10x the fastest")
    args = ap.parse_args()
    result = defaultdict(list)
    for d in args.dirs:
        for path in sorted(glob.glob(os.path.join(d, "[st]*-*.log"))):
            for transport, ranks, key, loop, candidates, fixed, by_rank in decisions(path):
                if any(not r for rank in by_rank for r in rank):
                    continue
                if min(statistics.mean(r) for rank in by_rank for r in rank) < args.min_us:
                    continue
                algos = [a for a, _ in candidates]
                prices = [pr for _, pr in candidates]
                fastest = min(loop.values())
                shape = (transport, ranks) + key
                result[(transport, "model")].append((loop[algos[0]] / fastest, shape))
                result[(transport, "logged")].append((loop[fixed] / fastest, shape))
                for name, estimator in ESTIMATORS.items():
                    times = [typical_all(rank, estimator) for rank in by_rank]
                    result[(transport, name)].append((loop[measured_best(times, algos, prices)] / fastest, shape))
    print("| transport | rule | decisions | over 1.10x the fastest | over 1.03x | geomean |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for (transport, name), v in result.items():
        gm = math.exp(sum(math.log(x) for x, _ in v) / len(v))
        print(
            f"| {transport} | {name} | {len(v)} | {sum(1 for x, _ in v if x > 1.10)} | "
            f"{sum(1 for x, _ in v if x > 1.03)} | {gm:.3f} |"
        )
    if args.misses:
        for (transport, name), v in result.items():
            for x, shape in v:
                if x > 1.10:
                    print(f"{name}: {x:.2f} {shape}")


if __name__ == "__main__":
    main()
