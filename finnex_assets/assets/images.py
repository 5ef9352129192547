"""Mega-images: one float32 image per trading date, from the feature table, by the image encoder
chosen in config (default ``tiles``: the 512x512x3 tile layout; see finnex_ml.encoding.encoders)."""

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from finnex_assets import checks
from finnex_assets.partitions import trading_days
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar, pipeline, progress
from finnex_ml.encoding import (
    DEFAULT_ENCODER,
    QA_CHECKS,
    EncodedImage,
    ImageEncoder,
    ImageSpec,
    NormConfig,
    create_encoder,
    read_image,
    write_spec,
)
from finnex_ml.encoding.layout import DEFAULT_SESSIONS
from finnex_ml.errors import DataInputError

NORM = NormConfig()
# feature rows up to and including t per image that the input partition mapping loads: the tile
# layout's. An encoder needing more gets the rest from the source (_with_lookback), like any gap
LOOKBACK = DEFAULT_SESSIONS + NORM.window - 1
IMAGE_CHECKS = QA_CHECKS  # every encoder answers these (ImageEncoder.qa)


class MegaImagesConfig(dg.Config):
    encoder: str = Field(
        default=DEFAULT_ENCODER,
        description="Image encoder by registry name (finnex_ml.encoding.register_encoder); "
        "'tiles' is the 512x512x3 tile layout. The name is stored with the spec for downstream readers.",
    )


@dataclass(frozen=True)
class ImageBatch:
    """The images of one run, encoded lazily one at a time when iterated (each image is
    overwritten by the next: consume it before advancing)."""

    table: pl.DataFrame
    dates: list[date]
    spec: ImageSpec
    norm_config: NormConfig
    encoder: ImageEncoder

    def __iter__(self) -> Iterator[EncodedImage]:
        # the IO manager writes each image before asking for the next: one buffer for all
        return self.encoder.encode_dates(self.table, self.dates, self.spec, self.norm_config, reuse_buffer=True)


@dg.asset(
    ins={
        "daily_features": dg.AssetIn(
            partition_mapping=dg.TimeWindowPartitionMapping(
                start_offset=-(LOOKBACK - 1), allow_nonexistent_upstream_partitions=True
            ),
            metadata={"missing_partitions": "skip"},  # _with_lookback computes them from the source
        )
    },
    partitions_def=trading_days,
    backfill_policy=dg.BackfillPolicy.single_run(),
    io_manager_key="mega_image_io_manager",
    check_specs=[
        dg.AssetCheckSpec(n, asset="mega_images", description=d, blocking=True) for n, d in IMAGE_CHECKS.items()
    ],
    group_name="images",
    kinds={"hdf5", "numpy"},
)
def mega_images(
    context: dg.AssetExecutionContext,
    config: MegaImagesConfig,
    daily_features: pl.DataFrame,
    storage: FinnexStorage,
    data_source: DataSourceResource,
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Encode each date's trailing feature window with the configured encoder's spec; previews
    and the encoder's QA per date.

    Memory stays at one image whatever the range: this pass checks and previews each image
    and drops it; the IO manager re-encodes the same dates one by one when it writes (encoding
    is deterministic, so the same bytes; ~1-3 ms per image against ~10-25 ms for this pass's QA,
    statistics and PNG preview, see benchmarks/bench_mega_images.py).

    Sessions of the lookback whose daily_features were never materialised (a first backfill of
    a range from the UI) are computed from the data source with the same QA rules, so any
    range is one launch; they are not stored as partitions.
    """
    dates = [date.fromisoformat(k) for k in context.partition_keys]
    encoder = create_encoder(config.encoder)  # ConfigError naming the registered ones if unknown
    probe = encoder.build_spec(daily_features.columns) if daily_features.width else None
    need = encoder.history_needed(probe, NORM) if probe is not None else LOOKBACK
    table = _with_lookback(context, daily_features, dates, data_source, max(need, LOOKBACK))
    spec = encoder.build_spec(table.columns)
    root = storage.images.root
    write_spec(root, spec, NORM, encoder=encoder.name)
    failures: dict[str, list[str]] = {name: [] for name in IMAGE_CHECKS}
    prev = _previous_image(root, dates[0], spec)
    encoded = encoder.encode_dates(table, dates, spec, NORM)
    for item in progress.track(encoded, "mega_images", total=len(dates), log=context.log.info):
        key = item.date.isoformat()
        png = encoder.preview(root / "previews" / f"{key}.png", item.image, spec, title=key)
        thumb = base64.b64encode(png.read_bytes()).decode()
        outcome = encoder.qa(item.image, spec, item.window, prev)
        for name, (ok, _) in outcome.items():
            if name in failures and not ok:
                failures[name].append(key)
        stats = encoder.stats(item.image, spec)
        context.add_asset_metadata(
            partition_key=key,
            metadata={
                "preview": dg.MetadataValue.path(str(png)),
                "preview_image": dg.MetadataValue.md(f"![{key}](data:image/png;base64,{thumb})"),
                "encoder": encoder.name,
                "image_shape": dg.MetadataValue.json(list(spec.shape)),
                "spec_hash": spec.spec_hash(),
                "normalization_hash": item.params_hash,
                "features": len(spec.features),
                "missing_cells": int(item.missing.sum()),
                "channel_section_stats": dg.MetadataValue.json(stats),
            },
        )
        prev = item.image
    # every check has run on every image of the range: a failure raises here, before the IO
    # manager writes any image (the previews stay, to look at what failed)
    yield from checks.gate(
        "mega_images",
        [
            dg.AssetCheckResult(
                asset_key="mega_images",
                check_name=name,
                passed=not failures[name],
                metadata={
                    "dates_checked": len(dates),
                    "failing_rows": len(failures[name]),
                    "failing_dates": dg.MetadataValue.json(failures[name][:20]),
                    "rule": desc,
                },
            )
            for name, desc in IMAGE_CHECKS.items()
        ],
        len(dates),
    )
    yield dg.Output(ImageBatch(table, dates, spec, NORM, encoder))


def _with_lookback(
    context: dg.AssetExecutionContext,
    stored: pl.DataFrame,
    dates: list[date],
    data_source: DataSourceResource,
    lookback: int = LOOKBACK,
) -> pl.DataFrame:
    """``stored`` feature rows plus any session of the images' lookback or range missing from it."""
    need = calendar.sessions(calendar.sessions_back(dates[0], lookback), dates[-1])
    have = set(stored["date"].to_list()) if "date" in stored.columns else set()
    gap = [d for d in need if d not in have]
    if not gap:
        return stored.sort("date")
    context.log.info(
        f"mega_images: daily_features for {len(gap)} of the {len(need)} sessions {need[0]}..{need[-1]} are not "
        f"materialised (first {gap[0]}); computing them from the {data_source.kind} source"
    )
    filled = pipeline.checked_features(data_source.source(), gap)
    if stored.height == 0:
        return filled.sort("date")
    if set(filled.columns) != set(stored.columns):
        extra = sorted(set(filled.columns) ^ set(stored.columns))
        raise DataInputError(
            f"mega_images: features computed for the lookback have other columns than the stored daily_features "
            f"({', '.join(extra[:5])}); the source changed since they were materialised: re-materialise "
            f"daily_features from {need[0]}",
            date=gap[0].isoformat(),
        )
    return pl.concat([stored, filled.select([pl.col(c).cast(t) for c, t in stored.schema.items()])]).sort("date")


def _previous_image(root, first: date, spec: ImageSpec) -> np.ndarray | None:
    """Image t-1 for the continuity check across run boundaries, when it exists (and is of this
    spec's shape: write_spec has already refused a root holding another layout)."""
    prev = calendar.sessions_back(first, 2)
    try:
        image = read_image(root, prev) if prev != first else None
    except (ValueError, OSError, KeyError):  # DataInputError when t-1 was never materialised
        return None
    return image if image is not None and image.shape == tuple(spec.shape) else None
