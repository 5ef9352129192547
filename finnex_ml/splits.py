"""Leak-free temporal splits, walk-forward folds, and statistics fitted on training dates only.

Gap rule. Every label at date t looks forward to t+h (h <= H = the longest horizon). Sets are in
time order (train < val < test; in a fold, fold-train < fold-val), and between an earlier set E
and the next set L we require, in trading-calendar positions,

    pos(min L) - pos(max E) > gap,   gap = H + embargo

so every label window [t, t+H] of E ends before the first date of L: no later-set date (whose
image or label the model is evaluated on) is ever a training target, and no training label uses
a price from the evaluation period. We *purge* the dates of E that violate it (the standard
choice: evaluation sets keep their size). ``embargo`` (default 0) adds sessions on top.

Why the image lookback does not enter the default gap: inputs only look backward (image t
covers sessions t-55..t, normalised with trailing statistics), so a later set's inputs overlapping
an earlier set's period reveals nothing about the later set's labels. It would matter only for
a set placed *before* training data (non-anchored CV); none is here. Pass ``embargo`` to be
more conservative (e.g. to decorrelate neighbouring images, which share 55 of 56 sessions).

Splits are by date (never by patch), so all 256 patches of an image stay in one set.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

import numpy as np

from finnex_ml.errors import ConfigError, DataInputError

SET_NAMES = ("train", "val", "test")


def required_gap(max_horizon: int, embargo: int = 0) -> int:
    """Minimum number of calendar positions between the last date of a set and the first of the
    next, exclusive: ``pos(next_min) - pos(prev_max) > required_gap``."""
    if max_horizon < 1 or embargo < 0:
        raise ConfigError(f"max_horizon must be >= 1 and embargo >= 0, got {max_horizon}, {embargo}")
    return max_horizon + embargo


@dataclass(frozen=True)
class Split:
    train: tuple[date, ...]
    val: tuple[date, ...]
    test: tuple[date, ...]
    purged: tuple[date, ...]
    gap: int
    max_horizon: int
    embargo: int

    def sets(self) -> dict[str, tuple[date, ...]]:
        return {"train": self.train, "val": self.val, "test": self.test}


@dataclass(frozen=True)
class Fold:
    index: int
    train: tuple[date, ...]
    val: tuple[date, ...]
    purged: tuple[date, ...] = field(default=())


def _positions(dates: Sequence[date], sessions: Sequence[date]) -> tuple[list[date], dict[date, int]]:
    pos = {d: i for i, d in enumerate(sessions)}
    ds = sorted(set(dates))
    bad = [d for d in ds if d not in pos]
    if bad:
        raise DataInputError(f"{len(bad)} date(s) are not sessions of the calendar, first {bad[0]}", date=str(bad[0]))
    return ds, pos


def _purge(
    earlier: Sequence[date], later_first: date, pos: Mapping[date, int], gap: int
) -> tuple[list[date], list[date]]:
    keep = [d for d in earlier if pos[d] + gap < pos[later_first]]
    return keep, [d for d in earlier if pos[d] + gap >= pos[later_first]]


def temporal_split(
    dates: Iterable[date],
    sessions: Sequence[date],
    max_horizon: int,
    *,
    train: float = 0.8,
    val: float = 0.1,
    embargo: int = 0,
) -> Split:
    """Train/val/test in time order by date counts (test gets ``1 - train - val``), then the
    last dates of train and of val are purged so that the gap rule holds (module docstring)."""
    if not (0 < train < 1 and 0 < val < 1 and train + val < 1 - 1e-9):
        raise ConfigError(f"fractions need 0 < train, val and train + val < 1, got train={train}, val={val}")
    gap = required_gap(max_horizon, embargo)
    ds, pos = _positions(list(dates), sessions)
    n = len(ds)
    c1 = int(math.floor(n * train + 1e-9))
    c2 = int(math.floor(n * (train + val) + 1e-9))
    if c1 < 1 or c2 <= c1 or c2 >= n:
        raise ConfigError(
            f"{n} dates are too few for fractions train={train}, val={val}: a set would be empty before purging"
        )
    tr, pt = _purge(ds[:c1], ds[c1], pos, gap)
    va, pv = _purge(ds[c1:c2], ds[c2], pos, gap)
    te = ds[c2:]
    for name, s in (("train", tr), ("val", va)):
        if not s:
            raise ConfigError(
                f"{n} dates: the {name} set is empty after purging a gap of {gap} sessions "
                f"(horizon {max_horizon} + embargo {embargo}); add dates or change fractions"
            )
    return Split(tuple(tr), tuple(va), tuple(te), tuple(pt + pv), gap, max_horizon, embargo)


def walk_forward(
    dates: Iterable[date],
    sessions: Sequence[date],
    max_horizon: int,
    *,
    folds: int,
    embargo: int = 0,
) -> list[Fold]:
    """Expanding-window folds over ``dates`` (pass the development dates, i.e. everything before
    the test set and its purge). The dates are cut into ``folds + 1`` contiguous blocks; fold k
    (1..folds) validates on block k and trains on blocks 0..k-1, purged by the gap rule."""
    if folds < 1:
        raise ConfigError(f"folds must be >= 1, got {folds}")
    gap = required_gap(max_horizon, embargo)
    ds, pos = _positions(list(dates), sessions)
    if len(ds) < folds + 1:
        raise ConfigError(f"{len(ds)} development dates cannot make {folds} walk-forward folds")
    blocks = [list(b) for b in np.array_split(np.array(ds, dtype=object), folds + 1)]
    out = []
    for k in range(1, folds + 1):
        history = [d for b in blocks[:k] for d in b]
        keep, purged = _purge(history, blocks[k][0], pos, gap)
        if not keep:
            raise ConfigError(
                f"walk-forward fold {k}: no training dates left after purging a gap of {gap} "
                f"sessions; use fewer folds or more dates ({len(ds)} development dates)"
            )
        out.append(Fold(k, tuple(keep), tuple(blocks[k]), tuple(purged)))
    return out


def development_dates(split: Split) -> list[date]:
    """Everything before the test set that may be used for model selection: train, its purge, val."""
    return sorted(set(split.train) | set(split.val) | {d for d in split.purged if d < split.val[0]})


def check_no_leak(
    sets: Mapping[str, Sequence[date]], sessions: Sequence[date], max_horizon: int, gap: int
) -> list[str]:
    """Violations of the gap rule and of label-window isolation among ordered sets (empty = ok).

    ``sets`` in time order. Checks disjointness, ``pos(later min) - pos(earlier max) > gap``, and
    that no window [t, t+max_horizon] of one set contains a date of another set.
    """
    pos = {d: i for i, d in enumerate(sessions)}
    problems: list[str] = []
    names = list(sets)
    for a_i, a in enumerate(names):
        A = sorted(sets[a])
        for b in names[a_i + 1 :]:
            B = sorted(sets[b])
            if not A or not B:
                continue
            both = set(A) & set(B)
            if both:
                problems.append(f"{a} and {b} share {len(both)} date(s), first {min(both)}")
            if not pos[B[0]] - pos[A[-1]] > gap:
                problems.append(
                    f"{a} ends {A[-1]} and {b} starts {B[0]}: {pos[B[0]] - pos[A[-1]]} sessions apart, "
                    f"need more than {gap}"
                )
    occupied = {pos[d]: n for n, s in sets.items() for d in s}
    for n, s in sets.items():
        for d in s:
            for q in range(pos[d], pos[d] + max_horizon + 1):
                other = occupied.get(q)
                if other is not None and other != n:
                    problems.append(f"label window of {n} date {d} (+{max_horizon}) reaches {other} date {sessions[q]}")
                    break
    return problems


# ---- statistics ------------------------------------------------------------------------------


class RunningMoments:
    """Per-channel count, mean and M2 merged image by image (Chan et al.), float64 throughout,
    so the statistics of many images need one image in memory at a time."""

    def __init__(self, channels: int = 3) -> None:
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)
        self.items = 0

    def add(self, array: np.ndarray) -> None:
        x = np.asarray(array).reshape(-1, self.mean.size)
        m = x.shape[0]
        if m == 0:
            return
        mu = x.mean(axis=0, dtype=np.float64)
        m2 = ((x - mu) ** 2).sum(axis=0, dtype=np.float64)
        self.merge_moments(m, mu, m2)
        self.items += 1

    def merge_moments(self, m: int, mu: np.ndarray, m2: np.ndarray) -> None:
        n = self.n
        tot = n + m
        delta = mu - self.mean
        self.mean = self.mean + delta * (m / tot)
        self.m2 = self.m2 + m2 + delta**2 * (n * m / tot)
        self.n = tot

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel."""
        return np.sqrt(self.m2 / self.n) if self.n else np.full(self.mean.shape, np.nan)

    def to_dict(self) -> dict:
        return {
            "pixels_per_channel": int(self.n),
            "images": self.items,
            "channel_mean": [float(v) for v in self.mean],
            "channel_std": [float(v) for v in self.std],
        }


def class_weights(classes: Sequence[int] | np.ndarray, n_classes: int = 3) -> tuple[list[float], list[int]]:
    """Inverse-frequency weights ``n / (K * n_c)`` and the counts, K = classes present (sklearn's
    "balanced": the mean weight over samples is 1); an absent class gets weight 0."""
    c = np.asarray(classes, dtype=np.int64)
    if c.size and (c.min() < 0 or c.max() >= n_classes):
        raise DataInputError(f"class codes must lie in 0..{n_classes - 1}, got {sorted(set(c.tolist()))[:5]}")
    counts = np.bincount(c, minlength=n_classes)
    present = int((counts > 0).sum())
    w = [float(c.size / (present * k)) if k else 0.0 for k in counts]
    return w, [int(k) for k in counts]


__all__ = [
    "Fold",
    "RunningMoments",
    "SET_NAMES",
    "Split",
    "check_no_leak",
    "class_weights",
    "development_dates",
    "required_gap",
    "temporal_split",
    "walk_forward",
]
