"""Universe mode through Dagster: per-date cross-sections from features to the model, gated
writes, and a date alone byte-identical to the same date in a range."""

import shutil
import warnings
from datetime import date

import dagster as dg
import numpy as np
import polars as pl
import pytest

from finnex_assets.assets import universe
from finnex_assets.assets.images import LOOKBACK
from finnex_assets.assets.universe import UNIVERSE_ASSETS, UniverseResource
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.resources import MlflowTracking
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar, panel
from finnex_ml.encoding.panel_store import panel_index, panel_path, read_cross_section
from finnex_ml.series import SeriesKey

pytestmark = pytest.mark.usefixtures("one_thread")
warnings.filterwarnings("ignore", category=dg.BetaWarning)

START, END = date(2023, 5, 1), date(2023, 6, 9)


def _resources(tmp, n=6):
    storage = FinnexStorage(root=str(tmp))  # universe files under tmp/universe, tables under tmp/tables
    return {
        "universe": UniverseResource(n_tickers=n),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp}/mlflow.db"),
    }


def _run(resources, selection, start=None, end=None, run_config=None, instance=None):
    tags = {"dagster/asset_partition_range_start": str(start), "dagster/asset_partition_range_end": str(end)}
    return dg.materialize(
        UNIVERSE_ASSETS,
        selection=selection,
        resources=resources,
        tags=tags if start else None,
        run_config=run_config,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("universe")
    res = _resources(tmp)
    inst = dg.DagsterInstance.ephemeral()
    lookback = calendar.sessions_back(START, LOOKBACK)
    assert _run(res, ["universe_prices", "universe_features"], lookback, END, instance=inst).success
    # as `finnex demo --universe` runs them: the unpartitioned splits in the images and labels run
    splits_cfg = {"ops": {"universe_splits": {"config": {"horizon": 1}}}}
    later = _run(res, ["universe_images", "universe_labels", "universe_splits"], START, END, splits_cfg, instance=inst)
    assert later.success
    done = [e.asset_key.path[-1] for e in later.get_asset_materialization_events()]
    assert done.count("universe_splits") == 1 and done[-1] == "universe_splits"  # once, after the rest
    assert done.count("universe_images") == done.count("universe_labels") == len(calendar.sessions(START, END))
    cfg = {
        "ops": {
            "universe_model": {"config": {"epochs": 1}},
            "universe_evaluation": {"config": {"n_boot": 200, "n_perm": 200}},
        }
    }
    result = _run(res, ["universe_model", "universe_evaluation"], run_config=cfg, instance=inst)
    assert result.success
    return tmp, res, result


def test_cross_sections_hold_every_listed_ticker_with_history(built):
    tmp, res, _ = built
    prices = pl.read_parquet(tmp / "tables" / "universe_prices" / "*" / "*.parquet")
    index = panel_index(res["storage"].universe.images_root)
    days = calendar.sessions(START, END)
    assert sorted(index["date"].unique().to_list()) == days
    members = res["universe"].source().members()
    for d in (days[0], days[-1]):
        tickers, images = read_cross_section(res["storage"].universe.images_root, d)
        listed = members.filter((pl.col("first") <= d) & (pl.col("last") >= d))["ticker"].to_list()
        assert tickers == sorted(prices.filter(pl.col("date") == d)["ticker"].to_list()) == listed
        assert images.shape == (len(tickers), 512, 512, 3) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        # the store addresses one row of the date's file by (ticker, date)
        store = res["storage"].universe
        assert store.image_path(SeriesKey(tickers[-1], d)) == panel_path(store.images_root, d)
        assert store.read_image(SeriesKey(tickers[-1], d)).tobytes() == images[-1].tobytes()
    keys = res["storage"].universe.keys()
    assert [(k.date, k.ticker) for k in keys] == list(zip(index["date"].to_list(), index["ticker"].to_list()))


def test_labels_splits_and_model_predictions(built):
    tmp, res, result = built
    out = res["storage"].universe.datasets_root
    samples = pl.read_parquet(out / "samples.parquet")
    sets = samples.group_by("set").agg(pl.col("date").min().alias("lo"), pl.col("date").max().alias("hi"))
    span = {r["set"]: (r["lo"], r["hi"]) for r in sets.iter_rows(named=True) if r["set"]}
    # split by date: every ticker of a date is in one set, and sets are in time order
    assert samples.group_by("date").agg(pl.col("set").n_unique().alias("k"))["k"].max() == 1
    assert span["train"][1] < span["val"][0] <= span["val"][1] < span["test"][0]
    preds = pl.read_parquet(out / "predictions.parquet")
    assert set(preds["set"].unique().to_list()) == {"val", "test"}
    assert preds.height == samples.filter(pl.col("set").is_in(["val", "test"])).height
    p = preds.select("p_bottom", "p_middle", "p_top").to_numpy()
    assert np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert np.allclose(preds["score"].to_numpy(), p[:, 2] - p[:, 0])
    # the report: the model first, beside every baseline, on the stated test span
    mat = result.asset_materializations_for_node("universe_evaluation")[0].metadata
    test_dates = samples.filter(pl.col("set") == "test")["date"]
    assert mat["test_span"].value == f"{test_dates.min()}..{test_dates.max()}"
    html = res["storage"].universe.report_path().read_text(encoding="utf-8")
    for name in ("momentum", "reversal", "random", "ridge", "SYNTHETIC", "Out-of-sample span"):
        assert name in html
    assert 0.0 <= mat["permutation_p_value"].value <= 1.0


def test_a_seed_ensemble_scores_the_mean_of_its_seeds(built):
    """train_and_predict trains every seed, then scores each test image once for all of them: the
    ensemble's probabilities are the mean of the seeds' own (each seed trained alone)."""
    from finnex_ml import panel_model
    from finnex_ml.encoding.panel_store import PanelReader

    _, res, _ = built
    store = res["storage"].universe
    samples = pl.read_parquet(store.dataset_path("samples.parquet"))
    cols = ["p_bottom", "p_middle", "p_top"]

    def run(seeds: tuple[int, ...]) -> np.ndarray:
        settings = panel_model.PanelTrainSettings(epochs=1, seeds=seeds, num_threads=1)
        with PanelReader(store.images_root, samples) as reader:
            preds, history = panel_model.train_and_predict(reader, samples, store.read_spec(), 1, settings)
        assert [h["seed"] for h in history] == list(seeds)
        return preds.select(cols).to_numpy()

    both, first, second = run((0, 1)), run((0,)), run((1,))
    assert not np.allclose(first, second)  # two different models
    np.testing.assert_allclose(both, (first + second) / 2, rtol=0, atol=1e-7)


def test_missing_lookback_fails_and_writes_nothing(tmp_path):
    res = _resources(tmp_path, n=4)  # the failure comes before any ticker count matters
    assert _run(res, ["universe_prices", "universe_features"], START, END).success
    result = _run(res, ["universe_images"], START, END)
    assert not result.success
    root = res["storage"].universe.images_root
    assert not list(root.rglob("*.h5"))  # nothing staged is left, nothing committed


def test_a_bad_image_fails_its_checks_naming_date_and_ticker(built, monkeypatch):
    """One band pixel of one ticker's image changed after encoding: the spatial check flags that
    date/ticker, the continuity check it and the ticker's next date (the kept previous image is
    the bad one), the other checks pass, and the gate writes nothing."""
    _, res, _ = built
    root = res["storage"].universe.images_root
    days = calendar.sessions(START, END)[10:13]
    d = days[1]
    tk = sorted(set(read_cross_section(root, d)[0]) & set(read_cross_section(root, days[2])[0]))[0]
    stored = {day: panel_path(root, day).read_bytes() for day in days}
    real = panel.encode_cross_sections

    def tampered(table, dates, spec, norm):
        t = spec.tile("behavioral.green")
        r0, _ = t.row_bands[4]
        for day, items in real(table, dates, spec, norm):
            for name, item in items:
                if (day, name) == (d, tk):  # row 2 of a band, last column of lag 1: not a read-out pixel
                    item.image[r0 + 1, t.col1 - t.px_per_session - 1, t.channel] = 0.123
            yield day, items

    monkeypatch.setattr(panel, "encode_cross_sections", tampered)
    result = _run(res, ["universe_images"], days[0], days[-1])
    assert not result.success
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {n: e.metadata["first_failures"].value for n, e in evaluations.items() if not e.passed} == {
        "spatial_integrity": [f"{d}/{tk}"],
        "temporal_continuity": [f"{d}/{tk}", f"{days[2]}/{tk}"],
    }
    assert evaluations["dtype_shape_range"].passed and evaluations["feature_preservation"].passed
    message = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.to_string()
    assert "spatial_integrity" in message and "temporal_continuity" in message and "nothing written" in message
    assert f"spatial_integrity on 1 image(s), images {d}/{tk}" in message  # the message names date and ticker
    assert {day: panel_path(root, day).read_bytes() for day in days} == stored


def test_commit_fsyncs_each_staged_file_before_its_rename_and_each_folder_after(tmp_path, monkeypatch):
    """The staged writes skip their fsyncs: the commit makes each file durable before it appears
    under its final name, and each receiving folder durable once its renames are done."""
    staging, root = tmp_path / "staging", tmp_path / "root"
    staged = ["2024/01/2024-01-02.h5", "2024/01/2024-01-03.h5", "2024/02/2024-02-01.h5", "previews/2024-01-02_A.png"]
    for rel in staged:
        (staging / rel).parent.mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(rel.encode())
    files, folders = [], {}

    def fsync_file(path):
        rel = path.relative_to(staging).as_posix()
        assert path.exists() and not (root / rel).exists()  # still staged: durable before the rename
        files.append(rel)

    def fsync_dir(path):
        assert path not in folders
        folders[path] = sorted(p.name for p in path.iterdir())

    monkeypatch.setattr(universe, "fsync_file", fsync_file)
    monkeypatch.setattr(universe, "fsync_dir", fsync_dir)
    universe._commit(staging, root)
    assert sorted(files) == sorted(staged)
    assert folders == {
        root / "2024" / "01": ["2024-01-02.h5", "2024-01-03.h5"],
        root / "2024" / "02": ["2024-02-01.h5"],
        root / "previews": ["2024-01-02_A.png"],
    }
    assert all((root / rel).read_bytes() == rel.encode() for rel in staged)


def test_a_date_alone_equals_the_same_date_in_a_range(built, tmp_path):
    """Date d's features, labels and image file built in runs of d alone are byte-identical to d in
    the range runs (the lookback's feature partitions are copied from the range build)."""
    tmp, res, _ = built
    alone = _resources(tmp_path)
    d = calendar.sessions(START, END)[7]
    shutil.copytree(tmp / "tables" / "universe_features", tmp_path / "tables" / "universe_features")
    mine = tmp_path / "tables" / "universe_features" / f"{d.year}" / f"{d}.parquet"
    mine.unlink()
    assert _run(alone, ["universe_prices", "universe_features"], d, d).success
    assert _run(alone, ["universe_images", "universe_labels"], d, d).success
    for asset in ("universe_features", "universe_labels"):
        one = (tmp_path / "tables" / asset / f"{d.year}" / f"{d}.parquet").read_bytes()
        assert one == (tmp / "tables" / asset / f"{d.year}" / f"{d}.parquet").read_bytes(), asset
    t1, a = read_cross_section(alone["storage"].universe.images_root, d)
    t2, b = read_cross_section(res["storage"].universe.images_root, d)
    assert t1 == t2 and a.tobytes() == b.tobytes()
    assert (
        panel_path(alone["storage"].universe.images_root, d).read_bytes()
        == panel_path(res["storage"].universe.images_root, d).read_bytes()
    )


def test_walk_forward_pools_retrained_folds_and_leads_the_report(built):
    """Two short test blocks (block_sessions instead of years, so the month of images suffices):
    the CNN retrained per fold, the blocks pooled once each, a re-run served from the cache, and
    the report leading with the pooled span and the single split after it."""
    import json

    tmp, res, _ = built
    walk = {
        "epochs": 1,
        "block_sessions": 6,
        "min_train_sessions": 14,
        "window_years": 0.0,
        "train_stride": 1,
        "val_fraction": 0.25,
        "num_threads": 1,
    }
    cfg = {
        "ops": {
            "universe_walk_forward": {"config": walk},
            "universe_evaluation": {"config": {"n_boot": 200, "n_perm": 200}},
        }
    }
    result = _run(res, ["universe_walk_forward", "universe_evaluation"], run_config=cfg)
    assert result.success
    meta = result.asset_materializations_for_node("universe_walk_forward")[0].metadata
    assert (meta["folds"].value, meta["folds_cached"].value) == (2, 0)
    out = res["storage"].universe.datasets_root
    samples = pl.read_parquet(out / "samples.parquet")
    dates = samples["date"].unique().sort().to_list()
    blocks = dates[18:30]  # blocks start every 6 dates; the first with 14 earlier dates is the 19th
    pooled = pl.read_parquet(out / "walk_forward" / "pooled_predictions.parquet")
    assert pooled.select("date", "ticker").equals(
        samples.filter(pl.col("date").is_in(blocks)).select("date", "ticker").sort("date", "ticker")
    )
    doc = json.loads((out / "walk_forward" / "walk_forward.json").read_text(encoding="utf-8"))
    for fold in doc["folds"]:
        first_test = dates.index(date.fromisoformat(fold["test_span"][0]))
        assert first_test - dates.index(date.fromisoformat(fold["val_span"][1])) > 1  # purge of h = 1
    html = res["storage"].universe.report_path().read_text(encoding="utf-8")
    assert html.index("Pooled out-of-sample span") < html.index("Single split (secondary)")
    report = json.loads(res["storage"].universe.report_path().with_suffix(".json").read_text(encoding="utf-8"))
    assert report["pooled"]["n_test_dates"] == len(blocks) and report["single_split"] is not None
    ev = result.asset_materializations_for_node("universe_evaluation")[0].metadata
    assert ev["pooled_span"].value == f"{blocks[0]}..{blocks[-1]}"
    # the walk-forward is a logged trial: its rules, one IC per fold, the pooled predictions
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=res["mlflow_tracking"].uri())
    logged = client.get_run(meta["mlflow_run_id"].value)
    assert logged.data.params["block_sessions"] == "6" and logged.data.params["folds"] == "2"
    fold_ics = client.get_metric_history(logged.info.run_id, "mean_ic")
    assert sorted(m.step for m in fold_ics) == [1, 2] and all(-1 <= m.value <= 1 for m in fold_ics)
    assert -1 <= logged.data.metrics["pooled_mean_ic"] <= 1
    assert {a.path for a in client.list_artifacts(logged.info.run_id, "walk_forward")} == {
        "walk_forward/pooled_predictions.parquet",
        "walk_forward/walk_forward.json",
    }
    again = _run(res, ["universe_walk_forward"], run_config={"ops": {"universe_walk_forward": {"config": walk}}})
    assert again.asset_materializations_for_node("universe_walk_forward")[0].metadata["folds_cached"].value == 2
    off = _run(
        res,
        ["universe_walk_forward"],
        run_config={"ops": {"universe_walk_forward": {"config": {"walk_forward": False}}}},
    )
    assert off.success and not (out / "walk_forward" / "pooled_predictions.parquet").exists()


def test_a_new_split_drops_the_single_split_predictions_and_the_report_leads_with_the_pool(built):
    """What ``finnex demo`` does when the walk-forward has folds: universe_model is not run, so
    the previous split's predictions must not be scored on the new sets; the report is the pooled
    walk-forward alone (its folds served from the cache: same samples, same config)."""
    import json

    tmp, res, _ = built
    out = res["storage"].universe.datasets_root
    assert (out / "predictions.parquet").exists()
    walk = {"epochs": 1, "block_sessions": 6, "min_train_sessions": 14, "window_years": 0.0, "train_stride": 1}
    cfg = {
        "ops": {
            "universe_splits": {"config": {"horizon": 1}},
            "universe_walk_forward": {"config": {**walk, "val_fraction": 0.25, "num_threads": 1}},
            "universe_evaluation": {"config": {"n_boot": 200, "n_perm": 200}},
        }
    }
    result = _run(res, ["universe_splits", "universe_walk_forward", "universe_evaluation"], run_config=cfg)
    assert result.success
    assert not (out / "predictions.parquet").exists()
    assert result.asset_materializations_for_node("universe_walk_forward")[0].metadata["folds_cached"].value == 2
    report = json.loads(res["storage"].universe.report_path().with_suffix(".json").read_text(encoding="utf-8"))
    dates = pl.read_parquet(out / "samples.parquet")["date"].unique().sort().to_list()
    assert report["single_split"] is None and report["pooled"]["n_test_dates"] == len(dates[18:30])
    html = res["storage"].universe.report_path().read_text(encoding="utf-8")
    assert "universe_model not materialised" in html
