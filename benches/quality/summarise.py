#!/usr/bin/env python3
"""One-line summaries of `tokenwise replay --json` reports, and the worst of a set of runs.

  summarise.py line REPORT.json LABEL     one line: quality, cost share of premium, hindsight
                                          cost share, explored share, tier shares, per workflow
  summarise.py worst LABEL REPORT.json... the run with the lowest quality and the run with the
                                          highest cost / hindsight cost

A "cost share" is cost / always-premium cost (= 1 - saving_vs_premium). Any field missing from a
report (or null) prints as "-". Stdlib only.
"""

import json
import sys


def load(path):
    try:
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        return r if isinstance(r, dict) else {}
    except (OSError, ValueError):
        return {}


def num(d, *keys):
    """d[k1][k2]... as a float, or None when any step is missing, null or not a number."""
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    if isinstance(d, bool) or not isinstance(d, (int, float)):
        return None
    return float(d)


def fmt(x, spec=".4f"):
    return "-" if x is None else format(x, spec)


def share(saving):
    return None if saving is None else 1.0 - saving


def ratio(a, b):
    return None if a is None or b is None or b <= 0 else a / b


def cost_ratio(r):
    """Realised cost / hindsight cost (how far above the best fixed per-workflow mix)."""
    return ratio(num(r, "cost_usd"), num(r, "hindsight", "cost_usd"))


def line(r):
    parts = [
        f"quality {fmt(num(r, 'quality'))}",
        f"cost share {fmt(share(num(r, 'saving_vs_premium')))}",
        f"hindsight q {fmt(num(r, 'hindsight', 'quality'))}"
        f" cost share {fmt(share(num(r, 'hindsight', 'saving_vs_premium')))}",
        f"cost/hindsight {fmt(cost_ratio(r), '.2f')}",
        f"explored {fmt(num(r, 'explored_share'), '.3f')}",
    ]
    tiers = r.get("tier_share")
    if isinstance(tiers, dict) and tiers:
        parts.append("tiers " + " ".join(f"{t.split('-')[0]} {fmt(num(tiers, t), '.2f')}"
                                         for t in tiers))
    else:
        parts.append("tiers -")
    wfs = r.get("by_workflow")
    if isinstance(wfs, dict) and wfs:
        per = []
        for name, w in wfs.items():
            q = num(w, "quality")
            cs = ratio(num(w, "cost_usd"), num(w, "premium_cost_usd"))
            per.append(f"{name} q {fmt(q, '.3f')} c {fmt(cs, '.3f')}")
        parts.append("; ".join(per))
    else:
        parts.append("by workflow -")
    return " | ".join(parts)


def worst(label, paths):
    runs = [(p, load(p)) for p in paths]
    with_q = [(num(r, "quality"), p, r) for p, r in runs if num(r, "quality") is not None]
    with_c = [(cost_ratio(r), p, r) for p, r in runs if cost_ratio(r) is not None]
    print(f"worst {label}, over {len(runs)} runs:")
    if with_q:
        q, p, r = min(with_q, key=lambda t: t[0])
        print(f"  lowest quality:         {p}: {line(r)}")
    else:
        print("  lowest quality:         -")
    if with_c:
        c, p, r = max(with_c, key=lambda t: t[0])
        print(f"  highest cost/hindsight: {p}: {line(r)}")
    else:
        print("  highest cost/hindsight: -")


def main(argv):
    if len(argv) >= 3 and argv[1] == "line":
        label = " ".join(argv[3:])
        print(f"{label}: {line(load(argv[2]))}" if label else line(load(argv[2])))
        return 0
    if len(argv) >= 3 and argv[1] == "worst":
        worst(argv[2], argv[3:])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
