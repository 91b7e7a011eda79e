#!/usr/bin/env python3
"""Summarises `oxccl-bench --explain` logs against the cost model's bars.

Usage: scripts/cost-bars.py LOG... [--cells]

Logs of several sweeps may be given together: each variant's best time per cell is kept.

For every (transport, ranks, collective, size) it takes the fastest forced algorithm (the
oracle), the automatic choice, and their ratio (the chosen algorithm's own forced row, and
the separately measured `auto` row; where `mapped` is chosen but the buffers cannot be
mapped, its fallback); and for every algorithm at 64 KiB and above, its
prediction against its measured time. Out-of-place times. Prints markdown.

Where the rows carry the in-place prediction too (`predicted X in-place Y`), it also counts
the in-place times within 25% of that prediction, and of the out-of-place one.

It also counts the cells where the automatic choice ran another algorithm than the model's
best-priced one (the trials overturned the model, see src/select.rs) and whether that
algorithm's own time was more than 3% better or worse than the model's pick's.

Where the logs carry `oxccl-bench`'s cache-line round trips (`# cache-line round trip ...`,
printed before a run, between sizes where it moved, and after), the bars are also given
apart for the cells measured with the cores near each other, far apart (round trip above the
widest gap, over 2x, between the round trips seen in the logs), or moving during the size
("mixed").
"""

import re
import statistics
import sys
from collections import defaultdict

HEADER = re.compile(r"^# oxccl-bench (\w+): (\d+) ranks over (\w+),")
PROBE = re.compile(r"^# cache-line round trip (before the run|from here on|after the run): .*?(\d+)(?:-(\d+))? ns")
IN_PLACE = re.compile(r"^\s*(\d+)\s+(\d+)\s+\S+\s+\S+\s+-?\d+\s+[\d.]+\s+\S+\s+\S+\s+\S+\s+([\d.]+)\s+\S+\s+\S+\s+\S+\s+(\S+)\s+predicted\s+(\S+)\s+in-place\s+(\S+)")
ROW = re.compile(r"^\s*(\d+)\s+(\d+)\s+\S+\s+\S+\s+-?\d+\s+([\d.]+)\s+\S+\s+\S+\s+\S+\s+[\d.]+\s+\S+\s+\S+\s+\S+\s+(\S+)(?:\s+predicted\s+(\S+))?")


def parse(paths):
    """Returns the cells, and for each cell the round trips (ns) in force when its size
    started and when it ended (None where the logs carry none)."""
    cells = defaultdict(dict)  # (transport, ranks, coll, size) -> {variant: (us, predicted)}
    placed = {}  # (transport, ranks, coll, size) -> (ns at the start, ns at the end)
    for path in paths:
        ctx = None
        rt = None  # the round trip in force
        group = None  # the cell whose rows came last
        for line in open(path):
            m = PROBE.match(line)
            if m:
                ns = float(m.group(3) or m.group(2))  # a range: its slowest
                if group is not None and m.group(1) != "before the run":
                    placed[group] = (placed[group][0], ns)
                if m.group(1) != "after the run":
                    rt = ns
                continue
            m = HEADER.match(line)
            if m:
                ctx = (m.group(3), int(m.group(2)), m.group(1))
                group = None
                continue
            m = ROW.match(line)
            if not m or ctx is None:
                continue
            size, us, variant, pred = int(m.group(1)), float(m.group(3)), m.group(4), m.group(5)
            if rt is not None and group != ctx + (size,):
                group = ctx + (size,)
                placed[group] = (rt, rt)
            p = float(pred) if pred not in (None, "-") else None
            # Several sweeps of one cell: each variant's best time, as one longer run would.
            old = cells[ctx + (size,)].get(variant)
            if old is None or us < old[0]:
                cells[ctx + (size,)][variant] = (us, p)
    return cells, placed


def parse_in_place(paths):
    """The in-place column of logs whose rows carry the in-place prediction too (`predicted X
    in-place Y`): (transport, ranks, coll, size) -> {variant: (in-place us, predicted out of
    place, predicted in place)}, each variant's best time over the logs."""
    cells = defaultdict(dict)
    for path in paths:
        ctx = None
        for line in open(path):
            m = HEADER.match(line)
            if m:
                ctx = (m.group(3), int(m.group(2)), m.group(1))
                continue
            m = IN_PLACE.match(line)
            if not m or ctx is None or m.group(6) in ("-", "NaN", "nan"):
                continue
            key, us = ctx + (int(m.group(1)),), float(m.group(3))
            old = cells[key].get(m.group(4))
            if old is None or us < old[0]:
                cells[key][m.group(4)] = (us, float(m.group(5)), float(m.group(6)))
    return cells


def placement_of(placed):
    """Each cell's placement: near, far or mixed (see the module doc)."""
    seen = [ns for pair in placed.values() for ns in pair]
    if not seen:
        return {}
    # Far: above the widest gap between the round trips seen, where it is over 2x. (Twice
    # the fastest would count the usual near placement as far in logs that also caught the
    # two vCPUs on one core's two hardware threads: 26 ns, against 59-66 near, 293-298 far.)
    levels = sorted(set(seen))
    gaps = [(b / a, (a * b) ** 0.5) for a, b in zip(levels, levels[1:]) if a > 0]
    ratio, cut = max(gaps, default=(1.0, 0.0))
    limit = cut if ratio > 2 else float("inf")
    side = lambda ns: "far" if ns > limit else "near"  # noqa: E731
    return {k: side(a) if side(a) == side(b) else "mixed" for k, (a, b) in placed.items()}


def chosen(v):
    """The algorithm the automatic choice ran in a cell's variants `v` (see `parse`), as its
    forced row names it; None without an `auto` row."""
    forced = {k for k in v if not k.startswith("auto(")}
    auto = [k for k in v if k.startswith("auto(")]
    if not auto:
        return None
    # `ring+single-copy`: the ring with its messages by single copy below the transport's
    # threshold (fixed by trials); its forced row is the ring's.
    name = auto[0][5:-1].replace("+single-copy", "")
    if ",fallback=" in name:
        # `mapped` priced best, with its fallback for buffers that cannot be mapped: with
        # heap buffers (no forced mapped row) the fallback is what ran.
        first, fallback = name.split(",fallback=")
        return first if first in forced else fallback
    if name not in forced:
        # Logs of builds that did not print the fallback: the best-priced other algorithm.
        priced = [(v[k][1], k) for k in forced if v[k][1] is not None]
        return min(priced)[1] if priced else name
    return name


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_cells = "--cells" in sys.argv
    cells, placed = parse(args)
    where = placement_of(placed)
    by_place = defaultdict(lambda: [0, 0, 0, 0])  # placement -> predictions, within 25%, cells, choice within 10%
    choice = defaultdict(lambda: [0, 0, 0, 0])  # transport -> cells, auto<=1.1, own<=1.1, own<=1.25
    per = defaultdict(lambda: [0, 0])  # (transport, ranks, coll) -> (within 10%, cells)
    trials = defaultdict(lambda: [0, 0, 0, 0])  # transport -> cells, overturned: worse, better, tie
    preds = defaultdict(list)  # transport -> [pred/meas]
    per_algo = defaultdict(lambda: [0, 0])
    rows = []
    for key in sorted(cells):
        t, p, coll, size = key
        v = cells[key]
        forced = {k: x for k, x in v.items() if not k.startswith("auto(")}
        auto = [(k, x) for k, x in v.items() if k.startswith("auto(")]
        for name, (us, pred) in forced.items():
            if size >= 65536 and pred is not None and us > 0:
                r = pred / us
                preds[t].append(r)
                bp = by_place[(t, where.get(key, "unknown"))]
                bp[0] += 1
                bp[1] += abs(r - 1) <= 0.25
                pa = per_algo[(t, coll, name)]
                pa[1] += 1
                pa[0] += abs(r - 1) <= 0.25
        if not forced or not auto or size == 0:
            continue
        oracle, (ous, _) = min(forced.items(), key=lambda kv: kv[1][0])
        choice_name = chosen(v)
        aus = auto[0][1][0]
        own = forced.get(choice_name, (aus, None))[0]
        ra, ro = aus / ous, own / ous
        c = choice[t]
        c[0] += 1
        c[1] += ra <= 1.10
        c[2] += ro <= 1.10
        c[3] += ro <= 1.25
        pc = per[(t, p, coll)]
        pc[0] += ro <= 1.10
        pc[1] += 1
        bp = by_place[(t, where.get(key, "unknown"))]
        bp[2] += 1
        bp[3] += ro <= 1.10
        rows.append((t, p, coll, size, oracle, ous, choice_name, aus, ra, ro))
        priced = [(pv, k) for k, (_, pv) in forced.items() if pv is not None]
        if priced and choice_name in forced:
            model_pick = min(priced)[1]
            tr = trials[t]
            tr[0] += 1
            if choice_name != model_pick:
                r = own / forced[model_pick][0]
                tr[1 if r > 1.03 else 2 if r < 1 / 1.03 else 3] += 1

    print("### Choice against the oracle\n")
    print("| transport | cells | auto row within 10% | chosen algorithm within 10% | within 25% |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for t, (n, a, o, o25) in sorted(choice.items()):
        print(f"| {t} | {n} | {a} ({100 * a / n:.0f}%) | {o} ({100 * o / n:.0f}%) | {o25} ({100 * o25 / n:.0f}%) |")
    print("\nWithin 10% by the choice's own time, per world size and collective:\n")
    colls = ["all_reduce", "all_gather", "reduce_scatter", "all_to_all"]
    print("| transport | ranks | " + " | ".join(colls) + " |")
    print("| --- | ---: |" + " --- |" * len(colls))
    for t, p in sorted({(k[0], k[1]) for k in per}):
        vals = [per.get((t, p, c), [0, 0]) for c in colls]
        print(f"| {t} | {p} | " + " | ".join(f"{a}/{n}" for a, n in vals) + " |")
    print("\n### Predicted against measured (every algorithm, 64 KiB and above)\n")
    print("| transport | predictions | within 25% | median pred/meas | quartiles |")
    print("| --- | ---: | ---: | ---: | --- |")
    for t, rs in sorted(preds.items()):
        w = sum(abs(r - 1) <= 0.25 for r in rs)
        q = statistics.quantiles(rs, n=4)
        print(f"| {t} | {len(rs)} | {w} ({100 * w / len(rs):.0f}%) | {statistics.median(rs):.3f} | {q[0]:.2f} {q[1]:.2f} {q[2]:.2f} |")
    print("\nPer algorithm (sizes x world sizes within 25%):\n")
    print("| transport | collective | algorithm | within 25% |")
    print("| --- | --- | --- | ---: |")
    for (t, coll, name), (w, n) in sorted(per_algo.items()):
        print(f"| {t} | {coll} | {name} | {w}/{n} |")
    if where:
        print("\n### By the cores' placement\n")
        print("| transport | placement | predictions within 25% | choice within 10% of the oracle |")
        print("| --- | --- | ---: | ---: |")
        for (t, pl), (n, w, c, c10) in sorted(by_place.items()):
            pw = f"{w}/{n} ({100 * w / n:.0f}%)" if n else "-"
            pc = f"{c10}/{c} ({100 * c10 / c:.0f}%)" if c else "-"
            print(f"| {t} | {pl} | {pw} | {pc} |")
    print("\n### Trials against the model (the choice was not the best-priced algorithm)\n")
    print("| transport | cells | overturned | worse by over 3% | better by over 3% | within 3% |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for t, (n, w, b, e) in sorted(trials.items()):
        print(f"| {t} | {n} | {w + b + e} | {w} | {b} | {e} |")
    in_place = parse_in_place(args)
    if in_place:
        # transport -> [predictions, in-place form within 25%, out-of-place price within 25%]
        ip = defaultdict(lambda: [0, 0, 0])
        for (t, p, coll, size), v in in_place.items():
            for name, (us, out_pred, in_pred) in v.items():
                if size < 65536 or name.startswith("auto(") or us <= 0:
                    continue
                x = ip[t]
                x[0] += 1
                x[1] += abs(in_pred / us - 1) <= 0.25
                x[2] += abs(out_pred / us - 1) <= 0.25
        print("\n### In place (every algorithm, 64 KiB and above)\n")
        print("| transport | predictions | in-place price within 25% | out-of-place price within 25% |")
        print("| --- | ---: | ---: | ---: |")
        for t, (n, w, wo) in sorted(ip.items()):
            print(f"| {t} | {n} | {w} ({100 * w / n:.0f}%) | {wo} ({100 * wo / n:.0f}%) |")
    if show_cells:
        print("\n### Every cell\n")
        print("| transport | ranks | collective | size | oracle | oracle us | auto choice | auto us | ratio (auto row) | ratio (choice's own time) |")
        print("| --- | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | ---: |")
        for t, p, coll, size, oracle, ous, choice_name, aus, ra, ro in rows:
            print(f"| {t} | {p} | {coll} | {size} | {oracle} | {ous:.1f} | {choice_name} | {aus:.1f} | {ra:.2f} | {ro:.2f} |")


if __name__ == "__main__":
    main()
