"""Labels: hand-computed example, sqrt(h) scaling, the no-label tail, and the Dagster asset."""

from __future__ import annotations

import math
import statistics
import tempfile
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from finnex_assets.assets.datasets import MAX_HORIZON, LabelsConfig, labels
from finnex_assets.assets.ingestion import modalities
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar
from finnex_ml.errors import ConfigError
from finnex_ml.labels import BUY, HOLD, SELL, LabelConfig, class_distribution, classify, compute_labels

# ---- the pure computation against a hand-worked example ---------------------------------------

D = [date(2024, 1, 1) + timedelta(days=i) for i in range(8)]  # the series is its own calendar here
CLOSE = [100.0, 102.0, 102.0, 99.96, 101.0, 99.0, 97.0, 101.5]
PRICES = pl.DataFrame({"date": D, "close": CLOSE})
CFG = LabelConfig(horizons=(1, 4), k=0.5, vol_window=3)


def _row(table: pl.DataFrame, d: date) -> dict:
    return table.filter(pl.col("date") == d).to_dicts()[0]


def test_hand_computed_example() -> None:
    out = compute_labels(PRICES, D, CFG)
    # t = D[3] (99.96): the three returns up to t are +2 %, 0 %, -2 % -> sample sd exactly 0.02
    r = _row(out, D[3])
    assert r["sigma"] == pytest.approx(0.02, rel=1e-12)
    assert r["threshold_1d"] == pytest.approx(0.01, rel=1e-12)  # 0.5 * 0.02
    assert r["threshold_4d"] == pytest.approx(0.02, rel=1e-12)  # 0.5 * 0.02 * sqrt(4)
    assert r["return_1d"] == pytest.approx(101.0 / 99.96 - 1)  # +1.04 % > 1 %
    assert r["class_1d"] == BUY
    assert r["return_4d"] == pytest.approx(101.5 / 99.96 - 1)  # +1.54 % < 2 %: Hold
    assert r["class_4d"] == HOLD  # (Buy without the sqrt(h))
    assert r["fwd_date_4d"] == D[7] and r["close_4d"] == 101.5
    # t = D[4] (101): returns 0 %, -2 %, +1.0404 %
    r = _row(out, D[4])
    sd = statistics.stdev([102 / 102 - 1, 99.96 / 102 - 1, 101 / 99.96 - 1])
    assert r["sigma"] == pytest.approx(sd, rel=1e-12)
    assert r["return_1d"] == pytest.approx(99 / 101 - 1)  # -1.98 % < -0.765 %: Sell
    assert r["class_1d"] == SELL
    # no-label tail: D[4] + 4 sessions is past the last price -> null, not Hold
    assert r["return_4d"] is None and r["class_4d"] is None and r["close_4d"] is None
    assert _row(out, D[6])["class_1d"] is not None and _row(out, D[6])["class_4d"] is None
    last = _row(out, D[7])
    assert last["class_1d"] is None and last["return_1d"] is None
    # fewer than vol_window returns: the return is known but there is no class
    early = _row(out, D[2])
    assert early["sigma"] is None and early["class_1d"] is None
    assert early["return_1d"] == pytest.approx(99.96 / 102 - 1)


def test_fixed_thresholds_do_not_scale() -> None:
    out = compute_labels(PRICES, D, LabelConfig(horizons=(1, 4), threshold="fixed", fixed=0.02, vol_window=3))
    assert _row(out, D[3])["class_1d"] == HOLD  # +1.04 %
    assert _row(out, D[4])["class_1d"] == HOLD  # -1.98 % is inside +/-2 %
    assert _row(out, D[5])["class_1d"] == SELL  # 97/99 - 1 = -2.02 %
    assert _row(out, D[3])["threshold_4d"] == 0.02  # fixed means fixed, for every horizon
    assert _row(out, D[1])["class_1d"] == HOLD  # fixed rule needs no sigma


def test_horizon_counts_calendar_sessions_not_rows() -> None:
    cal = sorted(D + [date(2023, 12, 31)])  # a session before the series changes nothing
    assert compute_labels(PRICES, D, CFG, sessions=cal).equals(compute_labels(PRICES, D, CFG))
    # drop D[4]'s price: t = D[3] + 1 session is missing, so no 1-day label (never D[5]'s price)
    gappy = PRICES.filter(pl.col("date") != D[4])
    r = _row(compute_labels(gappy, [D[3]], CFG, sessions=D), D[3])
    assert r["fwd_date_1d"] == D[4] and r["return_1d"] is None and r["class_1d"] is None
    assert r["return_4d"] == pytest.approx(101.5 / 99.96 - 1)


def test_ties_at_the_threshold_are_hold() -> None:
    got = classify(np.array([0.01, -0.01, 0.0100001, -0.0100001, np.nan]), np.array(0.01))
    assert got.tolist() == [HOLD, HOLD, BUY, SELL, -1]


def test_sqrt_h_keeps_classes_balanced_on_normal_returns() -> None:
    rng = np.random.default_rng(3)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.015, 3000))
    days = [date(2000, 1, 1) + timedelta(days=i) for i in range(close.size)]
    out = compute_labels(pl.DataFrame({"date": days, "close": close}), days, LabelConfig())
    dist = class_distribution(out)
    for h in ("1d", "5d"):  # about 31 / 38 / 31 for both horizons because the threshold scales with sqrt(h)
        assert dist[h]["hold_share"] == pytest.approx(0.38, abs=0.04), dist
        assert dist[h]["buy_share"] == pytest.approx(0.31, abs=0.04), dist
        assert dist[h]["sell_share"] == pytest.approx(0.31, abs=0.04), dist
    assert dist["5d"]["unlabeled"] == 30 + 5 and dist["1d"]["unlabeled"] == 30 + 1


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        LabelConfig(horizons=(0, 5))
    with pytest.raises(ConfigError):
        LabelConfig(horizons=(1, 1))
    with pytest.raises(ConfigError, match="maximum"):
        LabelsConfig(horizons=[1, MAX_HORIZON + 1]).label_config()


# ---- the Dagster asset -----------------------------------------------------------------------

FIRST, LAST = "2024-03-01", "2024-04-30"


def _res(tmp):
    storage = FinnexStorage(root=str(tmp))
    return {
        "data_source": DataSourceResource(kind="synthetic"),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
    }


def _run(res, a, b, selection, config=None):
    return dg.materialize(
        [modalities, labels],
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,
        run_config=config,
        tags={"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b},
    )


def _read(tmp, asset, d: date) -> pl.DataFrame:
    return pl.read_parquet(tmp / "tables" / asset / f"{d.year}" / f"{d.isoformat()}.parquet")


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("labels")
    res = _res(tmp)
    assert _run(res, FIRST, LAST, [dg.AssetKey("market_data")]).success
    out = _run(res, FIRST, LAST, [labels])
    return tmp, res, out


def test_asset_labels_read_future_closes_from_the_source_and_checks_pass(market) -> None:
    tmp, _, out = market
    assert out.success
    checks = {e.check_name: e.passed for e in out.get_asset_check_evaluations()}
    assert checks == {
        "past_volatility_only": True,
        "no_label_without_future_price": True,
        "class_distribution_within_bounds": True,
    }
    days = calendar.sessions(FIRST, LAST)
    table = pl.concat([_read(tmp, "labels", d) for d in days])
    assert table["date"].to_list() == days
    # t + h past the last materialised market_data partition: close(t+h) from the source
    assert table["class_1d"].null_count() == 0 and table["class_5d"].null_count() == 0
    assert table["fwd_date_5d"].to_list()[-1] == calendar.sessions_forward(days[-1], 5)
    meta = out.asset_materializations_for_node("labels")[0].metadata
    assert meta["unlabeled_dates"].data == []
    # sqrt(h) scaling of the threshold
    np.testing.assert_allclose(
        table["threshold_5d"].to_numpy(), table["threshold_1d"].to_numpy() * math.sqrt(5), rtol=1e-12
    )


def test_asset_values_match_market_data_by_hand(market) -> None:
    tmp, _, _ = market
    t = date(2024, 3, 28)  # 2024-03-29 is Good Friday: t+1 session is 2024-04-01
    row = _read(tmp, "labels", t).to_dicts()[0]
    snap = _read(tmp, "market_data", t).sort("date")
    assert snap["date"].max() == t
    c = snap["close"].to_list()
    sd = statistics.stdev([c[i] / c[i - 1] - 1 for i in range(len(c) - 30, len(c))])
    assert row["sigma"] == pytest.approx(sd, rel=1e-10)
    nxt = _read(tmp, "market_data", date(2024, 4, 1))
    c1 = nxt.filter(pl.col("date") == date(2024, 4, 1))["close"][0]
    assert row["fwd_date_1d"] == date(2024, 4, 1)
    assert row["return_1d"] == pytest.approx(c1 / c[-1] - 1, rel=1e-12)
    thr = 0.5 * sd
    assert row["class_1d"] == (BUY if row["return_1d"] > thr else SELL if row["return_1d"] < -thr else HOLD)


def test_single_date_equals_range_and_tail_is_revisited(market, tmp_path) -> None:
    tmp, res, _ = market
    days = calendar.sessions(FIRST, LAST)
    # a mid-range date rematerialised alone reads the same partitions -> identical row
    before = _read(tmp, "labels", days[10])
    assert _run(res, days[10].isoformat(), days[10].isoformat(), [labels]).success
    assert _read(tmp, "labels", days[10]).equals(before)
    # the tail's future closes came from the source; once market_data for those sessions is
    # materialised the same labels come from the partitions, to the bit
    tail = pl.concat([_read(tmp, "labels", d) for d in days[-5:]])
    nxt = calendar.sessions(days[-1] + timedelta(days=1), days[-1] + timedelta(days=12))[:5]
    assert _run(res, nxt[0].isoformat(), nxt[-1].isoformat(), [dg.AssetKey("market_data")]).success
    assert _run(res, days[-5].isoformat(), days[-1].isoformat(), [labels]).success
    assert pl.concat([_read(tmp, "labels", d) for d in days[-5:]]).equals(tail)
    assert tail["fwd_date_5d"].to_list()[-1] == nxt[-1]


def test_labels_stop_where_the_source_stops(tmp_path, monkeypatch) -> None:
    """Never beyond what exists: with a files source whose prices end on 2024-03-13, the last
    h sessions of a range ending there stay unlabeled (null, not Hold) for horizon h."""
    repo = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(repo))
    storage = FinnexStorage(root=str(tmp_path))
    res = {
        "data_source": DataSourceResource(kind="files", mapping_path="examples/files_source/mapping.yaml"),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
    }
    first, last = "2024-02-26", "2024-03-13"
    assert _run(res, first, last, [dg.AssetKey("market_data")]).success
    out = _run(res, first, last, [labels])
    assert out.success
    days = calendar.sessions(first, last)
    table = pl.concat([_read(tmp_path, "labels", d) for d in days])
    assert table.filter(pl.col("class_1d").is_null())["date"].to_list() == days[-1:]
    assert table.filter(pl.col("class_5d").is_null())["date"].to_list() == days[-5:]
    assert table.filter(pl.col("return_5d").is_null())["date"].to_list() == days[-5:]
    meta = out.asset_materializations_for_node("labels")[0].metadata
    assert meta["unlabeled_dates"].data == [d.isoformat() for d in days[-5:]]


def test_build_labels_never_asks_the_source_for_today_or_later() -> None:
    from finnex_ml.label_build import build_labels

    asked: list[date] = []

    def closes(sessions):
        asked.extend(sessions)
        return {s: 100.0 for s in sessions}

    t = date(2024, 3, 28)
    snap = pl.DataFrame(
        {
            "asof": [t] * 31,
            "date": calendar.sessions(date(2024, 2, 1), t)[-31:],
            "close": [100.0 + i for i in range(31)],
        }
    )
    folder = Path(tempfile.mkdtemp())
    snap.write_parquet(folder / "t.parquet")
    out = build_labels(
        lambda d: folder / "t.parquet" if d == t else folder / "missing",
        [t],
        LabelConfig((1, 5)),
        closes,
        today=date(2024, 4, 3),
    )
    assert asked == calendar.sessions(date(2024, 4, 1), date(2024, 4, 2))  # sessions before "today" only
    assert out["class_1d"][0] is not None and out["class_5d"][0] is None


def test_missing_market_data_for_t_is_a_clear_error(tmp_path) -> None:
    out = _run(_res(tmp_path), "2024-03-04", "2024-03-05", [labels])
    assert not out.success
    failure = [e for e in out.all_events if e.is_step_failure][0]
    err = failure.step_failure_data.error
    msg = err.message + (err.cause.message if err.cause else "")
    assert "market_data" in msg and "2024-03-04" in msg


def test_failing_blocking_label_check_writes_no_labels(tmp_path, monkeypatch) -> None:
    """The checks run before the output: a failing blocking check leaves no labels partition
    on disk and records no materialisation, while the failed evaluation is still reported."""
    import pandera.polars as pa

    res = _res(tmp_path)
    assert _run(res, "2024-03-01", "2024-03-15", [dg.AssetKey("market_data")]).success
    bad = date(2024, 3, 6)
    forced = pa.DataFrameSchema(
        checks=[pa.Check(lambda data: data.lazyframe.select(pl.col("date") != bad), name="forced_failure")]
    )
    monkeypatch.setattr("finnex_ml.labels.future_price_schema", lambda *a, **k: forced)
    out = _run(res, "2024-03-04", "2024-03-08", [labels])
    assert not out.success
    evals = {e.check_name: e for e in out.get_asset_check_evaluations()}
    assert evals["no_label_without_future_price"].passed is False
    assert evals["past_volatility_only"].passed is True
    failure = [e for e in out.all_events if e.is_step_failure][0]
    err = failure.step_failure_data.error
    msg = err.message + (err.cause.message if err.cause else "")
    assert "no_label_without_future_price" in msg and bad.isoformat() in msg and "nothing written" in msg
    assert not (tmp_path / "tables" / "labels").exists()
    assert out.asset_materializations_for_node("labels") == []
