"""The single-stock demo's default range pools at least two years of out-of-sample dates
(issue 15), counted with the pipeline's own split and walk-forward rules."""

from datetime import date

from finnex_assets.cli import DEFAULT_RANGE
from finnex_ml import calendar
from finnex_ml.dataset_splits import SplitsConfig
from finnex_ml.evaluation.evaluate import ONE_YEAR, EvalConfig, _pooled_folds
from finnex_ml.labels import DEFAULT_HORIZONS
from finnex_ml.splits import temporal_split


def pooled_sessions(start: date, end: date) -> tuple[int, list[str]]:
    sessions = calendar.sessions(start, end)
    h = max(DEFAULT_HORIZONS)
    labelled = sessions[:-h]  # the last h dates have no forward return inside the range
    cfg = SplitsConfig()
    split = temporal_split(labelled, sessions, h, train=cfg.train_fraction, val=cfg.val_fraction)
    sets = {"train": list(split.train), "val": list(split.val), "test": list(split.test)}
    plan = _pooled_folds(sets, DEFAULT_HORIZONS, EvalConfig())
    assert plan is not None
    _, folds, _ = plan
    return sum(len(f.test) for f in folds), [f.label for f in folds]


def test_the_synthetic_demo_pools_over_two_years_out_of_sample():
    start, end = (date.fromisoformat(x) for x in DEFAULT_RANGE["synthetic"])
    n, labels = pooled_sessions(start, end)
    assert labels[:2] == ["2023", "2024"]
    assert n / ONE_YEAR >= 2.0, f"{n} pooled sessions = {n / ONE_YEAR:.2f} years"


def test_the_count_can_fall_short():
    # the previous default (2022-2024) pooled under two years: the check above can fail
    n, _ = pooled_sessions(date(2022, 1, 3), date(2024, 12, 31))
    assert n / ONE_YEAR < 2.0
