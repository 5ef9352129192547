"""Leak-free normalisation of raw daily features into [0, 1] with trailing statistics only.

Method (``NormConfig`` defaults)
--------------------------------
For session s and feature f, take the raw values of the ``window`` (W = 252) table rows ending
at s, *including* s and nothing after it. Non-finite values (null, NaN, +-inf) are ignored.

* centre  = median of the finite values;
* scale   = IQR / 1.349 (the IQR of a normal distribution is 1.349 sigma); if that is ~0
  (<= ``epsilon * max(1, |centre|)``, e.g. a step-like release series that did not change for
  most of the window) the mean absolute deviation from the median times sqrt(pi/2) is used
  instead; if that is ~0 too, every finite value in the window equals the centre and z = 0
  ("degenerate", value 0.5, which is then the exact truth, not a fill);
* z       = (x_s - centre) / scale;
* value   = 0.5 + 0.5 * tanh(z / (2 * squash_scale)) (the logistic function of z / squash_scale;
  the ``tanh`` squash uses 0.5 + 0.5 * tanh(z / squash_scale)), clipped to [0, 1], stored as float32.

Missing cells
-------------
A cell is *missing* when x_s itself is not finite, or when the window holds fewer than
``min_periods`` finite values. Missing cells get ``fill_value`` (0.5 by default, the squashed
value of the trailing median) and are always reported in a boolean mask alongside the values:
``missing`` in :class:`SessionNorm` / :class:`NormWindow`, the ``missing`` dataset of every stored
image and the ``missing_summary`` of every encoded date. Nothing is filled silently.

Leak-freedom and reproducibility
--------------------------------
The value at s is computed from exactly the ``[W, F]`` block of rows ending at s, by operations
that do not depend on where the block sits (element-wise arithmetic, a sort, selections and a
sequential sum; see ``_normalize_windows``). So it depends only on raw values at dates <= s
(within W rows) and is bit-identical whether computed alone (:func:`normalize_session`), in a
long run, or batched with neighbouring sessions (:class:`TrailingNormalizer`). Enough history is a hard requirement: a session with
fewer than W rows before and including it raises instead of using an expanding window (which
would make the value depend on where the table happens to start).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

from finnex_ml.errors import ConfigError, DataInputError

NORM_VERSION = 1
IQR_TO_SIGMA = 1.349
MEANAD_TO_SIGMA = math.sqrt(math.pi / 2)


@dataclass(frozen=True)
class NormConfig:
    method: str = "rolling_robust_z"
    window: int = 252
    min_periods: int = 63
    squash: str = "logistic"  # or "tanh"
    squash_scale: float = 1.0
    epsilon: float = 1e-9
    fill_value: float = 0.5
    version: int = NORM_VERSION

    def __post_init__(self) -> None:
        if self.method != "rolling_robust_z":
            raise ConfigError(f"unknown normalisation method {self.method!r}")
        if self.squash not in ("logistic", "tanh"):
            raise ConfigError(f"unknown squash {self.squash!r}; use 'logistic' or 'tanh'")
        if self.window < 2 or not 1 <= self.min_periods <= self.window:
            raise ConfigError(
                f"need window >= 2 and 1 <= min_periods <= window, got "
                f"window={self.window}, min_periods={self.min_periods}"
            )
        if not self.squash_scale > 0 or not self.epsilon >= 0:
            raise ConfigError("squash_scale must be > 0 and epsilon >= 0")
        if not 0.0 <= self.fill_value <= 1.0:
            raise ConfigError(f"fill_value {self.fill_value} outside [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            center="median",
            scale="iqr/1.349, fallback mean_abs_dev*sqrt(pi/2)",
            window_rule="the `window` table rows ending at the session, inclusive; no later rows",
            missing_rule="non-finite raw value or fewer than min_periods finite values in the window",
            squash_formula=(
                "0.5 + 0.5*tanh(z / (2*squash_scale))"
                if self.squash == "logistic"
                else "0.5 + 0.5*tanh(z / squash_scale)"
            ),
        )
        return d

    def config_hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormConfig:
        keys = {"method", "window", "min_periods", "squash", "squash_scale", "epsilon", "fill_value", "version"}
        return cls(**{k: v for k, v in d.items() if k in keys})


class SessionNorm(NamedTuple):
    values: np.ndarray  # float32 [F] in [0, 1]; fill_value where missing
    missing: np.ndarray  # bool [F]
    center: np.ndarray  # float64 [F] (NaN when the window has no finite value)
    scale: np.ndarray  # float64 [F] (0 when degenerate)
    short_history: np.ndarray  # bool [F]: fewer than min_periods finite values
    fallback: np.ndarray  # bool [F]: IQR ~0, mean absolute deviation used
    degenerate: np.ndarray  # bool [F]: every finite window value equals the centre


class NormWindow(NamedTuple):
    values: np.ndarray  # float32 [L, F], oldest session first
    missing: np.ndarray  # bool [L, F]
    center: np.ndarray  # float64 [L, F]
    scale: np.ndarray  # float64 [L, F]


def _quantile_sorted(srt: np.ndarray, n: np.ndarray, q: float) -> np.ndarray:
    """Linear-interpolated quantile (numpy's default) along the last axis of rows sorted with
    NaNs last; ``n`` counts each row's finite values."""
    top = np.maximum(n - 1, 0)
    pos = q * top
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, top)
    frac = pos - lo
    a = np.take_along_axis(srt, lo[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(srt, hi[..., None], axis=-1)[..., 0]
    return a + (b - a) * frac


def squash(z: np.ndarray, config: NormConfig) -> np.ndarray:
    k = 2.0 * config.squash_scale if config.squash == "logistic" else config.squash_scale
    return 0.5 + 0.5 * np.tanh(z / k)


def _clean(raw: np.ndarray) -> np.ndarray:
    # non-finite -> NaN (ignored); -0.0 -> 0.0 so equal values are equal bits and the sorted
    # window, hence every statistic, does not depend on the sort algorithm's tie order
    raw = np.asarray(raw, dtype=np.float64)
    return np.where(np.isfinite(raw), raw + 0.0, np.nan)


def _normalize_windows(windows: np.ndarray, config: NormConfig) -> SessionNorm:
    """Normalise B sessions at once: ``windows`` is [B, F, W] cleaned raw values, the last
    element of each row being the session's own value. Every field gets a leading B axis.

    Each session's numbers are computed exactly as if it were alone (B = 1): only element-wise
    operations, a sort, selections and a sequential sum, none of which depends on an element's
    position in the block, so batching is a speed-up (numpy's per-call overhead is paid once per
    block), never a change of bits.
    """
    srt = np.ascontiguousarray(windows)  # C order [B, F, W]: the same layout for any B
    srt.sort(axis=-1)  # NaNs last
    n = np.count_nonzero(~np.isnan(srt), axis=-1)
    x = windows[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        center = _quantile_sorted(srt, n, 0.5)
        iqr = _quantile_sorted(srt, n, 0.75) - _quantile_sorted(srt, n, 0.25)
        tol = config.epsilon * np.maximum(1.0, np.abs(center))
        scale = iqr / IQR_TO_SIGMA
        fallback = ~(scale > tol)
        if fallback.any():  # the mean absolute deviation only where the IQR is ~0 (rare)
            dev = np.abs(srt[fallback] - center[fallback][:, None])  # [K, W]
            # a strictly left-to-right sum (accumulate), not np.sum: numpy's pairwise/SIMD
            # summation order depends on the memory layout, and bits must not
            total = np.add.accumulate(np.where(np.isnan(dev), 0.0, dev), axis=-1)[:, -1]
            scale[fallback] = total / np.maximum(n[fallback], 1) * MEANAD_TO_SIGMA
        degenerate = ~(scale > tol)
        scale = np.where(degenerate, 0.0, scale)
        z = np.where(degenerate, 0.0, (x - center) / np.where(degenerate, 1.0, scale))
        value = squash(z, config)
    short = n < config.min_periods
    missing = short | np.isnan(x)
    values = np.where(missing, config.fill_value, np.clip(value, 0.0, 1.0)).astype(np.float32)
    valid = ~short
    return SessionNorm(values, missing, center, scale, short, fallback & valid & ~degenerate, degenerate & valid)


def normalize_session(history: np.ndarray, config: NormConfig) -> SessionNorm:
    """Normalise the last row of ``history`` ([W, F] raw values, last row = session s)."""
    hist = np.asarray(history, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != config.window:
        raise ValueError(f"history must be [window={config.window}, F], got {hist.shape}")
    return SessionNorm(*(a[0] for a in _normalize_windows(_clean(hist).T[None], config)))


def normalize_window(raw: np.ndarray, config: NormConfig, sessions: int) -> NormWindow:
    """Normalise the last ``sessions`` rows of ``raw`` ([sessions + window - 1, F] or more)."""
    raw = np.asarray(raw, dtype=np.float64)
    need = sessions + config.window - 1
    if raw.ndim != 2 or raw.shape[0] < need:
        raise ValueError(
            f"need at least {need} rows (sessions {sessions} + window {config.window} - 1), got {raw.shape}"
        )
    t = raw.shape[0]
    rows = [normalize_session(raw[i - config.window + 1 : i + 1], config) for i in range(t - sessions, t)]
    return stack_window(rows)


def stack_window(rows: Sequence[SessionNorm]) -> NormWindow:
    return NormWindow(
        np.stack([r.values for r in rows]),
        np.stack([r.missing for r in rows]),
        np.stack([r.center for r in rows]),
        np.stack([r.scale for r in rows]),
    )


@functools.lru_cache(maxsize=64)
def _config_hash(config: NormConfig) -> str:
    return config.config_hash()  # frozen config: the JSON dump is the same on every date


def row_digest(center: np.ndarray, scale: np.ndarray) -> bytes:
    """sha256 of one session's trailing centres and scales (little-endian float64)."""
    h = hashlib.sha256(np.ascontiguousarray(center, dtype="<f8"))
    h.update(np.ascontiguousarray(scale, dtype="<f8"))
    return h.digest()


def params_hash(config: NormConfig, window: NormWindow) -> str:
    """Per-date hash of everything that shaped the image: config, centres, scales, missing mask.

    sha256 of the config hash, then each window row's :func:`row_digest` (oldest first), then the
    bit-packed mask. Row digests, not the raw [L, F] statistics, so a backfill hashes each
    session's statistics once instead of once per image that shows it."""
    return params_hash_digests(config, [row_digest(c, s) for c, s in zip(window.center, window.scale)], window.missing)


def params_hash_digests(config: NormConfig, digests: Sequence[bytes], missing: np.ndarray) -> str:
    """:func:`params_hash` from the window rows' precomputed :func:`row_digest`."""
    h = hashlib.sha256(_config_hash(config).encode())
    for d in digests:
        h.update(d)
    h.update(np.packbits(missing))
    return h.hexdigest()


class TrailingNormalizer:
    """Per-row normalisation of a raw [T, F] table with a bounded cache (for encode_dates).

    ``row(i)`` is bit-identical to ``normalize_session(raw[i-W+1 : i+1])``: a missing row is
    computed together with up to ``block - 1`` following rows (below ``stop``), which only
    amortises numpy's per-call overhead (see ``_normalize_windows``); each row still reads only
    its own W rows, never a later one.
    """

    def __init__(
        self,
        raw: np.ndarray,
        config: NormConfig,
        dates: Sequence[Any] | None = None,
        cache_rows: int = 512,
        block: int = 8,
        stop: int | None = None,
    ) -> None:
        self.raw = _clean(raw)
        self.config = config
        self.dates = dates
        self.cache_rows = max(cache_rows, block)
        self.block = block
        self.stop = self.raw.shape[0] if stop is None else min(stop, self.raw.shape[0])
        self._cache: dict[int, SessionNorm] = {}
        self._digests: dict[int, bytes] = {}

    def row(self, i: int) -> SessionNorm:
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        w = self.config.window
        if i - w + 1 < 0 or i >= self.raw.shape[0]:
            d = self.dates[i] if self.dates is not None and 0 <= i < len(self.dates) else None
            raise DataInputError(
                f"row {i}{f' ({d})' if d is not None else ''} needs {w} rows of history, has {i + 1}",
                date=str(d) if d is not None else None,
            )
        end = max(min(i + self.block, self.stop), i + 1)
        end = next((j for j in range(i + 1, end) if j in self._cache), end)
        # [end - i, F, W]: session j's window is raw[j-W+1 : j+1], one strided view for the block
        views = np.lib.stride_tricks.sliding_window_view(self.raw[i - w + 1 : end], w, axis=0)
        block = _normalize_windows(views, self.config)
        if len(self._cache) + end - i > self.cache_rows:  # evict the oldest rows: dates arrive in order
            for k in sorted(self._cache)[: len(self._cache) + end - i - self.cache_rows]:
                del self._cache[k]
                self._digests.pop(k, None)
        for k in range(end - i):
            self._cache[i + k] = SessionNorm(*(a[k] for a in block))
        return self._cache[i]

    def digest(self, i: int) -> bytes:
        """:func:`row_digest` of ``row(i)``, computed once per cached row (evicted with it)."""
        hit = self._digests.get(i)
        if hit is None:
            r = self.row(i)
            hit = self._digests[i] = row_digest(r.center, r.scale)
        return hit


def feature_summary(
    norm_rows: Sequence[SessionNorm], raw_rows: np.ndarray, features: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per-feature summary of normalised sessions (e.g. every session of a backfill)."""
    if not norm_rows:
        return {f: {"sessions": 0} for f in features}
    miss = np.stack([r.missing for r in norm_rows])
    short = np.stack([r.short_history for r in norm_rows])
    fb = np.stack([r.fallback for r in norm_rows])
    deg = np.stack([r.degenerate for r in norm_rows])
    cen = np.stack([r.center for r in norm_rows])
    sca = np.stack([r.scale for r in norm_rows])
    val = np.stack([r.values for r in norm_rows]).astype(np.float64)
    raw = np.where(np.isfinite(raw_rows), raw_rows, np.nan)

    def _f(x: float) -> float | None:
        return None if not np.isfinite(x) else float(x)

    out: dict[str, dict[str, Any]] = {}
    with np.errstate(all="ignore"):
        for j, f in enumerate(features):
            ok = ~miss[:, j]
            out[f] = {
                "sessions": int(miss.shape[0]),
                "missing_fraction": float(miss[:, j].mean()),
                "short_history_fraction": float(short[:, j].mean()),
                "scale_fallback_fraction": float(fb[:, j].mean()),
                "degenerate_fraction": float(deg[:, j].mean()),
                "raw_min": _f(np.nanmin(raw[:, j])) if np.isfinite(raw[:, j]).any() else None,
                "raw_max": _f(np.nanmax(raw[:, j])) if np.isfinite(raw[:, j]).any() else None,
                "center_median": _f(np.nanmedian(cen[:, j])) if np.isfinite(cen[:, j]).any() else None,
                "scale_median": _f(np.nanmedian(sca[:, j])) if np.isfinite(sca[:, j]).any() else None,
                "value_mean": _f(val[ok, j].mean()) if ok.any() else None,
                "value_saturated_fraction": float(((val[:, j] <= 0.01) | (val[:, j] >= 0.99))[ok].mean())
                if ok.any()
                else None,
            }
    return out


def normalization_parameters(
    config: NormConfig, features: Sequence[str], summary: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The content of ``normalization_parameters.json``."""
    return {
        **config.to_dict(),
        "config_hash": config.config_hash(),
        "feature_count": len(features),
        "features": {f: {"index": i, **((summary or {}).get(f, {}))} for i, f in enumerate(features)},
    }


__all__ = [
    "NormConfig",
    "NormWindow",
    "SessionNorm",
    "TrailingNormalizer",
    "feature_summary",
    "normalization_parameters",
    "normalize_session",
    "normalize_window",
    "params_hash",
    "params_hash_digests",
    "row_digest",
    "squash",
]
