"""Temporal splits: no leakage over random calendars (hypothesis), and dataset_splits end to end
with statistics fitted on training images only."""

from __future__ import annotations

import dataclasses
import json
from datetime import date, timedelta

import dagster as dg
import h5py
import numpy as np
import polars as pl
import pytest
from conftest import pipeline_resources
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finnex_assets.assets.datasets import dataset_splits, labels, patch_dataset
from finnex_assets.assets.features import daily_features
from finnex_assets.assets.images import mega_images
from finnex_assets.assets.ingestion import modalities
from finnex_assets.resources import DataSourceResource
from finnex_ml import calendar
from finnex_ml.encoding import NormConfig, build_layout, read_image, write_image, write_spec
from finnex_ml.errors import ConfigError
from finnex_ml.patches import N_PATCHES, read_shard
from finnex_ml.splits import (
    RunningMoments,
    check_no_leak,
    class_weights,
    development_dates,
    required_gap,
    temporal_split,
    walk_forward,
)

# ---- property: no leakage on random calendars -------------------------------------------------


@st.composite
def calendars(draw):
    n_sessions = draw(st.integers(20, 400))
    steps = draw(st.lists(st.integers(1, 4), min_size=n_sessions, max_size=n_sessions))  # weekends, holidays
    sessions = [date(2001, 1, 1) + timedelta(days=int(s)) for s in np.cumsum(steps)]
    keep = draw(st.lists(st.booleans(), min_size=n_sessions, max_size=n_sessions))  # dates lacking an image
    dates = [d for d, k in zip(sessions, keep) if k]
    horizons = draw(st.lists(st.integers(1, 10), min_size=1, max_size=3, unique=True))
    train = draw(st.floats(0.3, 0.85))
    val = draw(st.floats(0.05, min(0.5, 0.95 - train)))
    return sessions, dates, max(horizons), train, val, draw(st.integers(0, 5)), draw(st.integers(1, 6))


def _windows_isolated(sets: dict, sessions: list[date], h: int) -> None:
    pos = {d: i for i, d in enumerate(sessions)}
    owner = {d: name for name, s in sets.items() for d in s}
    for name, s in sets.items():
        for t in s:
            window = sessions[pos[t] : pos[t] + h + 1]  # [t, t+h]
            assert all(owner.get(d, name) == name for d in window), (name, t, h)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calendars())
def test_split_never_leaks(case) -> None:
    sessions, dates, h, train, val, embargo, folds = case
    gap = required_gap(h, embargo)
    try:
        split = temporal_split(dates, sessions, h, train=train, val=val, embargo=embargo)
    except ConfigError:
        return  # too few dates for these fractions and this gap: refused, never a leaky split
    pos = {d: i for i, d in enumerate(sessions)}
    tr, va, te = split.train, split.val, split.test
    assert tr and va and te
    assert pos[max(tr)] + gap < pos[min(va)] and pos[max(va)] + gap < pos[min(te)]
    assert not (set(tr) & set(va) or set(va) & set(te) or set(tr) & set(te))
    assert sorted(set(tr) | set(va) | set(te) | set(split.purged)) == sorted(set(dates))
    _windows_isolated(split.sets(), sessions, h)
    assert check_no_leak(split.sets(), sessions, h, gap) == []
    # the test set is exactly the last (1 - train - val) share, never purged
    assert len(te) == len(dates) - int(np.floor(len(dates) * (train + val) + 1e-9))
    try:
        fs = walk_forward(development_dates(split), sessions, h, folds=folds, embargo=embargo)
    except ConfigError:
        return
    assert len(fs) == folds
    for k, f in enumerate(fs):
        assert pos[max(f.train)] + gap < pos[min(f.val)]
        assert max(f.val) < min(te) and pos[max(f.val)] + gap < pos[min(te)]
        _windows_isolated({"train": f.train, "val": f.val, "test": te}, sessions, h)
        if k:  # expanding: each fold trains on at least what the previous one did
            assert set(fs[k - 1].train) <= set(f.train) | set(f.purged) | set(fs[k - 1].val)
            assert min(f.train) == min(fs[0].train)


def test_check_no_leak_reports_a_leak() -> None:
    s = [date(2024, 1, 1) + timedelta(days=i) for i in range(30)]
    bad = {"train": s[:10], "val": s[12:20], "test": s[25:]}
    problems = check_no_leak(bad, s, 5, 5)
    assert any("train ends" in p for p in problems) and any("label window of train" in p for p in problems)
    assert check_no_leak({"train": s[:10], "val": s[16:20], "test": s[26:]}, s, 5, 5) == []


def test_running_moments_and_class_weights() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.random((50 + 10 * i, 3)) * (i + 1) for i in range(5)]
    rm = RunningMoments()
    for p in parts:
        rm.add(p)
    allx = np.concatenate(parts)
    np.testing.assert_allclose(rm.mean, allx.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rm.std, allx.std(axis=0), rtol=1e-12)
    w, n = class_weights([0, 1, 1, 1, 2, 2])
    assert n == [1, 3, 2] and w == pytest.approx([2.0, 2 / 3, 1.0])
    assert class_weights([1, 1, 2])[0] == [0.0, pytest.approx(0.75), pytest.approx(1.5)]


# ---- the asset: random images (fast), real labels -------------------------------------------

NAMES = [
    "macro__vix",
    "macro__rate_2y",
    "macro__cpi",
    "news__mood",
    "social__mood",
    "sentiment__avg",
    "price__ret_1d",
    "price__rsi_14",
    "market__implied_vol",
    "fundamental__analyst_rating",
    "fundamental__revenue_yoy",
    "fundamental__earnings_yield",
    "peer__ret",
]
DAYS = calendar.sessions("2024-01-02", "2024-04-30")[:70]
ASSETS = [modalities, daily_features, mega_images, labels, patch_dataset, dataset_splits]


def _image(seed: int) -> np.ndarray:
    # piecewise constant like real images (cheap to compress), different per seed
    small = np.random.default_rng(seed).random((64, 64, 3), dtype=np.float32)
    return np.ascontiguousarray(np.repeat(np.repeat(small, 8, axis=0), 8, axis=1))


def _write(root, spec, d: date, seed: int) -> None:
    write_image(root, d, _image(seed), spec=spec, norm_config=NormConfig(), params_hash=f"p{seed}")


class _PricesEndAtLastDay(DataSourceResource):
    """The synthetic source with no price after DAYS[-1]: labels read future closes from the
    source, and this one has none past the range, so the last 5 dates keep no 5-day label."""

    def source(self):
        inner = super().source()

        class Ending:
            name = inner.name

            def load(self, start, end):
                raw = inner.load(start, end)
                return dataclasses.replace(raw, prices=raw.prices.filter(pl.col("date") <= DAYS[-1]))

        return Ending()


def _resources(tmp):
    return {**pipeline_resources(tmp), "data_source": _PricesEndAtLastDay(kind="synthetic")}


def _run(res, selection, a=None, b=None):
    tags = {"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b} if a else None
    return dg.materialize(
        ASSETS,
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,
        tags=tags,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("splits")
    res = _resources(tmp)
    spec = build_layout(NAMES)
    write_spec(tmp / "mega_images", spec, NormConfig())
    for i, d in enumerate(DAYS):
        _write(tmp / "mega_images", spec, d, i)
    a, b = DAYS[0].isoformat(), DAYS[-1].isoformat()
    assert _run(res, [dg.AssetKey("market_data")], a, b).success
    assert _run(res, [labels], a, b).success  # the last 5 dates stay unlabeled: no prices after DAYS[-1]
    assert _run(res, [patch_dataset], a, b).success
    first = _run(res, [dataset_splits])
    return tmp, res, spec, first


def _stats(tmp) -> dict:
    return json.loads((tmp / "datasets" / "cnn_ready" / "statistics.json").read_text())


def _splits(tmp) -> dict:
    return json.loads((tmp / "datasets" / "splits" / "splits.json").read_text())


def test_dataset_splits_sets_gap_and_checks(world) -> None:
    tmp, _, _, out = world
    assert out.success
    checks = {e.check_name: e.passed for e in out.get_asset_check_evaluations()}
    assert checks == {"splits_disjoint_with_gap": True, "statistics_fit_on_train_only": True, "cnn_ready_shapes": True}
    doc = _splits(tmp)
    eligible = DAYS[:-5]  # complete labels need t+5
    sets = {k: [date.fromisoformat(x) for x in v] for k, v in doc["sets"].items()}
    assert sorted(sum(sets.values(), []) + [date.fromisoformat(x) for x in doc["purged"]]) == eligible
    assert doc["gap"] == 5 and len(sets["test"]) == 65 - int(65 * 0.9)
    pos = {d: i for i, d in enumerate(calendar.all_sessions())}
    assert pos[max(sets["train"])] + 5 < pos[min(sets["val"])] and pos[max(sets["val"])] + 5 < pos[min(sets["test"])]
    assert len(doc["folds"]) == 5
    frame = pl.read_parquet(tmp / "datasets" / "splits" / "dates.parquet")
    assert frame.filter(pl.col("set") == "train")["date"].to_list() == sets["train"]


def test_cnn_ready_arrays_point_at_images_and_shards(world) -> None:
    tmp, _, _, _ = world
    doc = _splits(tmp)
    lab = pl.read_parquet(tmp / "tables" / "labels" / "2024" / "*.parquet")
    for name in ("train", "val", "test"):
        ds = [date.fromisoformat(x) for x in doc["sets"][name]]
        with h5py.File(tmp / "datasets" / "cnn_ready" / f"{name}.h5", "r") as f:
            assert f["images"].shape == (len(ds), 512, 512, 3) and f["images"].is_virtual
            assert f["patches"].shape == (len(ds) * N_PATCHES, 32, 32, 3) and f["patches"].is_virtual
            assert f["labels"].shape == (len(ds) * N_PATCHES, 2)
            assert [x.decode() for x in f["dates"][...]] == doc["sets"][name]
            i = len(ds) // 2
            np.testing.assert_array_equal(f["images"][i], read_image(tmp / "mega_images", ds[i]))
            np.testing.assert_array_equal(
                f["patches"][i * N_PATCHES : (i + 1) * N_PATCHES],
                read_shard(tmp / "datasets" / "patch_datasets", ds[i]).patches,
            )
            row = lab.filter(pl.col("date") == ds[i]).to_dicts()[0]
            assert f["labels"][i * N_PATCHES + 7].tolist() == [row["class_1d"], row["class_5d"]]
            assert f["image_labels"][i].tolist() == [row["class_1d"], row["class_5d"]]


def test_statistics_are_train_only_and_correct(world) -> None:
    tmp, res, spec, _ = world
    doc, stats = _splits(tmp), _stats(tmp)
    train = [date.fromisoformat(x) for x in doc["sets"]["train"]]
    s, ss, n = np.zeros(3), np.zeros(3), 0
    for d in train:  # naive sums as an independent reference
        x = read_image(tmp / "mega_images", d).reshape(-1, 3).astype(np.float64)
        s += x.sum(0)
        ss += (x**2).sum(0)
        n += x.shape[0]
    mean = s / n
    np.testing.assert_allclose(stats["train"]["channel_mean"], mean, rtol=1e-10)
    np.testing.assert_allclose(stats["train"]["channel_std"], np.sqrt(ss / n - mean**2), rtol=1e-6)
    lab = pl.read_parquet(tmp / "tables" / "labels" / "2024" / "*.parquet").filter(pl.col("date").is_in(train))
    w, counts = class_weights(lab["class_5d"].to_numpy())
    assert stats["train"]["class_weights"]["5d"]["counts"] == dict(zip(("sell", "hold", "buy"), counts))
    got = stats["train"]["class_weights"]["5d"]["weights"]
    assert [got[k] for k in ("sell", "hold", "buy")] == pytest.approx(w)
    assert stats["fitted_on"] == "train" and stats["train"]["n_dates"] == len(train)


def test_perturbing_val_and_test_leaves_train_statistics_unchanged(world) -> None:
    tmp, res, spec, _ = world
    before = _stats(tmp)
    doc = _splits(tmp)
    evaluation = [date.fromisoformat(x) for x in doc["sets"]["val"] + doc["sets"]["test"]]
    for i, d in enumerate(evaluation):
        _write(tmp / "mega_images", spec, d, 1000 + i)
    # the shards of re-encoded images are stale: refused, with the date named
    stale = _run(res, [dataset_splits])
    assert not stale.success
    err = [e for e in stale.all_events if e.is_step_failure][0].step_failure_data.error
    assert evaluation[0].isoformat() in err.message + (err.cause.message if err.cause else "")
    assert _run(res, [patch_dataset], evaluation[0].isoformat(), evaluation[-1].isoformat()).success
    assert _run(res, [dataset_splits]).success
    after = _stats(tmp)
    assert after["train"] == before["train"]  # bit-identical: no val/test pixel entered the fit
    assert _splits(tmp)["sets"] == doc["sets"]
    with h5py.File(tmp / "datasets" / "cnn_ready" / "test.h5", "r") as f:  # the arrays do see the new images
        np.testing.assert_array_equal(f["images"][0], _image(1000 + len(doc["sets"]["val"])))
    # control: perturbing one training image does change the training statistics
    t0 = date.fromisoformat(doc["sets"]["train"][0])
    _write(tmp / "mega_images", spec, t0, 5000)
    assert _run(res, [patch_dataset], t0.isoformat(), t0.isoformat()).success
    assert _run(res, [dataset_splits]).success
    assert _stats(tmp)["train"]["channel_mean"] != before["train"]["channel_mean"]
