"""Universe sources: the synthetic factor-model universe and the packaged S&P 500 panel."""

from __future__ import annotations

import itertools
import math
from datetime import date

import numpy as np
import polars as pl
import pytest

from finnex_ml import calendar, pipeline
from finnex_ml.data.base import PEER_SCHEMA, PRICE_SCHEMA, RELEASE_SCHEMA, TEXT_SCHEMA, RawData
from finnex_ml.data.synthetic import EPOCH, SyntheticSource
from finnex_ml.data.universe import (
    DEFAULT_UNIVERSE_RANGE,
    GICS_SECTORS,
    MEMBER_SCHEMA,
    UNIVERSE_KINDS,
    CrossSectionalSignal,
    PackagedPanel,
    SyntheticUniverse,
    ticker_source,
    universe_source,
)
from finnex_ml.errors import ConfigError, DataInputError

Y2024 = tuple(date.fromisoformat(d) for d in DEFAULT_UNIVERSE_RANGE["synthetic"])
FUNDAMENTAL_SERIES = {
    "revenue", "eps", "gross_margin", "op_margin", "debt_to_equity", "free_cash_flow", "shares_out",
    "mgmt_tone", "analyst_rating",
}  # fmt: skip


@pytest.fixture(scope="module")
def universe() -> SyntheticUniverse:
    return SyntheticUniverse()


@pytest.fixture(scope="module")
def members(universe) -> pl.DataFrame:
    return universe.members()


def _closes(u, start: date, end: date) -> pl.DataFrame:
    """Long date, ticker, close, log return for every member over [start, end]."""
    frames = []
    for t in u.members()["ticker"]:
        p = u.load_ticker(t, start, end).prices
        frames.append(p.select("date", pl.lit(t).alias("ticker"), "close"))
    return pl.concat(frames).with_columns(pl.col("close").log().diff().over("ticker").alias("ret"))


# --------------------------------------------------------------------------- synthetic: schema and members


def test_members_schema_and_events(members):
    assert members.schema == pl.Schema(MEMBER_SCHEMA)
    assert members.height == 24
    assert members["ticker"].to_list() == sorted(members["ticker"].to_list()) == [f"U{i:03d}" for i in range(24)]
    assert set(members["sector"]) == {"S0", "S1", "S2", "S3"}
    assert (members["first"] <= members["last"]).all()
    grid_start = calendar.session_on_or_after(EPOCH)
    listed = members.filter(pl.col("first") > grid_start)
    delisted = members.filter(pl.col("last") < calendar.calendar_end())
    assert listed.height == round(0.15 * 24) and delisted.height == round(0.10 * 24)
    # everyone else has the grid's first session as listing date
    assert (members.filter(pl.col("first") != grid_start).height) == listed.height
    # the default range shows at least one listing and one delisting
    assert listed.filter(pl.col("first").is_between(*Y2024)).height >= 1
    assert delisted.filter(pl.col("last").is_between(*Y2024)).height >= 1
    # events spread over the years, not bunched: 2015-2026
    events = listed["first"].to_list() + delisted["last"].to_list()
    assert all(date(2015, 1, 1) <= d <= date(2026, 12, 31) for d in events)
    assert len({d.year for d in events}) >= 3


def test_load_ticker_schemas_and_contents(universe):
    raw = universe.load_ticker("U000", date(2024, 3, 1), date(2024, 6, 28))
    assert isinstance(raw, RawData)
    for col, dtype in PRICE_SCHEMA.items():
        assert raw.prices.schema[col] == dtype
    assert set(raw.prices.columns) - set(PRICE_SCHEMA) == {"market__implied_vol", "market__put_call_ratio"}
    assert raw.prices["date"].to_list() == calendar.sessions(date(2024, 3, 1), date(2024, 6, 28))
    assert raw.peers.height == 0 and raw.peers.schema == pl.Schema(PEER_SCHEMA)
    assert raw.texts.schema == pl.Schema(TEXT_SCHEMA)
    assert raw.releases.schema == pl.Schema(RELEASE_SCHEMA)
    assert set(raw.releases["modality"]) == {"macro", "fundamental"}
    assert raw.releases["released"].max() <= date(2024, 6, 28)
    assert set(raw.releases.filter(pl.col("modality") == "fundamental")["series"]) == FUNDAMENTAL_SERIES
    assert raw.provenance["prices"] == "synthetic-universe(seed=7, n=24)"
    assert set(raw.provenance) >= {"prices", "texts", "macro", "fundamental"}
    # texts are published before the window's last close, each mentions the ticker, 2 news + 3 social a day
    assert raw.texts["published_at"].max() < calendar.session_close_utc(date(2024, 6, 28))
    assert raw.texts["text"].str.contains("U000").all()
    days = (date(2024, 6, 28) - date(2024, 3, 1)).days + 5
    per_day = raw.texts.group_by("source").len().sort("source")
    news, social = (n / days for n in per_day["len"])
    assert 1.0 < news < 3.0 and 2.0 < social < 5.0
    assert raw.texts["published_at"].dt.minute().n_unique() > 30  # times of day, not midnight stamps


def test_ohlcv_is_plausible(universe, members):
    for t in members["ticker"][:8]:
        p = universe.load_ticker(t, date(2020, 1, 2), date(2024, 12, 31)).prices
        assert p.select(
            (pl.col("high") >= pl.max_horizontal("open", "close")).all().alias("high_ok"),
            (pl.col("low") <= pl.min_horizontal("open", "close")).all().alias("low_ok"),
            (pl.col("low") > 0).all().alias("positive"),
            (pl.col("volume") > 0).all().alias("volume_ok"),
        ).row(0) == (True, True, True, True)


def test_shared_macro_is_the_synthetic_sources(universe):
    a, b = date(2024, 5, 1), date(2024, 5, 31)
    mine = universe.load_ticker("U003", a, b).releases.filter(pl.col("modality") == "macro")
    theirs = SyntheticSource(7).load(a, b).releases.filter(pl.col("modality") == "macro")
    key = ["series", "period_end", "released"]
    assert mine.sort(key).equals(theirs.sort(key))
    assert mine["released"].max() <= b


# --------------------------------------------------------------------------- determinism and spans


def test_deterministic_and_range_independent(universe):
    a = universe.load_ticker("U005", date(2023, 6, 1), date(2024, 3, 28))
    b = SyntheticUniverse().load_ticker("U005", date(2024, 1, 2), date(2024, 8, 30))
    lo, hi = date(2024, 1, 2), date(2024, 3, 28)
    pa_, pb = (r.prices.filter(pl.col("date").is_between(lo, hi)) for r in (a, b))
    assert pa_.height == len(calendar.sessions(lo, hi)) and pa_.equals(pb)
    close_hi = calendar.session_close_utc(hi)
    ta, tb = (r.texts.filter(pl.col("published_at").dt.date() >= lo, pl.col("published_at") < close_hi) for r in (a, b))
    assert ta.height > 100 and ta.equals(tb)
    fa, fb = (
        r.releases.filter(pl.col("modality") == "fundamental", pl.col("released").is_between(lo, hi)).sort(
            "series", "period_end"
        )
        for r in (a, b)
    )
    assert fa.height > 0 and fa.equals(fb)
    again = universe.load_ticker("U005", date(2023, 6, 1), date(2024, 3, 28))
    assert again.prices.equals(a.prices) and again.texts.equals(a.texts) and again.releases.equals(a.releases)


def test_no_rows_outside_listing_span(universe, members):
    moved = members.filter((pl.col("first") > date(2000, 1, 3)) | (pl.col("last") < calendar.calendar_end()))
    assert moved.height >= 4
    for t, first, last in moved.select("ticker", "first", "last").iter_rows():
        event = first if first > date(2000, 1, 3) else last
        lo, hi = calendar.sessions_back(event, 30), calendar.sessions(event, date(2030, 1, 1))[:30][-1]
        raw = universe.load_ticker(t, lo, hi)
        dates = raw.prices["date"]
        assert dates.min() >= first and dates.max() <= last
        assert raw.prices.select(pl.all().is_null().any()).row(0) == (False,) * raw.prices.width
        assert raw.texts.height == 0 or raw.texts["published_at"].max() < calendar.session_close_utc(last)
        fund = raw.releases.filter(pl.col("modality") == "fundamental")
        assert fund.height == 0 or fund["released"].is_between(first, last).all()
        if first > date(2000, 1, 3):
            assert dates.min() == first
            before = universe.load_ticker(t, calendar.sessions_back(first, 20), calendar.sessions_back(first, 2))
            assert before.prices.height == 0 and before.prices.schema == raw.prices.schema
        if last < calendar.calendar_end():
            assert dates.max() == last


def test_ticker_listed_in_2024_starts_at_first(universe, members):
    listed = members.filter(pl.col("first").is_between(*Y2024))
    t, first = listed["ticker"][0], listed["first"][0]
    raw = universe.load_ticker(t, *Y2024)
    assert raw.prices["date"][0] == first
    assert raw.prices["date"].to_list() == calendar.sessions(first, Y2024[1])


# --------------------------------------------------------------------------- factor structure and planted signal


def test_factor_structure(universe, members):
    rets = _closes(universe, date(2022, 1, 3), date(2024, 12, 31)).pivot(on="ticker", index="date", values="ret")
    sector = dict(members.select("ticker", "sector").iter_rows())
    always = [t for t in rets.columns[1:] if rets[t][1:].null_count() == 0]
    assert len(always) >= 18
    corr = np.corrcoef(rets.select(always)[1:].to_numpy().T)
    within, across = [], []
    for (i, a), (j, b) in itertools.combinations(enumerate(always), 2):
        (within if sector[a] == sector[b] else across).append(corr[i, j])
    assert np.mean(within) > np.mean(across) + 0.05 > 0.05
    # fat tails and volatility clustering in a ticker's returns
    r = rets[always[0]][1:].to_numpy()
    kurt = np.mean((r - r.mean()) ** 4) / np.var(r) ** 2
    assert kurt > 3.5
    assert np.corrcoef(np.abs(r[1:]), np.abs(r[:-1]))[0, 1] > 0.05


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_planted_cross_sectional_signal(strength):
    u = SyntheticUniverse(plant=CrossSectionalSignal(strength))
    a, b = Y2024
    closes = _closes(u, a, b)
    nxt = closes.with_columns(pl.col("ret").shift(-1).over("ticker").alias("next")).drop_nulls("next")
    nxt = nxt.with_columns((pl.col("next") - pl.col("next").mean().over("date")).alias("excess"))
    oracle = u.oracle_scores(a, b, (1, 5))
    assert oracle.columns == ["date", "ticker", "oracle_h1", "oracle_h5"]
    assert oracle["oracle_h1"].equals(oracle["oracle_h5"], check_names=False)
    # the planted part is purely cross-sectional
    assert oracle.group_by("date").agg(pl.col("oracle_h1").sum().abs())["oracle_h1"].max() < 1e-12
    # oracle = strength * 0.015 * (control_a - its mean over the tickers listed at t)
    ctrl = pl.concat(
        u.load_ticker(t, a, b).prices.select("date", pl.lit(t).alias("ticker"), "market__control_a")
        for t in u.members()["ticker"]
    )
    z = ctrl.with_columns((pl.col("market__control_a") - pl.col("market__control_a").mean().over("date")).alias("z"))
    check = z.join(oracle, on=["date", "ticker"], how="full", coalesce=True)
    assert check.height == oracle.height == ctrl.height
    assert np.allclose(check["oracle_h1"], strength * 0.015 * check["z"], atol=1e-15)
    corr = np.corrcoef(*nxt.join(oracle, on=["date", "ticker"]).select("oracle_h1", "excess").to_numpy().T)[0, 1]
    if strength == 1.0:
        assert corr > 0.99  # noise-free: the realised excess return is the planted part
    else:
        # planted sd 0.0075 against ~0.0136 * sqrt(0.75) of cross-sectional noise: corr ~ 0.48
        expected = 0.0075 / math.sqrt(0.0075**2 + 0.75 * 0.0136**2)
        assert abs(corr - expected) < 0.1


def test_oracle_needs_a_plant_and_strength_is_checked(universe):
    with pytest.raises(ValueError, match="planted"):
        universe.oracle_scores(*Y2024, (1,))
    with pytest.raises(ValueError, match="strength"):
        CrossSectionalSignal(1.5)
    assert "market__control_a" not in universe.load_ticker("U000", *Y2024).prices.columns


def test_large_universe_is_cheap():
    u = SyntheticUniverse(n_tickers=500)
    m = u.members()
    assert m.height == 500 and m["ticker"][0] == "U000" and m["ticker"][-1] == "U499"
    assert m.filter(pl.col("first") > date(2000, 1, 3)).height == 75
    always = m.filter(pl.col("first") == date(2000, 1, 3), pl.col("last") == calendar.calendar_end())["ticker"]
    raw = u.load_ticker(always[len(always) // 2], date(2015, 1, 2), date(2024, 12, 31))
    assert raw.prices.height > 2000 and raw.texts.height > 10_000


# --------------------------------------------------------------------------- errors, factory, adapter


def test_unknown_ticker_is_named(universe):
    with pytest.raises(DataInputError, match=r"'NOPE'.*U000, U001") as info:
        universe.load_ticker("NOPE", *Y2024)
    assert "synthetic-universe" in str(info.value)


def test_factory_and_adapter():
    assert UNIVERSE_KINDS == ("synthetic", "packaged-panel", "files")
    small = universe_source("synthetic", n_tickers=6, seed=3)
    assert isinstance(small, SyntheticUniverse) and small.members().height == 6
    assert small.name == "synthetic-universe" and small.benchmark
    assert isinstance(universe_source("packaged-panel"), PackagedPanel)
    with pytest.raises(ConfigError, match="synthetic, packaged-panel"):
        universe_source("crypto")
    src = ticker_source(small, "U002")
    assert src.name == "synthetic-universe:U002"
    assert src.load(*Y2024).prices.equals(small.load_ticker("U002", *Y2024).prices)


def test_synthetic_ticker_runs_through_the_pipeline(universe):
    asof = calendar.sessions(date(2024, 11, 1), date(2024, 11, 6))
    snaps, provenance = pipeline.modality_snapshots(ticker_source(universe, "U000"), asof)
    f = pipeline.daily_features_from_snapshots(snaps)
    assert f["date"].to_list() == asof and f["warmup_complete"].all()
    assert not f.select(pl.all().is_null().any()).row(0).count(True)
    assert provenance["prices"].startswith("synthetic-universe")


# --------------------------------------------------------------------------- packaged panel


@pytest.fixture(scope="module")
def panel() -> PackagedPanel:
    return PackagedPanel()


def test_panel_members_and_prices(panel):
    m = panel.members()
    assert m.schema == pl.Schema(MEMBER_SCHEMA)
    assert m["ticker"].to_list() == sorted(GICS_SECTORS) and m.height == 20
    assert dict(m.select("ticker", "sector").iter_rows()) == GICS_SECTORS
    assert GICS_SECTORS["AAPL"] == "Information Technology" and GICS_SECTORS["XOM"] == "Energy"
    assert (m["first"] == calendar.CALENDAR_START).all()  # the data start in 1990, the calendar in 1995
    assert (m["last"] == date(2022, 12, 28)).all()
    assert any("before the calendar" in w for w in panel.warnings)
    raw = panel.load_ticker("JPM", date(2016, 1, 4), date(2016, 12, 30))
    p = raw.prices
    assert p["date"].to_list() == calendar.sessions(date(2016, 1, 4), date(2016, 12, 30))
    assert p["close"].null_count() == 0 and (p["close"] > 0).all()
    for col in ("open", "high", "low", "volume"):
        assert p.schema[col] == pl.Float64 and p[col].null_count() == p.height
    assert raw.texts.height == 0 and raw.peers.height == 0
    assert set(raw.releases["modality"]) == {"macro"} and raw.releases["released"].max() <= date(2016, 12, 30)
    assert {"market_index", "vix", "core_cpi"} <= set(raw.releases["series"])
    assert raw.provenance["texts"].startswith("none") and raw.provenance["fundamental"].startswith("none")
    with pytest.raises(DataInputError, match=r"'TSLA'.*AAPL"):
        panel.load_ticker("TSLA", date(2016, 1, 4), date(2016, 12, 30))
    with pytest.raises(ValueError, match="planted"):
        panel.oracle_scores(date(2016, 1, 4), date(2016, 12, 30), (1,))


# OHLV-dependent features of the daily table: null for a closes-only source.
OHLV_FEATURES = {
    "price__amihud_21", "price__atr_14", "price__cci_20", "price__close_location", "price__dollar_volume_z_63",
    "price__gap", "price__garman_klass_21d", "price__intraday_ret", "price__mfi_14", "price__obv_flow_21",
    "price__obv_flow_63", "price__parkinson_21d", "price__range_hl", "price__stoch_d_3", "price__stoch_k_14",
    "price__volume_ratio_5_63", "price__volume_z_21", "price__volume_z_5", "price__volume_z_63",
    "price__williams_r_14",
}  # fmt: skip


def test_panel_ticker_runs_through_the_pipeline(panel):
    asof = calendar.sessions(date(2016, 6, 13), date(2016, 6, 17))
    snaps, provenance = pipeline.modality_snapshots(ticker_source(panel, "AAPL"), asof)
    f = pipeline.daily_features_from_snapshots(snaps)
    assert f["date"].to_list() == asof
    null_cols = {c for c in f.columns if f[c].null_count() == f.height}
    price_nulls = {c for c in null_cols if c.startswith("price__")}
    assert price_nulls == OHLV_FEATURES
    close_based = [c for c in f.columns if c.startswith("price__") and c not in OHLV_FEATURES]
    assert {"price__logret_1d", "price__ret_21d", "price__rvol_21d", "price__rsi_14", "price__mom_12_1"} <= set(
        close_based
    )
    assert f.select(close_based).null_count().row(0) == (0,) * len(close_based)
    # no texts: text means are null (counts 0); no fundamentals, no peers: no such columns
    assert {"news__mean", "social__mean"} <= null_cols
    assert (f["news__count"] == 0).all()
    assert not [c for c in f.columns if c.startswith(("fundamental__", "peer__"))]
    assert f["macro__vix"].null_count() == 0
    # closes-only: the warm-up never completes, as the OHLV inputs have no history
    assert (f["history_sessions"] == 0).all() and not f["warmup_complete"].any()
    assert provenance["prices"].startswith("packaged:skfolio")
