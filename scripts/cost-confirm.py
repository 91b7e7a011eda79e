#!/usr/bin/env python3
"""Measures again the cells of a bar sweep that missed, to tell a wrong choice from noise.

Usage: scripts/cost-confirm.py [--runs R] [--bench PATH] [--out DIR] [--predictions] LOG...

LOG are `oxccl-bench --explain` logs of the bar sweep (benches/COST_MODEL.md, "The bars").
For every cell where the chosen algorithm's own time was more than 10% above the fastest
algorithm's (the oracle), it runs `oxccl-bench --compare CHOICE,ORACLE` at that one size R
times (default 5), each run a fresh world: on this machine a process keeps the scheduler's
placement of its ranks for its life, so runs of several processes sample that too. Each
run times both algorithms interleaved (twice, best kept, as the sweep does). The cell's
confirmed ratio is the median over runs of the choice's time over the oracle's: above 1.10
the choice is wrong; at or below it the sweep's miss was the machine's noise.

Prints a markdown table: the sweep's ratio, the confirmed one and every run's.

With `--predictions` it does the same for the other bar: every algorithm whose time at 64 KiB
or above was not within 25% of its prediction is timed again alone (`--compare ALGO`) at that
size in R fresh worlds, and the median time is set against the sweep's prediction (which the
profile and build fix: run it under the sweep's `OXCCL_TUNING_FILE`, if any). Outside
[0.8, 1.25] the prediction is wrong; inside, the sweep's miss was the machine's noise.
"""

import importlib.util
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("cost_bars", os.path.join(HERE, "cost-bars.py"))
cost_bars = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cost_bars)

ROW = re.compile(r"^\s*(\d+)\s+\d+\s+\S+\s+\S+\s+-?\d+\s+([\d.]+)\s.*\s(\S+)\s*$")


def misses(cells):
    """(transport, ranks, collective, size, choice, oracle, ratio) of each missed cell."""
    out = []
    for key in sorted(cells):
        if key[3] == 0:
            continue
        v = cells[key]
        forced = {k: x[0] for k, x in v.items() if not k.startswith("auto(")}
        choice = cost_bars.chosen(v)
        if choice not in forced:
            continue
        oracle = min(forced, key=forced.get)
        ratio = forced[choice] / forced[oracle]
        if ratio > 1.10:
            out.append(key + (choice, oracle, ratio))
    return out


def prediction_misses(cells):
    """(transport, ranks, collective, size, algorithm, predicted, measured) of each algorithm
    at 64 KiB and above whose prediction missed its time by more than 25%."""
    out = []
    for key in sorted(cells):
        if key[3] < 65536:
            continue
        for algo, (us, pred) in sorted(cells[key].items()):
            if algo.startswith("auto(") or pred is None or us <= 0:
                continue
            if not 0.8 <= pred / us <= 1.25:
                out.append(key + (algo, pred, us))
    return out


def run_once(bench, t, p, coll, size, algos):
    # About as the sweep measures: many calls below 4 MiB, the bench's defaults up to 16 MiB,
    # a few above.
    n, w = ("100", "10") if size < (4 << 20) else ("20", "5") if size <= (16 << 20) else ("5", "1")
    cmd = [bench, "--ranks", str(p), "--transport", t, "-b", str(size), "-e", str(size), "-n", n, "-w", w,
           "-c", "0", "--collective", coll, "--compare", ",".join(algos)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    times = {}
    for line in out.stdout.splitlines():
        m = ROW.match(line)
        if m:
            times[m.group(3)] = float(m.group(2))
    return times


def over_runs(runs, one):
    """The median of `one()` over `runs` calls (its None answers left out; NaN if all are),
    and every answer, for the table."""
    per_run = [x for x in (one() for _ in range(runs)) if x is not None]
    conf = statistics.median(per_run) if per_run else float("nan")
    return conf, " ".join(f"{r:.2f}" for r in per_run)


def report(out_dir, tsv, cells, ratios, runs_s):
    """One row of the table (the cell's `cells`, its `ratios`, every run's), printed and,
    with `--out`, appended to `tsv` there."""
    fields = [str(c) for c in cells] + [f"{r:.2f}" for r in ratios] + [runs_s]
    print("| " + " | ".join(fields) + " |", flush=True)
    if out_dir:
        with open(os.path.join(out_dir, tsv), "a") as f:
            f.write("\t".join([str(c) for c in cells] + [f"{r:.3f}" for r in ratios] + [runs_s]) + "\n")


def main():
    argv = sys.argv[1:]
    runs, bench, out_dir, predictions = 5, "target/release/oxccl-bench", None, False
    logs = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--runs":
            runs, i = int(argv[i + 1]), i + 2
        elif a == "--bench":
            bench, i = argv[i + 1], i + 2
        elif a == "--out":
            out_dir, i = argv[i + 1], i + 2
            os.makedirs(out_dir, exist_ok=True)
        elif a == "--predictions":
            predictions, i = True, i + 1
        else:
            logs.append(a)
            i += 1
    cells, _ = cost_bars.parse(logs)  # the placements are not used here
    if predictions:
        return confirm_predictions(cells, runs, bench, out_dir)
    todo = misses(cells)
    print(f"{len(todo)} cells missed 10% in the sweep; each measured again in {runs} runs\n")
    print("| transport | ranks | collective | size | choice | oracle | sweep | confirmed | runs |")
    print("| --- | ---: | --- | ---: | --- | --- | ---: | ---: | --- |")
    wrong = 0
    for t, p, coll, size, choice, oracle, ratio in todo:

        def one():
            times = run_once(bench, t, p, coll, size, [choice, oracle])
            if choice in times and oracle in times and times[oracle] > 0:
                return times[choice] / times[oracle]
            return None

        conf, runs_s = over_runs(runs, one)
        wrong += conf > 1.10
        report(out_dir, "confirm.tsv", [t, p, coll, size, choice, oracle], [ratio, conf], runs_s)
    print(f"\n{wrong} of {len(todo)} cells still above 1.10 (median of runs)")


def confirm_predictions(cells, runs, bench, out_dir):
    todo = prediction_misses(cells)
    print(f"{len(todo)} predictions missed 25% in the sweep; each algorithm timed again in {runs} runs\n")
    print("| transport | ranks | collective | size | algorithm | predicted us | sweep | confirmed | runs |")
    print("| --- | ---: | --- | ---: | --- | ---: | ---: | ---: | --- |")
    wrong = 0
    for t, p, coll, size, algo, pred, us in todo:

        def one():
            times = run_once(bench, t, p, coll, size, [algo])
            return pred / times[algo] if times.get(algo, 0) > 0 else None

        conf, runs_s = over_runs(runs, one)
        wrong += not 0.8 <= conf <= 1.25
        report(out_dir, "confirm-predictions.tsv", [t, p, coll, size, algo, f"{pred:.0f}"], [pred / us, conf], runs_s)
    print(f"\n{wrong} of {len(todo)} predictions still outside [0.8, 1.25] (median of runs)")


if __name__ == "__main__":
    main()
