"""The machine-readable summary each benchmark prints with ``--summary-json``.

One line on stdout, ``SUMMARY <json>``, where the JSON is a list of rows::

    {"stage": ..., "work": "252 sessions x 206 features", "seconds": ..., "baseline": ...,
     "baseline_seconds": ..., "ratio": ..., "ratio_meaning": "x the time of a bare polars read"}

``ratio`` keeps the direction the benchmark itself prints, and ``ratio_meaning`` says which it is:
a time ratio (stage / baseline, higher = slower) or a throughput ratio (baseline time / stage time,
the stage's share of the baseline's speed, higher = faster). ``benchmarks/run_all.py`` collects
the rows into ``benchmarks/results.md``.
"""

from __future__ import annotations

import json
import math

PREFIX = "SUMMARY "


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def row(
    stage: str,
    work: str,
    seconds: float,
    baseline: str | None,
    baseline_seconds: float | None,
    ratio: float | None,
    ratio_meaning: str,
    **extra,
) -> dict:
    return {
        "stage": stage,
        "work": work,
        "seconds": _num(seconds),
        "baseline": baseline,
        "baseline_seconds": _num(baseline_seconds),
        "ratio": _num(ratio),
        "ratio_meaning": ratio_meaning,
        **extra,
    }


def emit(rows: list[dict]) -> None:
    print(PREFIX + json.dumps(rows), flush=True)
