"""Reporting of a sweep, shared by every runner and method:

- `store`: results.csv (one row per run, atomic writes) and metrics.jsonl;
- `fingerprint`: the hash of the config fields that make a result, and their diff;
- `summary`: lr selection, the table of test metrics, average ranks, summary.md, bars;
- `figures`: data efficiency (Fig. 4) and per-tensor weights over training (Fig. 6).
"""
