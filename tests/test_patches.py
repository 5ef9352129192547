"""32x32 patches: exact round trip, section/tile layout, and the patch_dataset asset on real images."""

from __future__ import annotations

import dataclasses
import shutil

import dagster as dg
import h5py
import numpy as np
import polars as pl
import pytest
from conftest import pipeline_resources

from finnex_assets.assets.datasets import labels, patch_dataset
from finnex_assets.assets.features import daily_features
from finnex_assets.assets.images import LOOKBACK, mega_images
from finnex_assets.assets.ingestion import modalities
from finnex_ml import calendar
from finnex_ml.encoding import build_layout, pixel_lookup, read_image, read_spec
from finnex_ml.encoding.layout import Section
from finnex_ml.patches import (
    N_PATCHES,
    PATCHES_SHAPE,
    extract_patches,
    list_shard_dates,
    patch_bounds,
    patch_layout,
    patches_to_image,
    read_shard,
    section_of_patches,
    shard_path,
    table_path,
)

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


# ---- pure ----------------------------------------------------------------------------------


def test_round_trip_is_bit_exact() -> None:
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=(512, 512, 3), dtype=np.uint64).astype(np.uint32)
    image = bits.view(np.float32)  # every bit pattern, NaNs included
    patches = extract_patches(image)
    assert patches.shape == PATCHES_SHAPE and patches.flags.c_contiguous
    back = patches_to_image(patches)
    np.testing.assert_array_equal(back.view(np.uint32), bits)
    # patch p is the obvious slice of the image
    for p in (0, 17, 100, 255):
        r0, r1, c0, c1 = patch_bounds(p)
        np.testing.assert_array_equal(patches[p].view(np.uint32), bits[r0:r1, c0:c1])
    # buffer reuse writes in place
    buf = np.empty(PATCHES_SHAPE, dtype=np.float32)
    assert extract_patches(image, out=buf) is buf
    with pytest.raises(ValueError):
        extract_patches(image[:256])
    with pytest.raises(ValueError):
        extract_patches(image, out=np.empty(PATCHES_SHAPE, dtype=np.float64))


def test_channel_stats_are_numpys_mean_and_std_bit_for_bit() -> None:
    from finnex_ml.patches import patch_channel_stats

    for scale in (1.0, 1e-3, 250.0):
        p = (np.random.default_rng(int(scale)).standard_normal((N_PATCHES, 32, 32, 3)) * scale).astype(np.float32)
        flat = p.reshape(N_PATCHES, -1, 3)
        mean, std = patch_channel_stats(p)
        assert np.array_equal(mean, flat.mean(axis=1, dtype=np.float64))
        assert np.array_equal(std, flat.std(axis=1, dtype=np.float64))


def test_sections_by_majority_with_straddling_rows() -> None:
    spec = build_layout(NAMES)
    names, shares, touched = section_of_patches(spec)
    by_row = [names[r * 16] for r in range(16)]
    assert by_row == ["macro"] * 5 + ["behavioral"] * 6 + ["fundamental"] * 5
    assert shares[5 * 16] == pytest.approx(21 / 32)  # rows 160-191: 11 macro + 21 behavioural
    assert shares[10 * 16] == pytest.approx(22 / 32)  # rows 320-351: 22 behavioural + 10 fundamental
    assert touched[5 * 16] == ["macro", "behavioral"] and touched[10 * 16] == ["behavioral", "fundamental"]
    assert sum(len(t) > 1 for t in touched) == 32
    # tie rule: a boundary at row 176 splits patch row 5 16/16 -> the upper section wins
    tied = dataclasses.replace(
        spec, sections=(Section("macro", 0, 176), Section("behavioral", 176, 342), Section("fundamental", 342, 512))
    )
    names, shares, _ = section_of_patches(tied)
    assert names[5 * 16] == "macro" and shares[5 * 16] == 0.5


def test_layout_table_tiles_features_and_lags() -> None:
    spec = build_layout(NAMES)
    lay = patch_layout(spec)
    assert lay.height == N_PATCHES and lay["patch"].to_list() == list(range(256))
    p0, p255 = lay.row(0, named=True), lay.row(255, named=True)
    # columns 0-7 are padding (56 sessions x 9 px right-aligned in 512): 24 of 32 columns used
    assert p0["used_share"] == pytest.approx(24 / 32)
    assert (p0["lag_min"], p0["lag_max"]) == (53, 55) and (p255["lag_min"], p255["lag_max"]) == (0, 3)
    assert p0["tiles"] == ["macro.red", "macro.green", "macro.blue"]
    # features: exactly those the pixel lookup places inside the patch
    look = pixel_lookup(spec)
    for p in (0, 85, 170, 255):
        r0, r1, c0, c1 = patch_bounds(p)
        f = np.unique(look.feature[r0:r1, c0:c1][look.feature[r0:r1, c0:c1] >= 0])
        assert lay.row(p, named=True)["features"] == [spec.features[i] for i in f]
    # news|social tile boundary at column 171 lies inside grid column 5 of the behavioural rows
    assert {"behavioral.red.news", "behavioral.red.social"} <= set(lay.row(6 * 16 + 5, named=True)["tiles"])


# ---- the asset -------------------------------------------------------------------------------

FIRST, LAST = "2024-03-04", "2024-03-08"


def _resources(tmp, **kwargs):
    return pipeline_resources(tmp, **kwargs)


ASSETS = [modalities, daily_features, mega_images, labels, patch_dataset]


def _range(res, a, b, selection):
    return dg.materialize(
        ASSETS,
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("patches")
    res = _resources(tmp)
    days = calendar.sessions(FIRST, LAST)
    start = calendar.sessions_back(days[0], LOOKBACK).isoformat()
    after = calendar.sessions("2024-03-09", "2024-03-13")[
        :2
    ]  # partitions 2 sessions past LAST; later closes from the source
    assert _range(res, start, LAST, [modalities, daily_features]).success
    assert _range(res, after[0].isoformat(), after[-1].isoformat(), [dg.AssetKey("market_data")]).success
    assert _range(res, FIRST, LAST, [mega_images]).success
    assert _range(res, FIRST, LAST, [labels]).success
    out = _range(res, FIRST, LAST, [patch_dataset])
    return tmp, res, out, days


def test_patch_dataset_shards_checks_and_labels(built) -> None:
    tmp, _, out, days = built
    assert out.success
    checks = {e.check_name: e.passed for e in out.get_asset_check_evaluations()}
    assert checks == {"patch_count": True, "patch_round_trip": True, "patch_diversity": True}
    root = tmp / "datasets" / "patch_datasets"
    assert list_shard_dates(root) == days
    assert len(list((root / "layout").glob("*.parquet"))) == 1  # static layout stored once per spec
    lab = pl.read_parquet(tmp / "tables" / "labels" / "2024" / "*.parquet").sort("date")
    for d in days:
        shard = read_shard(root, d)
        image = read_image(tmp / "mega_images", d)
        np.testing.assert_array_equal(shard.patches, extract_patches(image))
        np.testing.assert_array_equal(patches_to_image(shard.patches), image)
        row = lab.filter(pl.col("date") == d).to_dicts()[0]
        for i, h in enumerate(shard.horizons):
            want = row[f"class_{h}d"]
            assert shard.label_class[i] == (-1 if want is None else want)
            assert np.isnan(shard.label_return[i]) if want is None else shard.label_return[i] == row[f"return_{h}d"]
    # market_data is materialised 2 sessions past LAST; the labels read the other closes of t+5
    # from the source, so every date carries both horizons
    assert all(read_shard(root, d).label_class[1] >= 0 for d in days)
    assert all(read_shard(root, d).label_class[0] >= 0 for d in days)


def test_patch_table_has_stats_labels_and_metadata(built) -> None:
    tmp, _, out, days = built
    root = tmp / "datasets" / "patch_datasets"
    d = days[2]
    table = pl.read_parquet(table_path(root, d))
    assert table.height == N_PATCHES and table["patch"].to_list() == list(range(256))
    patches = read_shard(root, d).patches
    for p in (0, 99, 255):
        r = table.row(p, named=True)
        for c in range(3):
            assert r[f"mean_c{c}"] == pytest.approx(float(patches[p, :, :, c].astype(np.float64).mean()), rel=1e-12)
            assert r[f"std_c{c}"] == pytest.approx(float(patches[p, :, :, c].astype(np.float64).std()), rel=1e-9)
    # every patch carries its image's labels
    assert (
        table["class_1d"].n_unique() == 1 and table["class_5d"].n_unique() == 1 and table["class_5d"].null_count() == 0
    )
    assert table["informative"].all() and table["duplicate"].sum() == 0  # measured: real images repeat nothing
    spec = read_spec(tmp / "mega_images")
    assert table["spec_hash"].cast(pl.String).unique().to_list() == [spec.spec_hash()]
    meta = out.asset_materializations_for_node("patch_dataset")[0].metadata
    assert meta["patches_per_section"].data == {"behavioral": 96, "fundamental": 80, "macro": 80}
    assert meta["straddling_patch_rows"].data == [5, 10]
    with h5py.File(shard_path(root, d), "r") as f:  # one chunk = one image's 256 patches
        assert f["patches"].chunks == PATCHES_SHAPE and f["patches"].dtype == np.float32


def test_date_alone_equals_its_slice_of_the_range(built, tmp_path) -> None:
    tmp, res, _, days = built
    shutil.copytree(tmp / "mega_images", tmp_path / "mega_images")  # the same images and labels, own shards
    alone = _resources(tmp_path, tables_from=tmp)
    d = days[3]
    out = dg.materialize(
        ASSETS,
        resources=alone,
        instance=dg.DagsterInstance.ephemeral(),
        selection=[patch_dataset],
        partition_key=d.isoformat(),
    )
    assert out.success
    a = read_shard(tmp_path / "datasets" / "patch_datasets", d)
    b = read_shard(tmp / "datasets" / "patch_datasets", d)
    assert a.patches.tobytes() == b.patches.tobytes()
    assert a.label_class.tobytes() == b.label_class.tobytes() and a.label_return.tobytes() == b.label_return.tobytes()
    assert pl.read_parquet(table_path(tmp_path / "datasets" / "patch_datasets", d)).equals(
        pl.read_parquet(table_path(tmp / "datasets" / "patch_datasets", d))
    )
    assert list_shard_dates(tmp_path / "datasets" / "patch_datasets") == [d]


def test_missing_image_is_a_clear_error(built, tmp_path) -> None:
    tmp, res, _, _ = built
    other = _resources(tmp_path, tables_from=tmp)  # labels, but only the spec of the images
    (tmp_path / "mega_images" / "metadata").mkdir(parents=True)
    (tmp_path / "mega_images" / "metadata" / "channel_encoding_spec.json").write_bytes(
        (tmp / "mega_images" / "metadata" / "channel_encoding_spec.json").read_bytes()
    )
    out = dg.materialize(
        ASSETS,
        resources=other,
        instance=dg.DagsterInstance.ephemeral(),
        selection=[patch_dataset],
        partition_key=FIRST,
        raise_on_error=False,
    )
    assert not out.success
    err = [e for e in out.all_events if e.is_step_failure][0].step_failure_data.error
    msg = err.message + (err.cause.message if err.cause else "")
    assert "mega_images" in msg and FIRST in msg
    assert not list((tmp_path / "datasets").rglob("*.h5"))
