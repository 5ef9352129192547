"""mega_images through Dagster: one run per range, per-date HDF5 shards, QA checks, determinism."""

import os
import time
import warnings

import dagster as dg
import h5py
import numpy as np
import pytest
from conftest import pipeline_resources

from finnex_assets.assets.features import daily_features
from finnex_assets.assets.images import LOOKBACK, mega_images
from finnex_assets.assets.ingestion import modalities
from finnex_ml import calendar
from finnex_ml.encoding import decode, image_path, read_image, read_record, read_spec
from finnex_ml.encoding.layout import LayoutSpec

warnings.filterwarnings("ignore", category=dg.BetaWarning)
FIRST, LAST = "2024-03-04", "2024-03-08"


def _resources(tmp, **kwargs):
    return pipeline_resources(tmp, **kwargs)


def _range(assets, resources, a, b, selection=None):
    return dg.materialize(
        assets,
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,
        tags={"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mega")
    res = _resources(tmp)
    start = calendar.sessions_back(calendar.sessions(FIRST, FIRST)[0], LOOKBACK).isoformat()
    assets = [modalities, daily_features, mega_images]
    feats = _range(assets, res, start, LAST, selection=[modalities, daily_features])
    assert feats.success
    # what a writer killed an hour ago leaves behind: the IO manager sweeps it before writing
    stale = tmp / "mega_images" / "2024" / "02" / f".2024-02-29.h5.{'0' * 32}.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    images = _range(assets, res, FIRST, LAST, selection=[mega_images])
    assert not stale.exists()
    return tmp, res, images


def test_range_run_writes_one_shard_per_date_and_checks_pass(built):
    tmp, _, result = built
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {
        "dtype_shape_range": True,
        "spatial_integrity": True,
        "temporal_continuity": True,
        "feature_preservation": True,
    }
    files = sorted(p.name for p in (tmp / "mega_images" / "2024" / "03").glob("*.h5"))
    assert files == [f"{d}.h5" for d in ["2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08"]]
    rec = read_record(tmp / "mega_images", "2024-03-06")
    spec = LayoutSpec.from_json((tmp / "mega_images" / "metadata" / "channel_encoding_spec.json").read_text())
    assert rec["spec_hash"] == spec.spec_hash() == read_spec(tmp / "mega_images").spec_hash()
    img = read_image(tmp / "mega_images", "2024-03-06")
    assert img.shape == (512, 512, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # per-partition preview metadata is there for the UI
    mats = result.asset_materializations_for_node("mega_images")
    assert {m.partition for m in mats} == {"2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07", "2024-03-08"}
    assert all("preview_image" in m.metadata and "spec_hash" in m.metadata for m in mats)


def test_sliding_window_between_stored_images(built):
    tmp, _, _ = built
    spec = read_spec(tmp / "mega_images")
    a = decode(read_image(tmp / "mega_images", "2024-03-05"), spec)
    b = decode(read_image(tmp / "mega_images", "2024-03-06"), spec)
    np.testing.assert_array_equal(b[:-1], a[1:])  # yesterday's window shifted one session left


def test_partition_alone_is_byte_identical_to_range(built, tmp_path):
    tmp, res, _ = built
    # stored gzip-compressed this time: compression must not change a single image byte either
    alone = _resources(tmp_path, compression="gzip", tables_from=tmp)
    out = dg.materialize(
        [modalities, daily_features, mega_images],
        resources=alone,
        instance=dg.DagsterInstance.ephemeral(),
        selection=[mega_images],
        partition_key="2024-03-07",
    )
    assert out.success
    assert (
        read_image(tmp_path / "mega_images", "2024-03-07").tobytes()
        == read_image(tmp / "mega_images", "2024-03-07").tobytes()
    )
    with (
        h5py.File(image_path(tmp_path / "mega_images", "2024-03-07")) as alone_f,
        h5py.File(image_path(tmp / "mega_images", "2024-03-07")) as range_f,
    ):
        assert (alone_f["image"].compression, range_f["image"].compression) == ("gzip", None)  # default: none
    assert (
        read_record(tmp_path / "mega_images", "2024-03-07")["normalization_hash"]
        == read_record(tmp / "mega_images", "2024-03-07")["normalization_hash"]
    )


def test_first_backfill_without_features_computes_the_lookback_from_the_source(built, tmp_path):
    """A range launched on fresh storage (no daily_features partition at all) is one launch: the
    lookback and the range's own feature rows come from the source, and the image is the same
    bytes as with every feature partition materialised. Nothing is stored as a partition."""
    tmp, _, _ = built
    res = _resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    out = dg.materialize(
        [modalities, daily_features, mega_images],
        resources=res,
        instance=instance,
        selection=[mega_images],
        partition_key="2024-03-07",
    )
    assert out.success
    assert (
        read_image(tmp_path / "mega_images", "2024-03-07").tobytes()
        == read_image(tmp / "mega_images", "2024-03-07").tobytes()
    )
    assert not [p for p in tmp_path.rglob("*.parquet") if "daily_features" in p.parts]
    said = [e.user_message for e in instance.all_logs(out.run_id) if "are not materialised" in e.user_message]
    assert said and f"for {LOOKBACK} of the {LOOKBACK} sessions" in said[0]  # the image date's own row too


def test_lookback_from_a_bad_source_names_the_rule_and_the_date():
    import dataclasses
    from datetime import date

    import polars as pl

    from finnex_ml import pipeline
    from finnex_ml.data.synthetic import SyntheticSource
    from finnex_ml.errors import DataInputError

    class HighBelowLow:
        name = "broken"

        def load(self, start, end):
            raw = SyntheticSource(7).load(start, end)
            bad = pl.col("date") == date(2024, 2, 1)
            prices = raw.prices.with_columns(high=pl.when(bad).then(pl.col("low") * 0.9).otherwise(pl.col("high")))
            return dataclasses.replace(raw, prices=prices)

    with pytest.raises(DataInputError, match=r"ohlc_consistency .* first 2024-02-01"):
        pipeline.checked_features(HighBelowLow(), calendar.sessions("2024-01-29", "2024-02-05"))


def test_failing_image_check_writes_no_image(built, tmp_path, monkeypatch):
    """All image checks run before the output: one failing image means no HDF5 file at all."""
    from datetime import date

    from finnex_ml.encoding.encoders import TileEncoder

    tmp, res, _ = built
    fresh = _resources(tmp_path, tables_from=tmp)
    real_qa = TileEncoder.qa
    bad = date(2024, 3, 6)

    def qa(self, image, spec, window=None, prev_image=None):
        out = real_qa(self, image, spec, window, prev_image)
        if _current[0] == bad:
            out["dtype_shape_range"] = (False, {"forced": True})
        return out

    _current = [None]
    real_encode = TileEncoder.encode_dates

    def encode_dates(self, *args, **kwargs):
        for item in real_encode(self, *args, **kwargs):
            _current[0] = item.date
            yield item

    # the encoder's QA fails one date (the asset asks the configured encoder, "tiles" here)
    monkeypatch.setattr(TileEncoder, "qa", qa)
    monkeypatch.setattr(TileEncoder, "encode_dates", encode_dates)
    out = _range([modalities, daily_features, mega_images], fresh, FIRST, LAST, selection=[mega_images])
    assert not out.success
    evals = {e.check_name: e for e in out.get_asset_check_evaluations()}
    assert evals["dtype_shape_range"].passed is False
    assert evals["dtype_shape_range"].metadata["failing_dates"].value == ["2024-03-06"]
    failure = [e for e in out.all_events if e.is_step_failure][0]
    err = failure.step_failure_data.error
    assert "dtype_shape_range" in err.message + (err.cause.message if err.cause else "")
    assert not list((tmp_path / "mega_images").rglob("*.h5"))
    assert out.asset_materializations_for_node("mega_images") == []
