"""model_evaluation end to end: models and baselines on identical dates, controls at chance, a
planted leak caught, reports written; library-level and through Dagster."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import dagster as dg
import h5py
import numpy as np
import polars as pl
import pytest

from finnex_assets.assets.evaluation import (
    evaluation_report,
    model_evaluation,
    permuted_label_control,
    qa_report,
    walk_forward_networks,
)
from finnex_assets.definitions import ALL_ASSETS
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.resources import MlflowTracking, ProjectChecks
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar
from finnex_ml import labels as lb
from finnex_ml import splits as sp
from finnex_ml.datasets_io import set_dataset, write_set_file
from finnex_ml.encoding import NormConfig, build_layout, write_spec
from finnex_ml.encoding.store import image_path
from finnex_ml.evaluation.evaluate import EvalConfig, EvalInputs, run_evaluation, train_network_controls
from finnex_ml.evaluation.leakage import LeakageError, scan_features
from finnex_ml.patches import extract_patches, shard_path
from finnex_ml.schemas import feature_columns
from finnex_ml.training import TrainConfig, train_model

HORIZONS = (1, 5)
N_DATES = 100
# modest permutation counts keep the suite fast (the report's defaults are larger: 1000 label
# permutations, 100 refits); pooled walk-forward over blocks of 20 rows after 60 rows of
# history, since the world has 100 dates
FAST = EvalConfig(
    n_boot=200,
    walk_forward_epochs=1,
    walk_forward_seeds=(0,),
    permuted_label_epochs=1,
    permuted_label_runs=1,
    n_permutations=200,
    refit_permutations=3,
    pooled_min_train=60,
    pooled_block_sessions=20,
)


def _world(root: Path, features: pl.DataFrame, closes: pl.DataFrame, *, leak: bool = False) -> dict:
    """Tables, random images and shards, splits, cnn_ready sets and a trained tiny CNN under ``root``."""
    dates = features["date"].to_list()[-N_DATES - 10 : -10]  # labels need 5 later sessions
    labels = lb.compute_labels(closes, dates, lb.LabelConfig(horizons=HORIZONS), sessions=calendar.all_sessions())
    labels = labels.with_columns(pl.lit("cfg").alias("config_hash"))
    feats = features.filter(pl.col("date").is_in(dates))
    if leak:  # a feature equal to the next session's return: information from after t
        feats = feats.with_columns(pl.Series("technical__planted_leak", labels[lb.return_col(1)].to_numpy()))
    tables = FinnexStorage(root=str(root)).tables
    for name, table in (("labels", labels), ("daily_features", feats)):
        for d in dates:
            path = tables.path(name, d)
            path.parent.mkdir(parents=True, exist_ok=True)
            table.filter(pl.col("date") == d).write_parquet(path)
    images, shards, ready = root / "mega_images", root / "datasets" / "patch_datasets", root / "datasets" / "cnn_ready"
    spec = build_layout(feats.columns)
    write_spec(images, spec, NormConfig())
    rng = np.random.default_rng(1)
    for d in dates:
        img = rng.random((512, 512, 3), dtype=np.float32)
        for path, key, arr in (
            (image_path(images, d), "image", img),
            (shard_path(shards, d), "patches", extract_patches(img)),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                f.create_dataset(key, data=arr)
    split = sp.temporal_split(dates, calendar.all_sessions(), max(HORIZONS), train=0.7, val=0.1)
    folds = sp.walk_forward(sp.development_dates(split), calendar.all_sessions(), max(HORIZONS), folds=2)
    doc = {
        "horizons": list(HORIZONS),
        "sets": {k: [d.isoformat() for d in v] for k, v in split.sets().items()},
        "folds": [
            {"fold": f.index, "train": [d.isoformat() for d in f.train], "val": [d.isoformat() for d in f.val]}
            for f in folds
        ],
        "split_hash": "h" * 64,
    }
    (root / "datasets" / "splits").mkdir(parents=True)
    (root / "datasets" / "splits" / "splits.json").write_text(json.dumps(doc))
    for name, ds in split.sets().items():
        sub = labels.filter(pl.col("date").is_in(list(ds))).sort("date")
        write_set_file(
            ready / f"{name}.h5",
            name,
            list(ds),
            images,
            shards,
            sub.select([lb.class_col(h) for h in HORIZONS]).to_numpy(),
            sub.select([lb.return_col(h) for h in HORIZONS]).to_numpy(),
            HORIZONS,
            spec_hash=spec.spec_hash(),
            split_hash=doc["split_hash"],
        )
    (ready / "statistics.json").write_text(json.dumps({"train": {"channel_mean": [0.5, 0.5, 0.5]}}))
    cfg = TrainConfig(
        model="cnn",
        input_mode="patch",
        horizons=HORIZONS,
        class_targets=("label_h1", "label_h5"),
        reg_targets=("return_h1", "return_h5"),
        epochs=1,
        batch_size=16,
        lr=1e-3,
        warmup_epochs=0,
        patience=None,
        num_threads=1,
    )
    train_model(
        cfg,
        set_dataset(ready / "train.h5", "patch", HORIZONS),
        set_dataset(ready / "val.h5", "patch", HORIZONS),
        checkpoint_dir=root / "datasets" / "models" / "cnn_model",
    )
    return {"labels": labels, "features": feats, "splits": doc, "spec": spec, "dates": dates}


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic_2024):
    market = synthetic_2024.snapshots["market_data"]
    closes = market.select("date", "close").unique("date", keep="last").sort("date")
    root = tmp_path_factory.mktemp("eval")
    return root, _world(root, synthetic_2024.features, closes)


def _inputs(root: Path, w: dict, models: bool = True) -> EvalInputs:
    return EvalInputs(
        labels=w["labels"],
        features=w["features"],
        feature_columns=feature_columns(w["features"]),
        splits=w["splits"],
        ready_root=root / "datasets" / "cnn_ready",
        image_root=root / "mega_images",
        shard_root=root / "datasets" / "patch_datasets",
        work_dir=root / "work",
        channel_means=[0.5, 0.5, 0.5],
        models={"cnn_model": root / "datasets" / "models" / "cnn_model" / "best.pt"} if models else {},
    )


@pytest.fixture(scope="module")
def evaluated(world):
    root, w = world
    return (w,) + run_evaluation(_inputs(root, w), FAST, log=lambda m: None)


def test_models_and_baselines_share_dates_and_tables(evaluated):
    w, doc, preds, equity = evaluated
    test_dates = [date.fromisoformat(d) for d in w["splits"]["sets"]["test"]]
    names = {(r["model"], r["horizon"]) for r in doc["tables"]["test"]}
    for name in ("cnn_model", "majority", "prior_random", "buy_and_hold", "momentum", "logistic", "gradient_boosting"):
        assert {(name, 1), (name, 5)} <= names
    assert all(r["n"] == len(test_dates) for r in doc["tables"]["test"])
    per = preds.group_by("model", "horizon").agg(pl.col("date").sort())
    for row in per.iter_rows(named=True):
        assert row["date"] == test_dates, row["model"]
    # the majority baseline predicts the training majority class on every test date
    train = w["labels"].filter(pl.col("date").is_in([date.fromisoformat(d) for d in w["splits"]["sets"]["train"]]))
    for h in HORIZONS:
        maj = int(np.bincount(train[lb.class_col(h)].to_numpy(), minlength=3).argmax())
        y = w["labels"].filter(pl.col("date").is_in(test_dates)).sort("date")[lb.class_col(h)].to_numpy()
        row = next(r for r in doc["tables"]["test"] if r["model"] == "majority" and r["horizon"] == h)
        assert row["accuracy"] == pytest.approx(float((y == maj).mean()))
        lo, hi = row["accuracy_ci"]
        assert lo <= row["accuracy"] <= hi


def test_buy_and_hold_equity_is_the_compounded_return_less_entry_and_exit_costs(evaluated):
    w, doc, _, equity = evaluated
    test_dates = [date.fromisoformat(d) for d in w["splits"]["sets"]["test"]]
    r1 = w["labels"].filter(pl.col("date").is_in(test_dates)).sort("date")[lb.return_col(1)].to_numpy()
    row = next(r for r in doc["tables"]["test"] if r["model"] == "buy_and_hold" and r["horizon"] == 1)
    cost = FAST.cost_bps / 1e4
    net = r1.copy()
    net[0] -= cost
    net[-1] -= cost
    assert row["total_return"] == pytest.approx(float(np.prod(1 + net) - 1), rel=1e-9)
    curve = equity.filter(pl.col("series") == "buy_and_hold (1d)")["equity"].to_numpy()
    assert curve.shape == (len(test_dates),) and curve[-1] == pytest.approx(1 + row["total_return"])


def test_controls_score_at_chance_and_walk_forward_retrains(evaluated):
    _, doc, _, _ = evaluated
    perm = doc["tables"]["permuted_labels"]
    assert {r["model"] for r in perm} == {"cnn_model", "logistic", "gradient_boosting"}
    for r in perm:
        lo, hi = r["ci"]
        assert r["at_chance"] and lo <= 1 / 3 <= hi, r
    wf = doc["tables"]["walk_forward"]
    assert {r["model"] for r in wf} == {"logistic", "gradient_boosting", "majority", "momentum"}
    # the network is retrained per pooled walk-forward fold instead, on an inner validation block
    folds = doc["pooled_oos"]["networks"]["cnn_model"]
    assert [f["fold"] for f in folds] == [1, 2] and not any(f["cached"] for f in folds)
    for f in folds:
        assert f["fit"][1] < f["inner_val"][0] and f["inner_val"][1] < f["test"][0]
        assert (f["epochs"], f["seeds"], f["purge"]) == (1, [0], max(HORIZONS))
    assert doc["permuted_label_control"]["permutations"] == 1 and doc["permuted_label_control"]["epochs"] == 1
    ab = {r["ablation"] for r in doc["tables"]["ablations"]}
    assert ab == {"blank red", "blank green", "blank blue"}
    assert doc["leakage"]["passed"], doc["leakage"]
    regimes = {r["regime"] for r in doc["tables"]["regimes"]}
    assert regimes <= {"bull", "bear", "sideways", "unknown"} and regimes
    n = sum(r["n"] for r in doc["tables"]["regimes"] if r["model"] == "majority" and r["horizon"] == 1)
    assert n == doc["test"]["n"]


def test_network_steps_and_the_evaluation_share_one_cache(world, evaluated):
    """The walk_forward_networks and permuted_label_control steps and run_evaluation key their
    retrained networks alike: after the evaluation trained them, the steps find every one cached
    (and so does the evaluation after the steps ran first)."""
    root, w = world
    quiet = lambda m: None  # noqa: E731
    done = train_network_controls(_inputs(root, w), FAST, what="walk_forward", log=quiet)
    assert done == {"models": ["cnn_model"], "folds": 2, "trained": 0, "cached": 2}
    done = train_network_controls(_inputs(root, w), FAST, what="permuted_labels", log=quiet)
    assert done == {"models": ["cnn_model"], "runs": 1, "trained": 0, "cached": 1}
    with pytest.raises(ValueError, match="unknown network control"):
        train_network_controls(_inputs(root, w), FAST, what="ablations", log=quiet)


def test_planted_leak_is_caught_loudly(world, synthetic_2024, tmp_path):
    root, w = world
    leaky = w["features"].with_columns(pl.Series("technical__planted_leak", w["labels"][lb.return_col(1)].to_numpy()))
    X = leaky.select(feature_columns(leaky)).to_numpy()
    report = scan_features(X, feature_columns(leaky), w["labels"][lb.return_col(1)].to_numpy())
    assert [f for f, _ in report.flagged] == ["technical__planted_leak"]
    with pytest.raises(LeakageError, match="technical__planted_leak"):
        report.raise_if_failed()
    # and through the full evaluation: the leak check fails, naming the feature
    inp = _inputs(root, {**w, "features": leaky}, models=False)
    inp.feature_columns = feature_columns(leaky)
    inp.work_dir = tmp_path / "work"
    doc, _, _ = run_evaluation(
        inp, EvalConfig(n_boot=50, n_permutations=100, refit_permutations=0, pooled_min_train=0), log=lambda m: None
    )
    assert not doc["leakage"]["passed"]
    assert doc["leakage"]["feature_scan"]["flagged"][0]["feature"] == "technical__planted_leak"


# Dagster runs in these tests: small permutation counts, no refits, no pooled walk-forward
DAGSTER_FAST = {"n_permutations": 100, "refit_permutations": 0, "pooled_min_train": 0}


def _resources(root: Path) -> dict:
    storage = FinnexStorage(root=str(root))
    return {
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", experiment="test"),
        "project_checks": ProjectChecks.of(ALL_ASSETS),
    }


def test_dagster_evaluation_writes_both_reports(world, tmp_path, monkeypatch):
    root, w = world
    monkeypatch.setenv("FINNEX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FINNEX_SOURCE", "synthetic")
    cfg = {"n_boot": 100, "walk_forward_epochs": 0, "permuted_label_epochs": 0, "interpret_images": 2, **DAGSTER_FAST}
    steps = ("walk_forward_networks", "permuted_label_control", "model_evaluation")
    result = dg.materialize(
        [walk_forward_networks, permuted_label_control, model_evaluation, evaluation_report, qa_report],
        resources=_resources(root),
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {k: {"config": cfg} for k in steps}},
    )
    assert result.success
    # the network steps ran first and, with no epochs in this budget, retrained nothing
    wf = result.asset_materializations_for_node("walk_forward_networks")[0].metadata
    assert (wf["trained"].value, wf["models"].value) == (0, ["cnn_model"])
    assert result.asset_materializations_for_node("permuted_label_control")[0].metadata["runs"].value == 0
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"no_leakage_detected", "permuted_labels_at_chance"}
    assert checks["permuted_labels_at_chance"].passed
    # the synthetic world's features carry real signal: a feature beyond the correlation bar may
    # warn, but nothing here is blocking evidence of a leak
    leak = checks["no_leakage_detected"]
    assert leak.metadata["blocking"].value == []
    assert leak.passed or leak.severity == dg.AssetCheckSeverity.WARN
    meta = result.asset_materializations_for_node("evaluation_report")[0].metadata
    html = Path(meta["report"].value).read_text(encoding="utf-8")
    assert "Equity curves" in html and "cnn_model" in html and "plotly" in html.lower()
    assert "<script src=" not in html  # self-contained: no external script
    # no ingestion ran in this instance: the configured source (synthetic by default) is named,
    # with its synthetic modalities, before anything else
    assert html.index("Data source: synthetic") < html.index("Read this first")
    assert "Nothing below is evidence about any real market" in html
    qa = result.asset_materializations_for_node("qa_report")[0].metadata
    text = Path(qa["report"].value).read_text(encoding="utf-8")
    assert "model_evaluation:no_leakage_detected" in text
    # every check of the project is listed; only this run's two have executions here
    assert qa["checks"].value > 10 and qa["never_run"].value == qa["checks"].value - 2
    assert qa["failing_latest"].value == ([] if leak.passed else ["model_evaluation:no_leakage_detected"])
    ev = result.asset_materializations_for_node("model_evaluation")[0].metadata
    assert ev["evaluated_models"].value == ["cnn_model"] and ev["not_trained"].value == [
        "vit_model",
        "vit_patches_model",
    ]
    assert ev["data_source"].value and "best_baseline" in ev["headline"].value
    doc = json.loads(Path(ev["evaluation_json"].value).read_text(encoding="utf-8"))
    # maps only for a non-degenerate model; a degenerate one is named as such in the report
    degenerate = next(r for r in doc["tables"]["test"] if r["model"] == "cnn_model" and r["horizon"] == 1)["degenerate"]
    assert any(k.startswith("cnn_model_occlusion") for k in ev) is not degenerate
    if degenerate:
        assert "not explained: a degenerate predictor" in html


def test_dagster_leak_check_fails_and_blocks_the_reports(world, tmp_path, monkeypatch):
    root, w = world
    monkeypatch.setenv("FINNEX_DATA_DIR", str(tmp_path / "data"))
    # the world's images and datasets (links), but leaky tables of its own
    for folder in ("mega_images", "datasets"):
        (tmp_path / folder).symlink_to(root / folder, target_is_directory=True)
    tables = FinnexStorage(root=str(tmp_path)).tables
    leaky = w["features"].with_columns(pl.Series("technical__planted_leak", w["labels"][lb.return_col(1)].to_numpy()))
    for name, table in (("labels", w["labels"]), ("daily_features", leaky)):
        for d in w["dates"]:
            path = tables.path(name, d)
            path.parent.mkdir(parents=True, exist_ok=True)
            table.filter(pl.col("date") == d).write_parquet(path)
    cfg = {"n_boot": 50, "walk_forward_epochs": 0, "permuted_label_epochs": 0, "interpret_images": 1, **DAGSTER_FAST}
    result = dg.materialize(
        [model_evaluation, evaluation_report],
        resources=_resources(tmp_path),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        run_config={"ops": {"model_evaluation": {"config": cfg}}},
    )
    leak = next(e for e in result.get_asset_check_evaluations() if e.check_name == "no_leakage_detected")
    assert not leak.passed and leak.severity == dg.AssetCheckSeverity.ERROR
    assert leak.metadata["flagged_features"].value[0]["feature"] == "technical__planted_leak"
    # blocking: the report is not built on a leaking evaluation
    assert not result.success
    assert result.asset_materializations_for_node("evaluation_report") == []


def test_permuted_control_verdict_is_family_wise_and_one_sided():
    from finnex_ml.evaluation.evaluate import _permuted_rows

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    controls = [
        ("perfect", 1, y, y.copy()),
        ("independent", 1, y, rng.integers(0, 3, 120)),
        ("always_wrong", 1, y, (y + 1) % 3),
    ]
    rows = {r["model"]: r for r in _permuted_rows(controls, block=5, cfg=EvalConfig(n_boot=300))}
    assert rows["perfect"]["above_chance"] and not rows["perfect"]["below_chance"]
    assert rows["always_wrong"]["below_chance"] and not rows["always_wrong"]["above_chance"]
    assert not rows["independent"]["above_chance"] and not rows["independent"]["below_chance"]
    assert rows["always_wrong"]["balanced_accuracy"] == 0.0 and rows["perfect"]["balanced_accuracy"] == 1.0
    for r in rows.values():  # Bonferroni over 3 controls: each family-wise interval contains the 95 % one
        (lo, hi), (flo, fhi) = r["ci"], r["ci_familywise"]
        assert flo <= lo <= hi <= fhi
    ind = rows["independent"]
    assert ind["ci_familywise"][1] - ind["ci_familywise"][0] > ind["ci"][1] - ind["ci"][0]


@pytest.mark.parametrize("side", ["below_chance", "above_chance"])
def test_dagster_control_off_chance_warns_below_and_blocks_above(world, tmp_path, monkeypatch, side):
    # below chance (luck, a short test set) fails the check as a WARN and the report is still
    # built; above chance (the signature of a leak) fails it as an ERROR and blocks the report
    import finnex_ml.evaluation.evaluate as ev_mod

    root, _ = world
    monkeypatch.setenv("FINNEX_DATA_DIR", str(tmp_path / "data"))
    real = ev_mod._permuted_rows

    def one_off(controls, block, cfg):
        rows = real(controls, block, cfg)
        rows[0] = {**rows[0], side: True}
        return rows

    monkeypatch.setattr(ev_mod, "_permuted_rows", one_off)
    cfg = {"n_boot": 50, "walk_forward_epochs": 0, "permuted_label_epochs": 0, "interpret_images": 1, **DAGSTER_FAST}
    result = dg.materialize(
        [model_evaluation, evaluation_report],
        resources=_resources(root),
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
        run_config={"ops": {"model_evaluation": {"config": cfg}}},
    )
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "permuted_labels_at_chance")
    other = "above_chance" if side == "below_chance" else "below_chance"
    assert not check.passed and len(check.metadata[side].value) == 1 and check.metadata[other].value == []
    blocks = side == "above_chance"
    assert check.severity == (dg.AssetCheckSeverity.ERROR if blocks else dg.AssetCheckSeverity.WARN)
    assert result.success is not blocks
    assert len(result.asset_materializations_for_node("evaluation_report")) == (0 if blocks else 1)


def test_headline_pooled_walk_forward_and_an_honest_report(evaluated):
    from finnex_ml.evaluation.report import evaluation_html

    w, doc, _, equity = evaluated
    head = doc["tables"]["headline"]
    test_rows = {(r["model"], r["horizon"]): r for r in doc["tables"]["test"]}
    spans = {r["span"] for r in head}
    assert spans == {"test split", "pooled walk-forward"}
    # the retrained network sits beside the baselines on the pooled dates
    pooled_head = [r for r in head if r["span"] == "pooled walk-forward"]
    assert {(r["model"], r["horizon"]) for r in pooled_head if r["model"] == "cnn_model"} == {
        ("cnn_model", h) for h in HORIZONS
    }
    assert all(r["n_days"] == doc["pooled_oos"]["n"] for r in pooled_head)
    for r in head:
        assert r["best_baseline"] in ("majority", "prior_random", "momentum", "logistic", "gradient_boosting")
        assert r["n_independent"] == pytest.approx(r["n_days"] / r["horizon"])
        assert 0 < r["p_value"] <= 1 and r["mde_sharpe"] > 0
        if r["span"] == "test split":
            assert r["n_days"] == doc["test"]["n"]
            # the row's model and its baseline are the test table's rows
            assert r["balanced_accuracy"] == test_rows[(r["model"], r["horizon"])]["balanced_accuracy"]
    assert {r["model"] for r in head if r["span"] == "test split"} == {"cnn_model", "logistic", "gradient_boosting"}
    # pooled: the split sets' dates (100 less the purge gaps), 60 of history, then blocks of 20
    n = len({d for v in w["splits"]["sets"].values() for d in v})
    pooled = doc["pooled_oos"]
    assert [f["test"] for f in pooled["folds"]] == [20, n - 80] and pooled["n"] == n - 60
    assert [f["train"] for f in pooled["folds"]] == [60 - 5, 80 - 5]  # purged by the longest horizon
    assert {r["model"] for r in pooled["rows"]} == {
        "cnn_model",
        "majority",
        "momentum",
        "buy_and_hold",
        "logistic",
        "gradient_boosting",
    }
    # the tabular models' refit permutation test ran the configured count, or stopped early with a
    # Besag-Clifford p (refit_stop_after matches in the refits done)
    for kind in ("logistic", "gradient_boosting"):
        row = test_rows[(kind, 1)]
        n, p = row["refit_permutations"], row["refit_permutation_p"]
        assert 0 < n <= FAST.refit_permutations and 0 < p <= 1
        assert n == FAST.refit_permutations or p == pytest.approx(FAST.refit_stop_after / n)
        assert row["execution_lag"] == 1
    assert test_rows[("buy_and_hold", 1)]["execution_lag"] == 0  # a benchmark waits for no signal
    assert test_rows[("gradient_boosting", 1)]["return_model"] == "ridge"
    assert doc["deflated_sharpe_trials"]["source"].startswith("this report's strategies only")
    html = evaluation_html(doc, equity)
    assert "Data source: unknown (not recorded)" in html
    assert "Read this first" in html and "under one year" in html and "sharpe †" in html
    assert "Networks retrained per fold" in html and "What this span can show" in html
    assert "Networks: 1 permutation(s) x 1 epoch(s) each" in html
    mde = pooled["minimum_detectable_effect"]
    assert set(mde) == {f"{h}d" for h in HORIZONS}
    # annual Sharpe from n daily returns; accuracy from n / h independent decisions
    assert mde["1d"]["sharpe"] == pytest.approx(2.8016 * (252 / pooled["n"]) ** 0.5, rel=1e-4)
    assert mde["5d"]["accuracy"] == pytest.approx(mde["1d"]["accuracy"] * 5**0.5)
    assert pooled["independent_decisions"]["5d"] == pytest.approx(pooled["n"] / 5)
    assert "<th class=''>calmar</th>" not in html  # hidden: 25 test sessions
    for name, d in doc["interpretation"].items():  # maps only for non-degenerate models
        row = test_rows[(name, HORIZONS[0])]
        assert bool(d.get("skipped")) == row["degenerate"]
