"""Point-in-time correctness: nothing published after t's close can reach t's row.

The sources here deliberately misbehave: they hand the pipeline 30 sessions of *future* data
beyond the requested end (prices, peers, texts, releases). A second copy is identical except
that everything that only becomes known after t is perturbed. If the features or any
snapshot row at t differ between the two, something leaks.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from conftest import run_features
from polars.testing import assert_frame_equal

from finnex_ml import calendar, pipeline
from finnex_ml.data.base import RELEASE_SCHEMA, TEXT_SCHEMA, RawData
from finnex_ml.data.synthetic import SyntheticSource

FUTURE_SESSIONS = 30
NEGATIVE = "horrible terrible disaster, awful crash, fraud and panic"
PRICE_COLS = ("open", "high", "low", "close")
DATES = [date(2024, 3, 15), date(2024, 6, 28), date(2024, 11, 29)]  # 11-29 closes at 13:00


def next_session(d: date, n: int = 1) -> date:
    s = calendar.all_sessions()
    return s[s.index(d) + n]


class FutureLeakingSource:
    """Returns [start, end] plus the next ``extra`` sessions of data: a leaky vendor feed."""

    name = "future-leaking"

    def __init__(self, inner=None, extra: int = FUTURE_SESSIONS) -> None:
        self.inner = inner or SyntheticSource(7)
        self.extra = extra

    def load(self, start: date, end: date) -> RawData:
        return self.inner.load(start, next_session(end, self.extra))


def perturb_after(raw: RawData, t: date) -> RawData:
    """Change everything that only becomes known after t's close."""
    close_t = calendar.session_close_utc(t)
    after = pl.col("date") > t
    market_cols = [c for c in raw.prices.columns if c.startswith("market__")]
    prices = raw.prices.with_columns(
        *[pl.when(after).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c) for c in (*PRICE_COLS, *market_cols)],
        pl.when(after).then(pl.col("volume") * 3).otherwise(pl.col("volume")).alias("volume"),
    )
    peers = raw.peers.with_columns(
        pl.when(after).then(pl.col("close") * 1.5).otherwise(pl.col("close")).alias("close"),
        pl.when(after).then(pl.col("volume") * 3).otherwise(pl.col("volume")).alias("volume"),
    )
    late = pl.col("published_at") >= close_t
    texts = raw.texts.with_columns(pl.when(late).then(pl.lit(NEGATIVE)).otherwise(pl.col("text")).alias("text"))
    # Extra posts right at and just after the close: they belong to the next session.
    extra = pl.DataFrame(
        [
            (close_t + timedelta(microseconds=m), src, NEGATIVE)
            for m in (0, 1, 3_600_000_000)
            for src in ("news", "social")
        ],
        schema=TEXT_SCHEMA,
        orient="row",
    )
    texts = pl.concat([texts, extra])
    releases = raw.releases.with_columns(
        pl.when(pl.col("released") > t).then(pl.col("value") + 100).otherwise(pl.col("value")).alias("value")
    )
    return dataclasses.replace(raw, prices=prices, peers=peers, texts=texts, releases=releases)


class PerturbedAfter:
    name = "perturbed"

    def __init__(self, inner, t: date) -> None:
        self.inner, self.t = inner, t

    def load(self, start: date, end: date) -> RawData:
        return perturb_after(self.inner.load(start, end), self.t)


class Injecting:
    """Adds fixed release / text rows to whatever the inner source returns, whatever the window."""

    name = "injecting"

    def __init__(self, inner, releases: pl.DataFrame | None = None, texts: pl.DataFrame | None = None) -> None:
        self.inner, self.releases, self.texts = inner, releases, texts

    def load(self, start: date, end: date) -> RawData:
        raw = self.inner.load(start, end)
        return dataclasses.replace(
            raw,
            releases=raw.releases if self.releases is None else pl.concat([raw.releases, self.releases]),
            texts=raw.texts if self.texts is None else pl.concat([raw.texts, self.texts]),
        )


def assert_same_run(a, b) -> None:
    assert set(a.snapshots) == set(pipeline.MODALITIES) == set(b.snapshots)
    for name in pipeline.MODALITIES:
        assert_frame_equal(a.snapshots[name], b.snapshots[name], check_exact=True)
    assert a.features.equals(b.features)
    assert_frame_equal(a.features, b.features, check_exact=True)


# --------------------------------------------------------------------------- the sources misbehave


def test_leaking_source_really_hands_over_future_data():
    t = date(2024, 6, 28)
    start = calendar.sessions_back(t, 300)
    raw = FutureLeakingSource().load(start, t)
    future = next_session(t, FUTURE_SESSIONS)
    assert raw.prices["date"].max() == future
    assert raw.peers["date"].max() == future
    assert raw.releases["released"].max() > t
    assert raw.texts["published_at"].max() > calendar.session_close_utc(next_session(t, FUTURE_SESSIONS - 1))
    # ... and the perturbed copy really differs after t, and only there.
    pert = perturb_after(raw, t)
    before = pl.col("date") <= t
    assert raw.prices.filter(before).equals(pert.prices.filter(before))
    ratio = pert.prices.filter(~before)["close"] / raw.prices.filter(~before)["close"]
    assert ((ratio - 1.5).abs() < 1e-12).all()
    assert (
        pert.releases.filter(pl.col("released") > t)["value"] - raw.releases.filter(pl.col("released") > t)["value"]
    ).round(9).unique().to_list() == [100.0]
    changed = pert.texts.head(raw.texts.height).filter(pl.col("text") != raw.texts["text"])
    assert changed.height > 20 and changed["published_at"].min() >= calendar.session_close_utc(t)


# --------------------------------------------------------------------------- single-date runs


@pytest.fixture(scope="module")
def leaky_runs() -> dict[date, object]:
    src = FutureLeakingSource()
    return {t: run_features(src, [t]) for t in DATES}


@pytest.mark.parametrize("t", DATES, ids=str)
def test_data_after_t_cannot_change_t(leaky_runs, t):
    base = leaky_runs[t]
    assert base.features["date"].to_list() == [t]
    assert base.features.row(0, named=True)["warmup_complete"] is True
    perturbed = run_features(PerturbedAfter(FutureLeakingSource(), t), [t])
    assert_same_run(base, perturbed)
    # Every snapshot stops at t.
    for name, snap in base.snapshots.items():
        assert snap["date"].max() == t, name
        assert snap["asof"].unique().to_list() == [t], name


@pytest.mark.parametrize("t", DATES, ids=str)
def test_perturbing_from_t_on_changes_t(leaky_runs, t):
    """The control: the same perturbation starting one session earlier must show at t."""
    base = leaky_runs[t].row(t)
    prev = next_session(t, -1)
    row = run_features(PerturbedAfter(FutureLeakingSource(), prev), [t]).row(t)
    for col in (
        "price__logret_1d",
        "price__volume_z_5",
        "peer__peera_ret_1d",
        "macro__vix",
        "macro__vix_chg",
        "news__mean",
        "social__mean",
        "news__count",
        "social__count",
    ):
        assert row[col] != pytest.approx(base[col], rel=1e-9, abs=1e-12), col
    assert row["price__logret_1d"] == pytest.approx(base["price__logret_1d"] + math.log(1.5), abs=1e-12)
    assert row["news__count"] >= base["news__count"] + 3  # the three posts at and after prev's close


# --------------------------------------------------------------------------- releases and texts


def test_monthly_release_after_t_is_invisible_at_t():
    """May's CPI revision released on 2 July must not show on 28 June, though May has ended."""
    t, released = date(2024, 6, 28), date(2024, 7, 2)
    inject = pl.DataFrame(
        {
            "modality": ["macro", "macro"],
            "series": ["cpi_yoy", "late_series"],
            "period_end": [date(2024, 5, 31)] * 2,
            "released": [released] * 2,
            "value": [999.0, 42.0],
        },
        schema=RELEASE_SCHEMA,
    )
    plain = run_features(SyntheticSource(7), [t])
    alone = run_features(Injecting(SyntheticSource(7), releases=inject), [t])
    rng = run_features(Injecting(SyntheticSource(7), releases=inject), calendar.sessions(t, released))
    base = plain.row(t)
    for run in (alone, rng):
        row = run.row(t)
        assert row["macro__cpi_yoy"] == base["macro__cpi_yoy"] != 999.0
        assert row["macro__cpi_yoy_age"] == base["macro__cpi_yoy_age"]
        assert row["macro__cpi_yoy_chg"] == base["macro__cpi_yoy_chg"]
        assert row["macro__late_series"] is None
        assert row["macro__late_series_age"] is None
    # The injection is wired: it shows from its release session on, and not the session before.
    assert rng.row(date(2024, 7, 1))["macro__cpi_yoy"] == base["macro__cpi_yoy"]
    on = rng.row(released)
    assert on["macro__cpi_yoy"] == 999.0 and on["macro__cpi_yoy_age"] == 0.0
    # The injection revises May, the current period: the change is against April, the previous
    # period (base value minus base change), not against May's first print (revised series).
    assert on["macro__cpi_yoy_chg"] == pytest.approx(999.0 - (base["macro__cpi_yoy"] - base["macro__cpi_yoy_chg"]))
    assert on["macro__late_series"] == 42.0 and on["macro__late_series_age"] == 0.0
    # The snapshot rows agree too: at t the macro snapshot carries no trace of the revision.
    snap = rng.snapshots["macro_data"].filter(pl.col("asof") == t)
    assert (snap["cpi_yoy"] != 999.0).all() and snap["late_series"].is_null().all()


@pytest.mark.parametrize(
    "t, before, after, next_t",
    [
        (date(2024, 3, 14), (15, 59), (16, 30), date(2024, 3, 15)),
        (date(2024, 11, 29), (12, 59), (13, 30), date(2024, 12, 2)),  # early close at 13:00
    ],
    ids=["normal-day", "early-close"],
)
def test_text_after_the_close_counts_for_the_next_session(t, before, after, next_t):
    def stamp(hm):
        return datetime(t.year, t.month, t.day, *hm, tzinfo=calendar.NEW_YORK).astimezone(UTC)

    texts = pl.DataFrame(
        [(stamp(before), "news", "great excellent wonderful results, superb"), (stamp(after), "news", NEGATIVE)],
        schema=TEXT_SCHEMA,
        orient="row",
    )
    dates = [t, next_t]
    base = run_features(SyntheticSource(7), dates)
    inj = run_features(Injecting(SyntheticSource(7), texts=texts), dates)
    alone = run_features(Injecting(SyntheticSource(7), texts=texts), [t])
    assert inj.row(t)["news__count"] == base.row(t)["news__count"] + 1
    assert inj.row(next_t)["news__count"] == base.row(next_t)["news__count"] + 1
    assert inj.row(t)["news__mean"] > base.row(t)["news__mean"]  # only the positive one at t
    assert inj.row(next_t)["news__mean"] < base.row(next_t)["news__mean"]
    assert_frame_equal(alone.features, inj.features.filter(pl.col("date") == t), check_exact=True)


# --------------------------------------------------------------------------- multi-date runs


def test_range_run_rows_up_to_t_ignore_later_data():
    t = date(2024, 6, 28)
    dates = calendar.sessions(next_session(t, -5), next_session(t, 5))
    assert len(dates) == 11
    base = run_features(SyntheticSource(7), dates)
    pert = run_features(PerturbedAfter(SyntheticSource(7), t), dates)
    upto = pl.col("date") <= t
    assert_frame_equal(base.features.filter(upto), pert.features.filter(upto), check_exact=True)
    for name in pipeline.MODALITIES:
        keep = pl.col("asof") <= t
        assert_frame_equal(base.snapshots[name].filter(keep), pert.snapshots[name].filter(keep), check_exact=True)
    # Control: every later row does change.
    later_base = base.features.filter(~upto)
    later_pert = pert.features.filter(~upto)
    assert later_base.height == 5
    assert (later_base["price__ret_10d"] != later_pert["price__ret_10d"]).all()


@pytest.fixture(scope="module")
def alone_and_range():
    """2024-03-14 alone, and inside a run that starts on 2024-03-01 (as in the Dagster tests)."""
    t = date(2024, 3, 14)
    alone = run_features(SyntheticSource(7), [t])
    rng = run_features(SyntheticSource(7), calendar.sessions(date(2024, 3, 1), date(2024, 3, 14)))
    first = run_features(SyntheticSource(7), [date(2024, 3, 1)])
    return t, alone, rng, first


@pytest.mark.parametrize(
    "name",
    [
        "market_data",
        "peer_data",
        "sentiment_data",
        "macro_data",
        "fundamental_data",
    ],
)
def test_snapshot_alone_equals_snapshot_in_a_range(alone_and_range, name):
    t, alone, rng, _ = alone_and_range
    assert_frame_equal(alone.snapshots[name], rng.snapshots[name].filter(pl.col("asof") == t), check_exact=True)


def test_features_alone_equal_features_in_a_range_exactly(alone_and_range):
    t, alone, rng, _ = alone_and_range
    assert_frame_equal(alone.features, rng.features.filter(pl.col("date") == t), check_exact=True)


def test_first_date_of_a_range_equals_it_alone(alone_and_range):
    _, _, rng, first = alone_and_range
    assert_frame_equal(first.features, rng.features.filter(pl.col("date") == date(2024, 3, 1)), check_exact=True)
