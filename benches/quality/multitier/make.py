#!/usr/bin/env python3
"""Builds the multi-tier development set (benches/quality/multitier/multitier.jsonl.gz).

Deterministic and stdlib only: every random draw is a hash of (record id, model), the samples
are the records whose sha256(id) ranks lowest, and the gzip header carries mtime 0, so two runs
give byte-identical output. See README.md next to this file for what each model is.

Usage (from the repository root or anywhere):  python3 benches/quality/multitier/make.py
Exits non-zero if a required property of the set does not hold.
"""

import gzip
import hashlib
import io
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
SRC = os.path.join(ROOT, "models", "data", "routellm-train.jsonl.gz")
OUT = os.path.join(HERE, "multitier.jsonl.gz")

CHEAP = "mixtral-8x7b-instruct"
PREMIUM = "gpt-4-1106-preview"
SMALL = "small-7b"
CODER = "coder-34b"
# Cheapest first. Prices in cents per 1M tokens (input, output), so that the cost is an exact
# integer divided by 1e8 (USD): no float noise in the written numbers.
MODELS = [SMALL, CHEAP, CODER, PREMIUM]
PRICE_CENTS = {SMALL: (5, 5), CHEAP: (24, 24), CODER: (60, 90), PREMIUM: (1000, 3000)}

WORKFLOWS = ["math", "science", "quiz"]
SAMPLE = {"science": 1100, "quiz": 1100}  # math keeps every GSM8K record

STEM = {
    "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
    "college_computer_science", "college_mathematics", "college_physics", "computer_security",
    "conceptual_physics", "electrical_engineering", "elementary_mathematics",
    "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_mathematics", "high_school_physics", "high_school_statistics",
    "machine_learning", "medical_genetics", "virology", "clinical_knowledge", "college_medicine",
    "nutrition", "professional_medicine",
}

# small-7b: probability that a correct mixtral answer stays correct, per workflow; and that a
# wrong one becomes correct.
SMALL_KEEP = {"math": 0.55, "science": 0.70, "quiz": 0.80}
SMALL_LUCKY = 0.05
# coder-34b: on science, probability of taking gpt-4's score (else mixtral's); on quiz,
# probability that a correct mixtral answer stays correct (a wrong one stays wrong).
CODER_PREMIUM_SCIENCE = 0.5
CODER_KEEP_QUIZ = 0.85

BAR_DEFAULT = 0.835
BAR_NEEDS_PREMIUM = 0.85


def unit(record_id, model):
    """A uniform draw in [0, 1) fixed by (record id, model)."""
    h = hashlib.sha256(f"{record_id}|{model}".encode()).hexdigest()
    return int(h[:16], 16) / 2**64


def rank_key(record_id):
    return hashlib.sha256(record_id.encode()).hexdigest()


def fnv1a(text):
    """64-bit FNV-1a over the UTF-8 bytes, as the project's split uses."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def coarse(workflow):
    if workflow == "gsm8k":
        return "math"
    assert workflow.startswith("mmlu/"), workflow
    return "science" if workflow[len("mmlu/"):] in STEM else "quiz"


def outcome(model, tokens_from, score):
    i, o = tokens_from["input_tokens"], tokens_from["output_tokens"]
    pin, pout = PRICE_CENTS[model]
    return {"score": float(score), "input_tokens": i, "output_tokens": o,
            "cost_usd": (i * pin + o * pout) / 1e8}


def simulate(rec, wf):
    mix = rec["outcomes"][CHEAP]
    gpt = rec["outcomes"][PREMIUM]
    rid = rec["id"]
    for s in (mix["score"], gpt["score"]):
        if s not in (0.0, 1.0):
            sys.exit(f"{rid}: score {s} is not 0 or 1; the derivation assumes binary grades")

    u = unit(rid, SMALL)
    if mix["score"] == 1.0:
        small = 1.0 if u < SMALL_KEEP[wf] else 0.0
    else:
        small = 1.0 if u < SMALL_LUCKY else 0.0

    u = unit(rid, CODER)
    if wf == "math":
        coder = gpt["score"]
    elif wf == "science":
        coder = gpt["score"] if u < CODER_PREMIUM_SCIENCE else mix["score"]
    else:
        coder = 1.0 if (mix["score"] == 1.0 and u < CODER_KEEP_QUIZ) else 0.0

    return {
        SMALL: outcome(SMALL, mix, small),
        CHEAP: dict(mix),
        CODER: outcome(CODER, mix, coder),
        PREMIUM: dict(gpt),
    }


def main():
    with gzip.open(SRC, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]

    pools = {wf: [] for wf in WORKFLOWS}
    for pos, rec in enumerate(records):
        pools[coarse(rec["workflow"])].append((pos, rec))
    available = {wf: len(pools[wf]) for wf in WORKFLOWS}
    for wf, n in SAMPLE.items():
        keep = sorted(pools[wf], key=lambda pr: rank_key(pr[1]["id"]))[:n]
        pools[wf] = sorted(keep, key=lambda pr: pr[0])  # back to file order

    out_records = []
    for wf in WORKFLOWS:
        for _, rec in pools[wf]:
            out_records.append({
                "id": rec["id"],
                "prompt": rec["prompt"],
                "workflow": wf,
                "source": rec["source"],
                "outcomes": simulate(rec, wf),
            })

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for r in out_records:
            gz.write((json.dumps(r, ensure_ascii=False, separators=(", ", ": ")) + "\n")
                     .encode("utf-8"))
    data = buf.getvalue()
    with open(OUT, "wb") as f:
        f.write(data)

    # ---- report and checks -------------------------------------------------------------
    stats = {}  # (wf, model) -> [n, score sum, cost sum]
    for r in out_records:
        for m in MODELS:
            o = r["outcomes"].get(m)
            s = stats.setdefault((r["workflow"], m), [0, 0.0, 0.0])
            if o is not None:
                s[0] += 1
                s[1] += o["score"]
                s[2] += o["cost_usd"]
    rel = os.path.relpath(OUT, ROOT)
    print(f"wrote {rel}: {len(out_records)} records, {len(data):,} bytes, "
          f"sha256 {hashlib.sha256(data).hexdigest()}")
    print("source records per workflow: "
          + ", ".join(f"{wf} {available[wf]}" for wf in WORKFLOWS))
    held = {wf: sum(1 for r in out_records if r["workflow"] == wf and fnv1a(r["id"]) % 5 == 0)
            for wf in WORKFLOWS}
    print("held-out fifth (fnv1a(id) % 5 == 0) per workflow: "
          + ", ".join(f"{wf} {held[wf]}" for wf in WORKFLOWS)
          + f"; total {sum(held.values())}")
    print()
    print("| workflow | model | records | mean score | total cost (USD) | cost vs gpt-4 |")
    print("|---|---|---:|---:|---:|---:|")
    for wf in WORKFLOWS:
        pc = stats[(wf, PREMIUM)][2]
        for m in MODELS:
            n, q, c = stats[(wf, m)]
            print(f"| {wf} | {m} | {n} | {q / n:.4f} | {c:.4f} | {100 * c / pc:.2f}% |")
    n_all = len(out_records)
    print("| all | " + " |\n| all | ".join(
        f"{m} | {n_all} | {sum(stats[(wf, m)][1] for wf in WORKFLOWS) / n_all:.4f} | "
        f"{sum(stats[(wf, m)][2] for wf in WORKFLOWS):.4f} | "
        f"{100 * sum(stats[(wf, m)][2] for wf in WORKFLOWS) / sum(stats[(wf, PREMIUM)][2] for wf in WORKFLOWS):.2f}%"
        for m in MODELS) + " |")
    print()

    failures = []

    def check(ok, what):
        print(f"[{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    def mean(wf, m):
        n, q, _ = stats[(wf, m)]
        return q / n

    def cost(wf, m):
        return stats[(wf, m)][2]

    share = cost("math", CODER) / cost("math", PREMIUM)
    check(mean("math", CODER) == mean("math", PREMIUM) and share < 0.10,
          f"(a) math: {CODER} mean {mean('math', CODER):.4f} == {PREMIUM} "
          f"{mean('math', PREMIUM):.4f}, at {100 * share:.2f}% of its cost (< 10%)")
    check(mean("quiz", CHEAP) > mean("quiz", CODER),
          f"(b) quiz: {CHEAP} mean {mean('quiz', CHEAP):.4f} > {CODER} "
          f"{mean('quiz', CODER):.4f}")
    sizes = {wf: stats[(wf, PREMIUM)][0] for wf in WORKFLOWS}
    complete = all(set(r["outcomes"]) == set(MODELS) for r in out_records)
    check(min(sizes.values()) >= 700 and complete,
          "(c) records per workflow " + ", ".join(f"{wf} {n}" for wf, n in sizes.items())
          + f" (each >= 700); every record has all {len(MODELS)} models: {complete}")
    check(all(mean(wf, SMALL) < mean(wf, CHEAP) for wf in WORKFLOWS),
          f"    {SMALL} below {CHEAP} on every workflow")
    check(len(set(r["id"] for r in out_records)) == n_all, "    ids unique")
    check(len(data) < 1_000_000, f"    output under 1 MB ({len(data):,} bytes)")

    prem = sum(stats[(wf, PREMIUM)][1] for wf in WORKFLOWS) / n_all
    if prem >= BAR_NEEDS_PREMIUM:
        bar = BAR_DEFAULT
        why = f">= {BAR_NEEDS_PREMIUM}: keep the default bar"
    else:
        bar = round(prem - 0.02, 3)
        why = f"< {BAR_NEEDS_PREMIUM}: bar = premium quality - 0.02"
    print()
    print(f"all-premium ({PREMIUM}) mean quality over the set: {prem:.4f} ({why})")
    print(f"bar for benches/quality/run.sh: {bar:.3f}")

    if failures:
        print(f"{len(failures)} required propert{'y' if len(failures) == 1 else 'ies'} failed",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
