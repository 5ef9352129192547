"""Buy/Hold/Sell and forward-return labels per trading date, with volatility-scaled thresholds.

For a date t and horizon h (in trading sessions):

* forward return ``r_h(t) = close(t+h) / close(t) - 1`` (simple return): the regression target;
* volatility ``sigma(t)`` = sample standard deviation (ddof=1) of the last ``vol_window`` (30)
  daily *simple* returns ending at t, i.e. ``close(s)/close(s-1) - 1`` for the 30 sessions
  s <= t. Simple rather than log returns so that the threshold and the forward return it is
  compared with are the same kind of number (for daily moves the two differ by ~r^2/2);
* threshold ``k * sigma(t) * sqrt(h)`` (k = 0.5): under roughly i.i.d. daily returns the h-day
  return has sd ~ sigma*sqrt(h), so the class balance is about the same for every horizon
  (~31 % Sell / 38 % Hold / 31 % Buy for normal returns). ``threshold="fixed"`` uses
  ``fixed`` (default 2 %) for every horizon instead, deliberately unscaled;
* class: Buy (2) if r > threshold, Sell (0) if r < -threshold, else Hold (1); a return exactly at
  the threshold is Hold.

No label without its future: if close(t+h) is not available (t+h is past the last session the
price series knows, or its price is missing), return and class for h are null, never Hold. A
date with fewer than ``vol_window`` returns up to t gets a return but a null class. Labels near
the end of the data are therefore provisional-by-absence and must be recomputed once the
future sessions arrive; nothing here ever guesses them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Literal

import numpy as np
import pandera.polars as pa
import polars as pl

from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.geometry import BUY, CLASS_NAMES, HOLD, SELL  # noqa: F401  (re-exported)
from finnex_ml.schemas import frame_check

DEFAULT_HORIZONS: tuple[int, ...] = (1, 5)


@dataclass(frozen=True)
class LabelConfig:
    horizons: tuple[int, ...] = DEFAULT_HORIZONS
    threshold: Literal["volatility", "fixed"] = "volatility"
    k: float = 0.5
    fixed: float = 0.02
    vol_window: int = 30
    max_horizon: int | None = field(default=None, compare=False)  # optional upper bound to enforce

    def __post_init__(self) -> None:
        hs = tuple(int(h) for h in self.horizons)
        object.__setattr__(self, "horizons", hs)
        if not hs or any(h < 1 for h in hs) or len(set(hs)) != len(hs):
            raise ConfigError(f"horizons must be distinct positive session counts, got {list(self.horizons)}")
        if self.max_horizon is not None and max(hs) > self.max_horizon:
            raise ConfigError(f"horizon {max(hs)} exceeds the supported maximum {self.max_horizon}")
        if self.threshold not in ("volatility", "fixed"):
            raise ConfigError(f"threshold must be 'volatility' or 'fixed', got {self.threshold!r}")
        if not (self.k > 0 and math.isfinite(self.k)):
            raise ConfigError(f"k must be a positive number, got {self.k}")
        if not (0 < self.fixed < 1):
            raise ConfigError(f"fixed threshold must lie in (0, 1), got {self.fixed}")
        if self.vol_window < 2:
            raise ConfigError(f"vol_window must be >= 2 returns, got {self.vol_window}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("max_horizon")
        d["horizons"] = list(self.horizons)
        return d

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def class_col(h: int) -> str:
    return f"class_{h}d"


def return_col(h: int) -> str:
    return f"return_{h}d"


def close_col(h: int) -> str:
    return f"close_{h}d"


def threshold_col(h: int) -> str:
    return f"threshold_{h}d"


def fwd_date_col(h: int) -> str:
    return f"fwd_date_{h}d"


def horizons_of(table: pl.DataFrame) -> list[int]:
    """Horizons present in a labels table, from its ``class_{h}d`` columns, ascending."""
    out = sorted(int(c[len("class_") : -1]) for c in table.columns if c.startswith("class_") and c.endswith("d"))
    if not out:
        raise DataInputError(f"labels table has no class_{{h}}d column (columns: {table.columns[:12]})")
    return out


def trailing_sigma(closes: np.ndarray, window: int) -> float:
    """Sample sd (ddof=1) of the last ``window`` simple returns of ``closes`` (oldest first).

    NaN when fewer than ``window + 1`` prices or any of them is missing/non-positive.
    """
    c = np.asarray(closes, dtype=np.float64)
    if c.size < window + 1:
        return float("nan")
    tail = c[-(window + 1) :]
    if not (np.isfinite(tail).all() and (tail > 0).all()):
        return float("nan")
    r = tail[1:] / tail[:-1] - 1.0
    return float(np.std(r, ddof=1))


def classify(ret: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """0 Sell / 1 Hold / 2 Buy as int8, -1 where the return or threshold is NaN."""
    ret = np.asarray(ret, dtype=np.float64)
    thr = np.asarray(threshold, dtype=np.float64)
    out = np.full(np.broadcast(ret, thr).shape, HOLD, dtype=np.int8)
    out[ret > thr] = BUY
    out[ret < -thr] = SELL
    out[~(np.isfinite(ret) & np.isfinite(thr))] = -1
    return out


def thresholds(sigma: np.ndarray, h: int, cfg: LabelConfig) -> np.ndarray:
    sigma = np.asarray(sigma, dtype=np.float64)
    if cfg.threshold == "fixed":
        return np.full(sigma.shape, cfg.fixed)
    return cfg.k * sigma * math.sqrt(h)


def compute_labels(
    prices: pl.DataFrame,
    dates: Sequence[date],
    cfg: LabelConfig | None = None,
    *,
    sessions: Sequence[date] | None = None,
) -> pl.DataFrame:
    """Labels for ``dates`` from one price series ``prices`` (columns ``date``, ``close``).

    Horizons count sessions of ``sessions`` (the trading calendar; default: the series' own
    dates), so a session missing from the series gives a null label rather than shifting the
    horizon. sigma(t) uses only rows with date <= t. One output row per requested date with
    ``date, close, sigma, n_returns`` and, per horizon h, ``fwd_date_{h}d`` (the session t+h,
    null past the calendar), ``close_{h}d``, ``return_{h}d``, ``threshold_{h}d``, ``class_{h}d``
    (Int8, 0 Sell / 1 Hold / 2 Buy, null when unlabeled).
    """
    cfg = cfg or LabelConfig()
    if not {"date", "close"} <= set(prices.columns):
        raise DataInputError(f"price series needs 'date' and 'close' columns, has {prices.columns}")
    series = prices.select("date", pl.col("close").cast(pl.Float64)).sort("date")
    sd = series["date"].to_list()
    if len(set(sd)) != len(sd):
        dup = next(d for i, d in enumerate(sd) if i and sd[i - 1] == d)
        raise DataInputError("price series has duplicate dates", date=str(dup))
    close = series["close"].fill_null(float("nan")).to_numpy()
    at = {d: i for i, d in enumerate(sd)}
    cal = list(sessions) if sessions is not None else sd
    cal_pos = {d: i for i, d in enumerate(cal)}
    rows: dict[str, list] = {"date": [], "close": [], "sigma": [], "n_returns": []}
    for h in cfg.horizons:
        for name in (fwd_date_col(h), close_col(h), return_col(h), threshold_col(h), class_col(h)):
            rows[name] = []
    for t in dates:
        if t not in at:
            raise DataInputError(f"no price for label date {t}", date=str(t))
        if t not in cal_pos:
            raise DataInputError(f"label date {t} is not a session of the calendar", date=str(t))
        i = at[t]
        c0 = close[i]
        sigma = trailing_sigma(close[: i + 1], cfg.vol_window)  # rows <= t only
        rows["date"].append(t)
        rows["close"].append(_none(c0))
        rows["sigma"].append(_none(sigma))
        rows["n_returns"].append(min(i, cfg.vol_window))
        p = cal_pos[t]
        for h in cfg.horizons:
            fwd = cal[p + h] if p + h < len(cal) else None
            c1 = close[at[fwd]] if fwd is not None and fwd in at else float("nan")
            ret = c1 / c0 - 1.0 if np.isfinite(c1) and np.isfinite(c0) and c0 > 0 else float("nan")
            thr = float(thresholds(np.array(sigma), h, cfg))
            cls = int(classify(np.array(ret), np.array(thr)))
            rows[fwd_date_col(h)].append(fwd)
            rows[close_col(h)].append(_none(c1))
            rows[return_col(h)].append(_none(ret))
            rows[threshold_col(h)].append(_none(thr))
            rows[class_col(h)].append(None if cls < 0 else cls)
    schema: dict[str, pl.DataType] = {"date": pl.Date, "close": pl.Float64, "sigma": pl.Float64, "n_returns": pl.Int32}
    for h in cfg.horizons:
        schema |= {
            fwd_date_col(h): pl.Date,
            close_col(h): pl.Float64,
            return_col(h): pl.Float64,
            threshold_col(h): pl.Float64,
            class_col(h): pl.Int8,
        }
    return pl.DataFrame(rows, schema=schema)


def _none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def class_names_by_horizon(horizons: Sequence[int], classes: Sequence[int | None]) -> dict[str, str]:
    """``{"class_{h}d": "Sell" | "Hold" | "Buy" | "none"}`` for one date's class per horizon."""
    return {f"class_{h}d": (CLASS_NAMES[c] if c is not None else "none") for h, c in zip(horizons, classes)}


def class_distribution(table: pl.DataFrame) -> dict[str, dict[str, float | int]]:
    """Per horizon: labeled count, unlabeled count, and count and share of each class."""
    out: dict[str, dict[str, float | int]] = {}
    for h in horizons_of(table):
        col = table[class_col(h)]
        labeled = col.drop_nulls()
        n = labeled.len()
        d: dict[str, float | int] = {"labeled": n, "unlabeled": col.null_count()}
        for code, name in enumerate(CLASS_NAMES):
            k = int((labeled == code).sum())
            d[name] = k
            d[f"{name}_share"] = round(k / n, 4) if n else 0.0
        out[f"{h}d"] = d
    return out


# ---- QA schemas (pandera) ---------------------------------------------------------------------


def past_volatility_schema(horizons: Sequence[int], cfg: LabelConfig, rtol: float = 1e-9) -> pa.DataFrameSchema:
    """Stored sigma equals ``sigma_check`` (recomputed from data <= t only) and each threshold is
    k * sigma * sqrt(h) (or the fixed value); rows without a recomputable sigma must have no class."""
    sig, ref = pl.col("sigma"), pl.col("sigma_check")
    close_enough = (sig - ref).abs() <= rtol * ref.abs() + 1e-15
    checks = [frame_check((sig.is_null() & ref.is_null()) | close_enough.fill_null(False), "sigma_from_past_returns")]
    for h in horizons:
        want = pl.lit(cfg.fixed) if cfg.threshold == "fixed" else cfg.k * ref * math.sqrt(h)
        thr = pl.col(threshold_col(h))
        ok = (thr.is_null() & want.is_null()) | ((thr - want).abs() <= rtol * want.abs() + 1e-15).fill_null(False)
        checks.append(frame_check(ok, f"threshold_{h}d_from_past_sigma"))
        if cfg.threshold == "volatility":
            checks.append(frame_check(pl.col(class_col(h)).is_null() | ref.is_not_null(), f"class_{h}d_needs_sigma"))
    return pa.DataFrameSchema(checks=checks)


def future_price_schema(
    horizons: Sequence[int], *, needs_sigma: bool = True, rtol: float = 1e-12
) -> pa.DataFrameSchema:
    """A class or return exists only with its future price: ``fwd_available_{h}d`` (the price of
    t+h was actually read), ``fwd_date_{h}d == expected_fwd_{h}d`` (the h-th session after t) and
    the return equals close_h / close - 1; and the class follows from the return and threshold."""
    checks = []
    for h in horizons:
        cls, ret, c1 = pl.col(class_col(h)), pl.col(return_col(h)), pl.col(close_col(h))
        avail = pl.col(f"fwd_available_{h}d")
        checks.append(frame_check(ret.is_null() | (avail & c1.is_not_null()), f"return_{h}d_has_future_price"))
        checks.append(frame_check(cls.is_null() | ret.is_not_null(), f"class_{h}d_has_return"))
        checks.append(
            frame_check(
                ret.is_null() | (pl.col(fwd_date_col(h)) == pl.col(f"expected_fwd_{h}d")).fill_null(False),
                f"fwd_date_{h}d_is_t_plus_{h}_sessions",
            )
        )
        implied = c1 / pl.col("close") - 1.0
        checks.append(
            frame_check(
                ret.is_null() | ((ret - implied).abs() <= rtol * implied.abs() + 1e-15).fill_null(False),
                f"return_{h}d_matches_prices",
            )
        )
        thr = pl.col(threshold_col(h))
        expect = pl.when(ret > thr).then(BUY).when(ret < -thr).then(SELL).otherwise(HOLD)
        checks.append(
            frame_check(
                cls.is_null() | (cls.cast(pl.Int32) == expect).fill_null(False), f"class_{h}d_follows_threshold"
            )
        )
        # unlabeled only for a reason: no future price or no sigma
        no_sigma = pl.col("sigma").is_null() if needs_sigma else pl.lit(False)
        checks.append(frame_check(cls.is_not_null() | ret.is_null() | no_sigma, f"class_{h}d_present_when_computable"))
    return pa.DataFrameSchema(checks=checks)


def class_bounds_schema(horizons: Sequence[int], low: float = 0.10, high: float = 0.70) -> pa.DataFrameSchema:
    """On a per-horizon frame of shares (``horizon, sell_share, hold_share, buy_share``)."""
    checks = [
        frame_check(pl.col(f"{n}_share").is_between(low, high), f"{n}_share_in_[{low},{high}]") for n in CLASS_NAMES
    ]
    return pa.DataFrameSchema(checks=checks)


def class_share_frame(dist: Mapping[str, Mapping[str, float | int]]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"horizon": k, "labeled": v["labeled"], **{f"{n}_share": float(v[f"{n}_share"]) for n in CLASS_NAMES}}
            for k, v in dist.items()
        ]
    )


__all__ = [
    "BUY",
    "CLASS_NAMES",
    "DEFAULT_HORIZONS",
    "HOLD",
    "LabelConfig",
    "SELL",
    "class_bounds_schema",
    "class_col",
    "class_distribution",
    "class_names_by_horizon",
    "class_share_frame",
    "classify",
    "close_col",
    "compute_labels",
    "fwd_date_col",
    "future_price_schema",
    "horizons_of",
    "past_volatility_schema",
    "return_col",
    "threshold_col",
    "thresholds",
    "trailing_sigma",
]
