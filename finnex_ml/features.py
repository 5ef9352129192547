"""The daily feature table: one row per trading date, every value known at that date's close.

Each date's row is computed from that date's own trailing snapshot of every modality (see
``alignment.snapshots``), with polars expressions evaluated per snapshot (``.over("asof")``).
Rolling and exponential indicators therefore depend only on the ``history`` sessions up to
t, never on later data and never on which other dates were computed in the same run: a date
materialised alone is byte-identical to the same date in a backfill.

Column names are ``{group}__{feature}``. Groups: price, market, peer, news, social,
sentiment, macro, fundamental. Non-feature columns: ``date``, ``history_sessions`` and
``warmup_complete``.
"""

from __future__ import annotations

import math

import polars as pl

from finnex_ml.alignment import DERIVED_SUFFIXES
from finnex_ml.data.base import TEXT_SOURCES
from finnex_ml.sentiment import AGGREGATES

HISTORY_SESSIONS = 300  # trailing sessions in every snapshot; > the longest window (252) plus EWM burn-in
WARMUP_SESSIONS = 252  # a row is complete once every modality has this much history
EPS = 1e-12
Z_MAX_MISSING = 0.1  # share of a z-score window that may be missing (blank cells), see _z
META_COLUMNS = ("date", "history_sessions", "warmup_complete")


def _o(e: pl.Expr) -> pl.Expr:
    return e.over("asof")


def _lag(e: pl.Expr, n: int) -> pl.Expr:
    return _o(e.shift(n))


def _rmean(e: pl.Expr, n: int) -> pl.Expr:
    return _o(e.rolling_mean(n))


def _rstd(e: pl.Expr, n: int) -> pl.Expr:
    return _o(e.rolling_std(n))


def _corr(a: pl.Expr, b: pl.Expr, window_size: int) -> pl.Expr:
    """Trailing correlation; 0 where a window has no variation (a price that did not move, one
    sentiment score repeated for weeks): undefined there (NaN, or +-inf from rounding), and it
    means no co-movement. Null while the window is not yet full."""
    c = _o(pl.rolling_corr(a, b, window_size=window_size))
    return pl.when(c.is_nan() | c.is_infinite()).then(0.0).otherwise(c)


def _z(e: pl.Expr, n: int) -> pl.Expr:
    """z-score of the last value against the trailing ``n`` sessions (t included).

    Once the window is full it tolerates up to Z_MAX_MISSING of n missing cells (a blank in a
    user's export): mean and std of the values present, still only from sessions <= t. Without
    that one blank cell nulls the z-score for the next n sessions. Before the window is full
    it stays null, as does a window without any gap: the same values as a plain rolling mean.
    """
    k = max(1, int(n * Z_MAX_MISSING))
    full = _o(pl.int_range(pl.len())) >= n - 1
    mean, std = _o(e.rolling_mean(n, min_samples=n - k)), _o(e.rolling_std(n, min_samples=n - k))
    return pl.when(full).then((e - mean) / (std + EPS))


def _ewm_span(e: pl.Expr, span: int) -> pl.Expr:
    return _o(e.ewm_mean(span=span, adjust=False, min_samples=span))


def _wilder(e: pl.Expr, n: int) -> pl.Expr:
    return _o(e.ewm_mean(alpha=1.0 / n, adjust=False, min_samples=n))


def _price_features() -> list[pl.Expr]:
    c, h, lo, op, v = (pl.col(x) for x in ("close", "high", "low", "open", "volume"))
    prev = _lag(c, 1)
    r1 = (c / prev).log()
    out: list[pl.Expr] = [r1.alias("price__logret_1d")]
    for n in (2, 3, 5, 10, 21, 63, 126):
        out.append((c / _lag(c, n) - 1).alias(f"price__ret_{n}d"))
    out.append((_lag(c, 21) / _lag(c, 252) - 1).alias("price__mom_12_1"))
    for lag in (1, 2, 3, 4):
        out.append(_lag(r1, lag).alias(f"price__logret_lag{lag}"))
    for n in (5, 10, 21, 63, 126):
        out.append((_rstd(r1, n) * math.sqrt(252)).alias(f"price__rvol_{n}d"))
    out.append((_rstd(r1, 21) / (_rstd(r1, 126) + EPS)).alias("price__vol_ratio_21_126"))
    hl = (h / lo).log()
    out.append(
        (_o((hl**2).rolling_mean(21)) / (4 * math.log(2))).sqrt().mul(math.sqrt(252)).alias("price__parkinson_21d")
    )
    gk = 0.5 * hl**2 - (2 * math.log(2) - 1) * ((c / op).log() ** 2)
    out.append((_o(gk.rolling_mean(21)).clip(lower_bound=0).sqrt() * math.sqrt(252)).alias("price__garman_klass_21d"))
    # RSI (Wilder smoothing)
    diff = c - prev
    for n in (7, 14, 21):
        gain = _wilder(diff.clip(lower_bound=0), n)
        loss = _wilder((-diff).clip(lower_bound=0), n)
        out.append((100 - 100 / (1 + gain / (loss + EPS))).alias(f"price__rsi_{n}"))
    macd = _ewm_span(c, 12) - _ewm_span(c, 26)
    signal = _o(macd.ewm_mean(span=9, adjust=False, min_samples=9))
    out += [
        (macd / c).alias("price__macd"),
        (signal / c).alias("price__macd_signal"),
        ((macd - signal) / c).alias("price__macd_hist"),
    ]
    sma20, sd20 = _rmean(c, 20), _rstd(c, 20)
    out += [
        ((c - (sma20 - 2 * sd20)) / (4 * sd20 + EPS)).alias("price__bb_pctb_20"),
        (4 * sd20 / sma20).alias("price__bb_width_20"),
    ]
    tr = pl.max_horizontal(h - lo, (h - prev).abs(), (lo - prev).abs())
    out.append((_wilder(tr, 14) / c).alias("price__atr_14"))
    obv_step = pl.when(diff > 0).then(v).when(diff < 0).then(-v).otherwise(0.0)
    out.append((_o(obv_step.rolling_sum(21)) / (_o(v.rolling_sum(21)) + EPS)).alias("price__obv_flow_21"))
    out.append((_o(obv_step.rolling_sum(63)) / (_o(v.rolling_sum(63)) + EPS)).alias("price__obv_flow_63"))
    for n in (5, 10, 20, 50, 100, 200):
        out.append((c / _rmean(c, n) - 1).alias(f"price__ma_ratio_{n}"))
    out.append((_rmean(c, 50) / _rmean(c, 200) - 1).alias("price__ma_cross_50_200"))
    for n in (12, 26):
        out.append((c / _ewm_span(c, n) - 1).alias(f"price__ema_ratio_{n}"))
    lv = (v + 1).log()
    for n in (5, 21, 63):
        out.append(_z(lv, n).alias(f"price__volume_z_{n}"))
    out.append((_rmean(v, 5) / (_rmean(v, 63) + EPS)).alias("price__volume_ratio_5_63"))
    dv = (c * v + 1).log()
    out.append(_z(dv, 63).alias("price__dollar_volume_z_63"))
    out.append(_rmean(r1.abs() / (c * v + EPS) * 1e9, 21).alias("price__amihud_21"))
    out.append((hl).alias("price__range_hl"))
    out.append(((2 * c - h - lo) / (h - lo + EPS)).alias("price__close_location"))
    out.append((op / prev - 1).alias("price__gap"))
    out.append((c / op - 1).alias("price__intraday_ret"))
    hh14, ll14 = _o(h.rolling_max(14)), _o(lo.rolling_min(14))
    k = 100 * (c - ll14) / (hh14 - ll14 + EPS)
    out += [
        k.alias("price__stoch_k_14"),
        _o(k.rolling_mean(3)).alias("price__stoch_d_3"),
        (-100 * (hh14 - c) / (hh14 - ll14 + EPS)).alias("price__williams_r_14"),
    ]
    tp = (h + lo + c) / 3
    mad = _o((tp - _rmean(tp, 20)).abs().rolling_mean(20))
    out.append(((tp - _rmean(tp, 20)) / (0.015 * mad + EPS)).alias("price__cci_20"))
    mf = tp * v
    pos = _o(pl.when(tp > _lag(tp, 1)).then(mf).otherwise(0.0).rolling_sum(14))
    neg = _o(pl.when(tp < _lag(tp, 1)).then(mf).otherwise(0.0).rolling_sum(14))
    # Null, not 0, when the window holds no money flow at all (a closes-only source has no
    # high/low/volume); otherwise unchanged: missing days count as no flow, as before.
    has_flow = _o(mf.is_not_null().cast(pl.Float64).rolling_sum(14)) > 0
    out.append(pl.when(has_flow).then(100 - 100 / (1 + pos / (neg + EPS))).alias("price__mfi_14"))
    out.append((c / _o(c.rolling_max(252)) - 1).alias("price__drawdown_252"))
    out.append((c / _o(c.rolling_min(252)) - 1).alias("price__above_low_252"))
    out.append(_o(r1.rolling_skew(63)).alias("price__skew_63"))
    out.append(_o(r1.rolling_kurtosis(63)).alias("price__kurt_63"))
    out.append(_corr(r1, _lag(r1, 1), window_size=63).alias("price__autocorr_63"))
    out.append(_rmean((r1 > 0).cast(pl.Float64), 21).alias("price__up_share_21"))
    out.append(_z(c, 252).alias("price__close_z_252"))
    return out


MARKET_FILL_SESSIONS = 5  # a blank cell in a market-wide export carries the last value this long


def _market_features(market_cols: list[str]) -> list[pl.Expr]:
    out: list[pl.Expr] = []
    for col in market_cols:
        name = col.split("__", 1)[1]
        # the odd blank cell of a user's export: the last value known at t, for a few sessions
        # (data before t only); a longer gap stays null and fails finite_after_warmup by date
        x = _o(pl.col(col).forward_fill(limit=MARKET_FILL_SESSIONS))
        out += [
            x.alias(f"market__{name}"),
            _z(x, 63).alias(f"market__{name}_z63"),
            (x - _lag(x, 5)).alias(f"market__{name}_chg5"),
        ]
    return out


def _peer_features(tickers: list[str]) -> list[pl.Expr]:
    r_self = (pl.col("close") / _lag(pl.col("close"), 1)).log()
    out: list[pl.Expr] = []
    rets = []
    for t in tickers:
        pc = pl.col(f"peer_{t}_close")
        pr = (pc / _lag(pc, 1)).log()
        rets.append(pr)
        key = t.lower()
        out += [
            pr.alias(f"peer__{key}_ret_1d"),
            (pc / _lag(pc, 5) - 1).alias(f"peer__{key}_ret_5d"),
            (pc / _lag(pc, 21) - 1).alias(f"peer__{key}_ret_21d"),
            (_rstd(pr, 21) * math.sqrt(252)).alias(f"peer__{key}_rvol_21d"),
            ((pl.col("close") / _lag(pl.col("close"), 21)) / (pc / _lag(pc, 21)) - 1).alias(
                f"peer__{key}_rel_strength_21"
            ),
            _corr(r_self, pr, window_size=63).alias(f"peer__{key}_corr_63"),
            _z((pl.col(f"peer_{t}_volume") + 1).log(), 21).alias(f"peer__{key}_volume_z_21"),
        ]
    if rets:
        avg = pl.mean_horizontal(*rets)
        out += [
            avg.alias("peer__avg_ret_1d"),
            (r_self - avg).alias("peer__excess_ret_1d"),
            _o((r_self - avg).rolling_sum(21)).alias("peer__excess_ret_21d"),
        ]
    return out


def _sentiment_features() -> list[pl.Expr]:
    out: list[pl.Expr] = []
    for s in TEXT_SOURCES:
        m, n = pl.col(f"{s}_mean"), pl.col(f"{s}_count")
        out += [
            m.alias(f"{s}__mean"),
            n.alias(f"{s}__count"),
            pl.col(f"{s}_std").alias(f"{s}__std"),
            pl.col(f"{s}_pos_share").alias(f"{s}__pos_share"),
            pl.col(f"{s}_neg_share").alias(f"{s}__neg_share"),
            _rmean(m, 5).alias(f"{s}__mean_5d"),
            _rmean(m, 21).alias(f"{s}__mean_21d"),
            (_rmean(m, 5) - _rmean(m, 21)).alias(f"{s}__momentum_5_21"),
            _z((n + 1).log(), 21).alias(f"{s}__count_z_21"),
        ]
    news, social = pl.col("news_mean"), pl.col("social_mean")
    r1 = (pl.col("close") / _lag(pl.col("close"), 1)).log()
    both = (news + social) / 2
    out += [
        (news - social).alias("sentiment__news_social_spread"),
        _rmean(both, 63).alias("sentiment__hist_mean_63"),
        _z(both, 63).alias("sentiment__hist_z_63"),
        _rstd(both, 21).alias("sentiment__hist_vol_21"),
        _corr(both, r1, window_size=21).alias("sentiment__ret_corr_21"),
        _corr(news, social, window_size=21).alias("sentiment__news_social_corr_21"),
    ]
    return out


def _release_features(group: str, cols: list[str], trends: bool) -> list[pl.Expr]:
    """Level, change since the previous release, age (and yoy/ttm); with ``trends``, the
    5/21-session change and 63-session z-score too. The column set never depends on the data."""
    out: list[pl.Expr] = []
    for col in cols:
        if col.endswith(DERIVED_SUFFIXES):
            out.append(pl.col(col).alias(f"{group}__{col}"))
            continue
        x = pl.col(col)
        out.append(x.alias(f"{group}__{col}"))
        if trends:
            out += [
                (x - _lag(x, 5)).alias(f"{group}__{col}_chg5"),
                (x - _lag(x, 21)).alias(f"{group}__{col}_chg21"),
                _z(x, 63).alias(f"{group}__{col}_z63"),
            ]
    return out


def _cross_features(macro_cols: set[str], fund_cols: set[str]) -> list[pl.Expr]:
    out: list[pl.Expr] = []
    r_self = (pl.col("close") / _lag(pl.col("close"), 1)).log()
    if {"rate_2y", "rate_10y"} <= macro_cols and "term_spread" not in macro_cols:  # a T10Y2Y series is it already
        out.append((pl.col("rate_10y") - pl.col("rate_2y")).alias("macro__term_spread"))
    if {"aaa_yield", "baa_yield"} <= macro_cols:
        out.append((pl.col("baa_yield") - pl.col("aaa_yield")).alias("macro__credit_spread"))
    for ref in ("market_index", "sector_etf"):
        if ref in macro_cols:
            rr = (pl.col(ref) / _lag(pl.col(ref), 1)).log()
            cov = _o(pl.rolling_cov(r_self, rr, window_size=63))
            out += [
                (rr).alias(f"macro__{ref}_ret_1d"),
                (cov / (_o(rr.rolling_var(63)) + EPS)).alias(f"macro__beta_{ref}_63"),
                ((pl.col("close") / _lag(pl.col("close"), 21)) / (pl.col(ref) / _lag(pl.col(ref), 21)) - 1).alias(
                    f"macro__rel_strength_{ref}_21"
                ),
            ]
    if "vix" in macro_cols:
        out.append((_rstd(r_self, 21) * math.sqrt(252) * 100 - pl.col("vix")).alias("macro__rvol_minus_vix"))
    # Yields rather than P/E and P/S: they stay finite and monotone when earnings cross zero.
    if "eps_ttm" in fund_cols:
        out.append((pl.col("eps_ttm") / pl.col("close")).alias("fundamental__earnings_yield"))
    if {"revenue_ttm", "shares_out"} <= fund_cols:
        out.append((pl.col("revenue_ttm") / (pl.col("close") * pl.col("shares_out"))).alias("fundamental__sales_yield"))
    if "free_cash_flow" in fund_cols and "shares_out" in fund_cols:
        out.append(
            (4 * pl.col("free_cash_flow") / (pl.col("close") * pl.col("shares_out"))).alias("fundamental__fcf_yield")
        )
    return out


def build_daily_features(
    market: pl.DataFrame,
    peers: pl.DataFrame,
    sentiment: pl.DataFrame,
    macro: pl.DataFrame,
    fundamental: pl.DataFrame,
) -> pl.DataFrame:
    """Combine per-date snapshots (each with ``asof`` and ``date``) into one row per ``asof``."""
    frame = market.sort("asof", "date")
    tickers: list[str] = []
    if peers.height:
        tickers = sorted(peers["ticker"].unique().to_list())
        wide = peers.pivot(on="ticker", index=["asof", "date"], values=["close", "volume"])
        wide = wide.rename({f"{v}_{t}": f"peer_{t}_{v}" for t in tickers for v in ("close", "volume")})
        frame = frame.join(wide, on=["asof", "date"], how="left")
    # Carry the last known mood over quiet days inside each snapshot only, so the value never
    # depends on data before the snapshot's window.
    frame = (
        frame.join(sentiment, on=["asof", "date"], how="left")
        .sort("asof", "date")
        .with_columns(*[_o(pl.col(f"{s}_mean").forward_fill()) for s in TEXT_SOURCES])
    )
    macro_cols = [c for c in macro.columns if c not in ("asof", "date")]
    fund_cols = [c for c in fundamental.columns if c not in ("asof", "date")]
    frame = frame.join(macro, on=["asof", "date"], how="left").join(fundamental, on=["asof", "date"], how="left")
    base_macro = {c for c in macro_cols if not c.endswith(DERIVED_SUFFIXES)}
    market_cols = [c for c in market.columns if c.startswith("market__")]
    text_cols = {f"{s}_{a}" for s in TEXT_SOURCES for a in AGGREGATES}
    scored_cols = [c for c in sentiment.columns if c not in ("asof", "date") and c not in text_cols]
    exprs = (
        _price_features()
        + _market_features(market_cols)
        + _peer_features(tickers)
        + _sentiment_features()
        + _release_features("sentiment", scored_cols, trends=True)
        + _release_features("macro", macro_cols, trends=True)
        + _release_features("fundamental", fund_cols, trends=False)
        + _cross_features(base_macro, set(fund_cols))
    )
    # Warm-up ends once every raw input has WARMUP_SESSIONS observations in the snapshot.
    raw = [c for c in frame.columns if c not in ("asof", "date") and not c.endswith(DERIVED_SUFFIXES)]
    depth = pl.min_horizontal(*[_o(pl.col(c).is_not_null().sum()) for c in raw])
    out = (
        frame.sort("asof", "date")
        .with_columns(*exprs, depth.cast(pl.Int32).alias("history_sessions"))
        .filter(pl.col("date") == pl.col("asof"))
    )
    feature_cols = sorted({e.meta.output_name() for e in exprs})
    return out.select(
        pl.col("asof").alias("date"),
        "history_sessions",
        (pl.col("history_sessions") >= WARMUP_SESSIONS).alias("warmup_complete"),
        *[pl.col(c).cast(pl.Float64) for c in feature_cols],
    )
