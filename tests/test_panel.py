"""Universe mode's panel: one ticker is today's pipeline, listings without survivorship,
cross-sectional features and labels from each date's universe only."""

from datetime import date

import numpy as np
import polars as pl
import pytest

from finnex_ml import calendar, panel, pipeline
from finnex_ml.data.synthetic import SyntheticSource
from finnex_ml.data.universe import universe_source
from finnex_ml.encoding import build_layout, encode_dates
from finnex_ml.encoding.normalize import NormConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_single_ticker_universe_is_todays_pipeline():
    """Features and image bytes of a one-ticker universe equal the single-stock pipeline's."""
    asof = calendar.sessions(date(2023, 1, 3), date(2024, 3, 28))
    source = SyntheticSource(7)
    uni = panel.SingleStockUniverse(source, "FNX", date(2000, 1, 3), date(2030, 1, 2))
    prices, feats = panel.panel_features(uni, asof)
    today = pipeline.daily_features_from_snapshots(pipeline.modality_snapshots(source, asof)[0])
    assert feats["ticker"].unique().to_list() == ["FNX"]
    assert not [c for c in feats.columns if c.startswith("peer__xs_")]  # no cross-section of one
    assert feats.drop("ticker").equals(today)
    assert prices.height == len(asof) and prices["close"].null_count() == 0
    spec = build_layout(today.columns)
    dates = asof[-3:]
    mine = [
        (d, [(tk, it.image.copy()) for tk, it in items])
        for d, items in panel.encode_cross_sections(feats, dates, spec, NormConfig())
    ]
    ref = [it.image for it in encode_dates(today, dates, spec, NormConfig())]
    assert [d for d, _ in mine] == dates
    for (_, items), img in zip(mine, ref):
        assert [tk for tk, _ in items] == ["FNX"]
        assert items[0][1].tobytes() == img.tobytes()


@pytest.fixture(scope="module")
def around_a_listing():
    uni = universe_source("synthetic", n_tickers=8, seed=7)
    listed = uni.members().filter((pl.col("first") > date(2024, 1, 2)) & (pl.col("first") < date(2024, 12, 1)))
    assert listed.height >= 1, "the universe lists a ticker in the demo year 2024"
    new = listed.row(0, named=True)
    asof = calendar.sessions(calendar.sessions_back(new["first"], 25), calendar.sessions_forward(new["first"], 15))
    return uni, new, asof, *panel.panel_features(uni, asof)


def test_listed_mid_range_appears_from_its_first_price(around_a_listing):
    uni, new, asof, prices, feats = around_a_listing
    rows = prices.filter(pl.col("ticker") == new["ticker"])
    assert rows["date"].min() == new["first"]  # from the listing on ...
    assert rows["date"].to_list() == [d for d in asof if d >= new["first"]]  # ... every session, nothing before
    assert feats.filter(pl.col("ticker") == new["ticker"])["date"].to_list() == rows["date"].to_list()
    # universe membership per date: the others every day, the new ticker only from its listing
    per_date = dict(prices.group_by("date").len().iter_rows())
    assert per_date[new["first"]] == per_date[calendar.sessions_back(new["first"], 2)] + 1
    assert prices.select(pl.struct("date", "ticker").is_unique().all()).item()
    # no image before the listing, and none until it has the image's whole history
    elig = panel.image_eligibility(feats, asof, need=60)
    assert all(new["ticker"] not in tks for tks in elig.values())


def test_cross_sectional_features_use_only_that_dates_universe(around_a_listing):
    uni, _, asof, prices, feats = around_a_listing
    d = asof[10]
    day = feats.filter(pl.col("date") == d)
    # excess over the universe mean sums to zero; ranks span [0, 1]
    assert abs(day["peer__xs_excess_ret_1d"].sum()) < 1e-12
    r = day["peer__xs_rank_ret_1d"].drop_nulls()
    assert r.min() == 0.0 and r.max() == 1.0
    order = np.argsort(day["price__logret_1d"].to_numpy())
    assert np.all(np.diff(day["peer__xs_rank_ret_1d"].to_numpy()[order]) > 0)
    # the same date alone gives the same values (nothing from other dates enters)
    _, alone = panel.panel_features(uni, [d])
    cols = [c for c in feats.columns if c.startswith("peer__xs_")]
    assert alone.select("ticker", *cols).equals(day.select("ticker", *cols))


def test_panel_labels_excess_and_terciles(around_a_listing):
    uni, new, asof, prices, _ = around_a_listing
    hist = panel.panel_prices(uni, calendar.sessions_back(asof[0], 40), calendar.sessions_forward(asof[-1], 20))
    lab = panel.panel_labels(hist, asof)
    assert lab.select("date", "ticker").equals(prices.select("date", "ticker"))
    for h in panel.PANEL_HORIZONS:
        by = lab.group_by("date").agg(
            pl.col(panel.excess_col(h)).sum().abs().alias("s"),
            *[(pl.col(panel.xs_class_col(h)) == k).sum().alias(f"c{k}") for k in range(3)],
        )
        assert by["s"].max() < 1e-12
        counts = by.select("c0", "c1", "c2").to_numpy()
        assert (counts.max(1) - counts.min(1)).max() <= 1
    # the class orders the excess return within a date
    day = lab.filter(pl.col("date") == asof[5]).sort(panel.excess_col(5))
    assert day[panel.xs_class_col(5)].to_list() == sorted(day[panel.xs_class_col(5)].to_list())
    # h-session return recomputed from the closes
    t, fwd = asof[3], calendar.sessions_forward(asof[3], 5)
    tk = lab.filter(pl.col("date") == t)["ticker"][0]
    row = lab.filter((pl.col("date") == t) & (pl.col("ticker") == tk)).row(0, named=True)
    c = dict(hist.filter(pl.col("ticker") == tk).select("date", "close").iter_rows())
    assert row["return_5d"] == pytest.approx(c[fwd] / c[t] - 1, rel=1e-12)


def test_delisted_ticker_has_no_label_past_its_last_price():
    uni = universe_source("synthetic", n_tickers=8, seed=7)
    gone = uni.members().filter((pl.col("last") > date(2024, 1, 10)) & (pl.col("last") < date(2024, 12, 1)))
    assert gone.height >= 1
    tk, last = gone["ticker"][0], gone["last"][0]
    days = calendar.sessions(calendar.sessions_back(last, 8), last)
    hist = panel.panel_prices(uni, calendar.sessions_back(days[0], 40), calendar.sessions_forward(last, 25))
    assert hist.filter(pl.col("ticker") == tk)["date"].max() == last
    lab = panel.panel_labels(hist, days).filter(pl.col("ticker") == tk)
    # 1-day labels exist until the last session, the last one has none; never a guessed Hold
    assert lab.filter(pl.col("date") == last)["class_1d"].null_count() == 1
    assert lab.filter(pl.col("date") < last)["class_1d"].null_count() == 0
    assert lab.filter(pl.col("date") >= calendar.sessions_back(last, 5))["xs_class_5d"].null_count() == 5


def test_closes_only_panel_records_ohlv_features_as_missing_in_the_image():
    """The packaged panel ships closes only: every feature needing open/high/low/volume is missing
    in the image's mask (never faked), close-based ones are present."""
    from finnex_ml.data.universe import PackagedPanel, ticker_source

    d = date(2016, 6, 30)
    one = panel.SingleStockUniverse(ticker_source(PackagedPanel(), "AAPL"), "AAPL", date(1995, 1, 3), d)
    asof = calendar.sessions(calendar.sessions_back(d, 307), d)
    _, feats = panel.panel_features(one, asof)
    spec = build_layout([c for c in feats.columns if c != "ticker"])
    [(day, [(tk, item)])] = list(panel.encode_cross_sections(feats, [d], spec, NormConfig()))
    col = {f: i for i, f in enumerate(spec.features)}
    for needs_ohlv in ("price__parkinson_21d", "price__garman_klass_21d", "price__atr_14", "price__mfi_14"):
        assert item.missing[:, col[needs_ohlv]].all(), needs_ohlv
    for close_only in ("price__logret_1d", "price__ret_21d", "price__rvol_21d", "price__rsi_14"):
        assert not item.missing[:, col[close_only]].any(), close_only
