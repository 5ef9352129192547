"""The packaged-panel universe demo's plan: its default range gives a pooled out-of-sample span of
at least five years in disjoint, purged yearly folds, and the CLI then skips the single-split
``universe_model`` (it runs only when there is no fold). Pure planning: no images, no training."""

from datetime import date

import polars as pl

from finnex_assets.assets.universe import UniverseWalkForwardConfig, walk_forward_folds
from finnex_assets.cli import UNIVERSE_FINAL, universe_final_selection
from finnex_ml import budget, calendar
from finnex_ml.data.universe import DEFAULT_UNIVERSE_RANGE
from finnex_ml.panel_model import DEFAULT_HORIZON

H = DEFAULT_HORIZON


def _packaged_folds(budget_name: str) -> tuple[list[date], list]:
    lo, hi = (date.fromisoformat(x) for x in DEFAULT_UNIVERSE_RANGE["packaged-panel"])
    dates = calendar.sessions(lo, hi)  # the panel's 20 tickers trade every session: every date has images
    ops = budget.run_config(budget.budget(budget_name, "universe"), "universe")
    cfg = UniverseWalkForwardConfig(**ops["universe_walk_forward"]["config"])
    return dates, walk_forward_folds(pl.DataFrame({"date": dates}), H, cfg)


def test_packaged_demo_pools_six_disjoint_test_years_of_at_least_five_years():
    for name in budget.BUDGET_NAMES:
        dates, folds = _packaged_folds(name)
        assert [f.label for f in folds] == ["2017", "2018", "2019", "2020", "2021", "2022"], name
        tested = [d for f in folds for d in f.test]
        assert len(tested) == len(set(tested))  # no date in two test blocks
        # the blocks tile every image date from the first test year to the range's end
        assert tested == [d for d in dates if d >= date(2017, 1, 1)]
        assert (tested[-1] - tested[0]).days / 365.25 >= 5.9


def test_no_fitted_or_validation_date_is_within_h_sessions_of_its_test_block():
    dates, folds = _packaged_folds("standard")
    pos = {d: i for i, d in enumerate(calendar.all_sessions())}
    for f in folds:
        first_test = pos[f.test[0]]
        trained = [*f.fit, *f.val, *f.window]
        # a training date t has a label over (t, t+h]: it must end before the block's first date
        assert min(first_test - pos[d] for d in trained) == H + 1, f.label
        assert all(d < f.test[0] for d in trained)
        assert pos[f.val[0]] - pos[f.fit[-1]] > H  # the inner validation block purged too
        earlier = sum(d < f.test[0] for d in dates) - H
        assert len(f.window) == min(2 * 252, earlier)  # the rolling two-year window (shorter at first)


def test_single_split_model_is_skipped_only_when_the_walk_forward_has_folds():
    assert universe_final_selection(6) == ["universe_walk_forward", "universe_evaluation"]
    # a year of images (the synthetic demo) has no fold: the single split is the model
    assert universe_final_selection(0) == ["universe_model", "universe_walk_forward", "universe_evaluation"]
    assert universe_final_selection(0) == list(UNIVERSE_FINAL[1:])


def test_the_demo_runs_the_splits_with_the_images_and_labels(monkeypatch):
    """`finnex demo --universe` makes three runs: features, then images + labels + splits (the
    unpartitioned splits in the implicit job, whose subset holds all three), then training; the
    budget lines print between the second and the third."""
    import dagster as dg

    from finnex_assets import cli
    from finnex_assets.definitions import universe_job

    later = [*cli.UNIVERSE_LATER, "universe_splits"]
    job = cli._job_for(later)
    assert job.name != universe_job.name  # the named universe job leaves the splits out
    subset = job.get_subset(asset_selection={dg.AssetKey(s) for s in later})
    assert {k.path[-1] for k in subset.asset_layer.selected_asset_keys} == set(later)
    assert cli._job_for(cli.UNIVERSE_LATER).name == universe_job.name

    calls: list[tuple] = []
    monkeypatch.setattr(cli, "_announce_universe_estimate", lambda *a: calls.append(("estimate",)))
    monkeypatch.setattr(cli, "run_range", lambda start, end, selection: calls.append((start, end, selection)) or True)
    monkeypatch.setattr(cli, "run_universe_training", lambda b, splits=True: calls.append(("training", splits)) or True)
    assert cli.run_universe("2024-01-02", "2024-12-31", "quick")
    assert [c[-1] for c in calls[1:3]] == [cli.UNIVERSE_FEATURES, later]
    assert calls[3] == ("training", False)
