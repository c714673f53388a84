#!/usr/bin/env python3
"""Percentiles from h2load --log-file files: summary.py LOG... → 'n p50 p99 p999 non200' (µs)."""
import sys

lat, bad = [], 0
for path in sys.argv[1:]:
    for line in open(path):
        parts = line.split()
        if len(parts) < 3:
            continue
        status, us = int(parts[1]), int(parts[2])
        if status != 200:
            bad += 1
        lat.append(us)
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0
print(len(lat), pct(0.50), pct(0.99), pct(0.999), bad)
