#!/usr/bin/env python3
"""Writes gRPC frames of tokenwise.v1.RouteRequest for h2load's -d, from the bundled data.

Usage: frames.py OUT_DIR  → OUT_DIR/{p50,p90,2kb}.bin (+ sizes.txt)
Tasks are real prompts from models/data/routellm-train.jsonl.gz picked at size percentiles.
"""
import gzip, json, os, struct, sys

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)

def field(num, data):
    return varint((num << 3) | 2) + varint(len(data)) + data

def frame(task, workflow):
    msg = field(1, task.encode()) + field(2, workflow.encode())
    return b"\x00" + struct.pack(">I", len(msg)) + msg

here = os.path.dirname(os.path.abspath(__file__))
data = os.path.join(here, "..", "..", "models", "data", "routellm-train.jsonl.gz")
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
recs = [json.loads(l) for l in gzip.open(data, "rt")]
recs.sort(key=lambda r: len(r["prompt"].encode()))
picks = {"p50": recs[len(recs) // 2], "p90": recs[len(recs) * 9 // 10]}
big = next(r for r in recs if len(r["prompt"].encode()) >= 2048)
picks["2kb"] = dict(big, prompt=big["prompt"].encode()[:2048].decode(errors="ignore"))
with open(os.path.join(out, "sizes.txt"), "w") as f:
    for name, r in picks.items():
        with open(os.path.join(out, name + ".bin"), "wb") as b:
            b.write(frame(r["prompt"], r["workflow"]))
        f.write(f"{name} {len(r['prompt'].encode())} bytes ({r['workflow']})\n")
print(open(os.path.join(out, "sizes.txt")).read(), end="")
