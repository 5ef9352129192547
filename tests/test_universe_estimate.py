"""The universe demo's wall-time estimate: per stage, partitions x Dagster rates plus work x rates,
every epoch counted; the single-split model appears only when asked for."""

import pytest

from finnex_ml.universe_estimate import MEASURED, StageRates, estimate_universe_demo

RATES = StageRates(
    run_start_per_partition=0.1,
    output_per_partition=0.05,
    features_per_ticker_session=0.01,
    images_per_image=0.03,
    labels_per_ticker_date=0.002,
    train_per_image=0.02,
    predict_per_image=0.005,
    cells_per_image=0.003,
    test_per_image=0.007,
    load_average=2.0,
)


def test_stage_seconds_are_work_times_the_rates():
    est = estimate_universe_demo(10, 300, 100, [(400, 100, 1000), (600, 100, 1000)], 2, 1, rates=RATES)
    assert est.seconds["features"] == pytest.approx(300 * (0.1 + 0.1 + 10 * 0.01))
    assert est.seconds["images and labels"] == pytest.approx(100 * (0.1 + 0.1 + 10 * 0.032))
    # cells once per fold's fitted and validation images; the test blocks from pixels
    assert est.seconds["walk-forward"] == pytest.approx(2 * (1000 * 0.02 + 200 * 0.005) + 1200 * 0.003 + 2000 * 0.007)
    assert "single-split model" not in est.seconds
    assert est.total == pytest.approx(sum(est.seconds.values()))
    assert "load average 2" in est.describe()


def test_single_split_adds_its_training_and_bad_input_is_refused():
    est = estimate_universe_demo(10, 300, 100, [], 2, 1, single_split=(600, 200, 200, 5), rates=RATES)
    assert est.seconds["walk-forward"] == 0
    assert est.seconds["single-split model"] == pytest.approx(
        5 * (600 * 0.02 + 200 * 0.005) + 800 * 0.003 + 400 * 0.007
    )
    with pytest.raises(ValueError, match="tickers"):
        estimate_universe_demo(0, 300, 100, [], 1, 1)


def test_measured_rates_are_all_positive():
    assert all(v > 0 for v in vars(MEASURED).values())
