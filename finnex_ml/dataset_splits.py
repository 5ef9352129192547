"""Leak-free splits over every ready date, train-only statistics and ``cnn_ready/`` set files
(the ``dataset_splits`` asset's work).

A date is ready when it has complete labels, a mega-image and a patch shard. ``build_splits``
cuts train/val/test and walk-forward folds with a purge gap (``finnex_ml.splits``) and fits pixel
statistics and class weights on training dates only (one image in memory at a time);
``write_splits`` writes ``splits/`` and ``cnn_ready/`` (``finnex_ml.datasets_io``) and reads the
set files' shapes back. The frames and schemas at the end feed the asset's checks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandera.polars as pa
import polars as pl

from finnex_ml import calendar
from finnex_ml import labels as lb
from finnex_ml import patches as pt
from finnex_ml import splits as sp
from finnex_ml.datasets_io import write_set_file
from finnex_ml.encoding.store import image_path, list_dates
from finnex_ml.errors import DataInputError
from finnex_ml.patch_build import image_attrs
from finnex_ml.paths import write_json_atomic, write_parquet_atomic
from finnex_ml.schemas import frame_check

Moments = dict[date, tuple[int, np.ndarray, np.ndarray]]
_PARTITION_GLOB = "[0-9][0-9][0-9][0-9]/[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9].parquet"


def read_all_labels(folder: Path) -> pl.DataFrame:
    """Every labels partition under ``folder`` (``YYYY/{date}.parquet``, one row each), sorted by date."""
    files = sorted(folder.glob(_PARTITION_GLOB))
    if not files:
        raise DataInputError("no labels partitions are materialised", file=str(folder))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed").sort("date")


def eligible_dates(table: pl.DataFrame, image_root: Path, shard_root: Path) -> tuple[list[date], dict[str, Any]]:
    """Dates with complete labels, an image and a patch shard; the rest counted by reason."""
    horizons = lb.horizons_of(table)
    complete = table.filter(pl.all_horizontal([pl.col(lb.class_col(h)).is_not_null() for h in horizons]))
    images, shards = set(list_dates(image_root)), set(pt.list_shard_dates(shard_root))
    dates = [d for d in complete["date"].to_list() if d in images and d in shards]
    info = {
        "labeled_dates": table.height,
        "complete_labels": complete.height,
        "without_image": sum(d not in images for d in complete["date"].to_list()),
        "without_shard": sum(d in images and d not in shards for d in complete["date"].to_list()),
        "incomplete_labels": table.height - complete.height,
    }
    return dates, info


def image_moments(image_root: Path, dates: list[date]) -> Moments:
    """Per-image channel count/mean/M2, reading one image at a time."""
    out, buf = {}, np.empty(pt.IMAGE_SHAPE, dtype=np.float32)
    for d in dates:
        with h5py.File(image_path(image_root, d), "r") as f:
            f["image"].read_direct(buf)
        rm = sp.RunningMoments()
        rm.add(buf)
        out[d] = (rm.n, rm.mean, rm.m2)
    return out


def fit_statistics(
    moments: Moments, dates: tuple[date, ...], table: pl.DataFrame, horizons: list[int]
) -> dict[str, Any]:
    """Pixel statistics (merged per-image moments) and class weights over ``dates``."""
    rm = sp.RunningMoments()
    for d in dates:  # date order: the merge is deterministic
        rm.merge_moments(*moments[d])
        rm.items += 1
    sub = table.filter(pl.col("date").is_in(list(dates)))
    weights = {}
    for h in horizons:
        w, n = sp.class_weights(sub[lb.class_col(h)].to_numpy())
        weights[f"{h}d"] = {"weights": dict(zip(lb.CLASS_NAMES, w)), "counts": dict(zip(lb.CLASS_NAMES, n))}
    return {
        **rm.to_dict(),
        "class_weights": weights,
        "fitted_dates": [dates[0].isoformat(), dates[-1].isoformat()],
        "n_dates": len(dates),
    }


@dataclass(frozen=True)
class SplitsConfig:
    train_fraction: float = 0.8
    val_fraction: float = 0.1
    embargo_sessions: int = 0
    folds: int = 5


@dataclass(frozen=True)
class SplitsResult:
    """Everything ``dataset_splits`` writes and reports, before anything is written."""

    dates: list[date]  # eligible dates
    info: dict[str, Any]  # eligibility counts
    used: pl.DataFrame  # labels of the eligible dates
    horizons: list[int]
    max_horizon: int
    sessions: tuple[date, ...]
    split: sp.Split
    folds: list[sp.Fold]
    doc: dict[str, Any]  # splits.json
    split_hash: str
    moments: Moments  # of the images read (training dates only)
    stats: dict[str, Any]  # statistics.json
    spec_hash: str
    stale_labels: list[str]  # shards whose stored labels differ from the labels table

    @property
    def sets(self) -> dict[str, tuple[date, ...]]:
        return self.split.sets()


def _check_shards(
    dates: list[date], used: pl.DataFrame, horizons: list[int], image_root: Path, shard_root: Path
) -> tuple[str, list[str]]:
    """The one layout of the eligible images and the shards whose labels are older than the table;
    a shard older than its image, or images of several layouts, is an error."""
    # a shard is stale if its image was re-encoded since (normalisation hash or layout changed)
    stale, stale_labels, spec_hashes = [], [], set()
    lab = {r["date"]: r for r in used.iter_rows(named=True)}
    for d in dates:
        ia, sa = image_attrs(image_path(image_root, d)), pt.shard_attrs(shard_root, d)
        spec_hashes.add(ia.get("spec_hash"))
        if sa["spec_hash"] != ia.get("spec_hash") or sa["image_params_hash"] != ia.get("normalization_params_hash", ""):
            stale.append(d)
        stored_h = json.loads(sa["horizons"])
        want = [lab[d][lb.class_col(h)] for h in stored_h if lb.class_col(h) in lab[d]]
        if stored_h != horizons or [int(x) for x in sa["label_class"]] != want:
            stale_labels.append(d.isoformat())
    if stale:
        raise DataInputError(
            f"{len(stale)} patch shard(s) predate their image (first {stale[0]}); "
            "re-materialise patch_dataset for them",
            date=stale[0].isoformat(),
        )
    if len(spec_hashes) > 1:
        raise DataInputError(f"eligible images mix {len(spec_hashes)} layouts; re-materialise mega_images")
    return next(iter(spec_hashes)), stale_labels


def _split_doc(
    split: sp.Split, folds: list[sp.Fold], cfg: SplitsConfig, horizons: list[int], info: dict[str, Any]
) -> dict[str, Any]:
    def iso(ds):
        return [d.isoformat() for d in ds]

    return {
        "gap_rule": f"pos(first date of a set) - pos(last date of the previous set) > {split.gap} sessions "
        f"(max horizon {split.max_horizon} + embargo {cfg.embargo_sessions}); the previous set's last dates "
        "are purged",
        "gap": split.gap,
        "max_horizon": split.max_horizon,
        "embargo": cfg.embargo_sessions,
        "horizons": horizons,
        "fractions": {
            "train": cfg.train_fraction,
            "val": cfg.val_fraction,
            "test": round(1 - cfg.train_fraction - cfg.val_fraction, 10),
        },
        "sets": {k: iso(v) for k, v in split.sets().items()},
        "purged": iso(split.purged),
        "folds": [{"fold": f.index, "train": iso(f.train), "val": iso(f.val), "purged": iso(f.purged)} for f in folds],
        "eligibility": info,
    }


def build_splits(table: pl.DataFrame, image_root: Path, shard_root: Path, cfg: SplitsConfig) -> SplitsResult:
    """Splits, folds and train-only statistics over every ready date of ``table`` (all labels)."""
    horizons = lb.horizons_of(table)
    hmax = max(horizons)
    dates, info = eligible_dates(table, image_root, shard_root)
    if not dates:
        raise DataInputError(f"no date has an image, a patch shard and complete labels ({info})")
    used = table.filter(pl.col("date").is_in(dates))
    if "config_hash" in used.columns and used["config_hash"].n_unique() > 1:
        raise DataInputError(
            f"labels of the eligible dates come from {used['config_hash'].n_unique()} different "
            "label configs; re-materialise labels over the whole range with one config"
        )
    spec_hash, stale_labels = _check_shards(dates, used, horizons, image_root, shard_root)
    sessions = calendar.all_sessions()
    split = sp.temporal_split(
        dates, sessions, hmax, train=cfg.train_fraction, val=cfg.val_fraction, embargo=cfg.embargo_sessions
    )
    folds = sp.walk_forward(sp.development_dates(split), sessions, hmax, folds=cfg.folds, embargo=cfg.embargo_sessions)
    doc = _split_doc(split, folds, cfg, horizons, info)
    split_hash = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    doc["split_hash"] = split_hash
    # statistics: read only the images of training dates (main split and each fold's training dates)
    moments = image_moments(image_root, sorted(set(split.train) | {d for f in folds for d in f.train}))
    stats = {
        "fitted_on": "train",
        "split_hash": split_hash,
        "pixel_stats_over": "every pixel of every training image",
        "class_names": list(lb.CLASS_NAMES),
        "class_weight_rule": "n / (K * n_class), K = classes present in train; 0 for an absent class",
        "train": fit_statistics(moments, split.train, used, horizons),
        "folds": [{"fold": f.index, **fit_statistics(moments, f.train, used, horizons)} for f in folds],
    }
    return SplitsResult(
        dates,
        info,
        used,
        horizons,
        hmax,
        sessions,
        split,
        folds,
        doc,
        split_hash,
        moments,
        stats,
        spec_hash,
        stale_labels,
    )


def dates_frame(res: SplitsResult) -> pl.DataFrame:
    """``splits/dates.parquet``: each eligible date's set and position in it (purged: no position)."""
    rows = [{"date": d, "set": name, "position": i} for name, v in res.sets.items() for i, d in enumerate(v)]
    rows += [{"date": d, "set": "purged", "position": None} for d in res.split.purged]
    return pl.DataFrame(rows, schema={"date": pl.Date, "set": pl.String, "position": pl.Int32}).sort("date")


def folds_frame(res: SplitsResult) -> pl.DataFrame:
    """``splits/folds.parquet``: each fold's dates and their role."""
    return pl.DataFrame(
        [
            {"fold": f.index, "date": d, "role": role}
            for f in res.folds
            for role, ds in (("train", f.train), ("val", f.val), ("purged", f.purged))
            for d in ds
        ],
        schema={"fold": pl.Int16, "date": pl.Date, "role": pl.String},
    ).sort("fold", "date")


def write_splits(
    res: SplitsResult, image_root: Path, shard_root: Path, splits_root: Path, ready_root: Path
) -> list[dict[str, Any]]:
    """Write ``splits/`` and ``cnn_ready/``; the shapes of each set file, read back."""
    write_json_atomic(splits_root / "splits.json", res.doc)
    write_parquet_atomic(splits_root / "dates.parquet", dates_frame(res))
    write_parquet_atomic(splits_root / "folds.parquet", folds_frame(res))
    write_json_atomic(ready_root / "statistics.json", res.stats)
    shapes = []
    for name, ds in res.sets.items():
        sub = res.used.filter(pl.col("date").is_in(list(ds))).sort("date")
        cls = sub.select([pl.col(lb.class_col(h)) for h in res.horizons]).to_numpy()
        ret = sub.select([pl.col(lb.return_col(h)) for h in res.horizons]).to_numpy()
        path = write_set_file(
            ready_root / f"{name}.h5",
            name,
            list(ds),
            image_root,
            shard_root,
            cls,
            ret,
            res.horizons,
            spec_hash=res.spec_hash,
            split_hash=res.split_hash,
        )
        with h5py.File(path, "r") as f:
            shapes.append(
                {
                    "set": name,
                    "dates": len(ds),
                    "images": f["images"].shape[0],
                    "patches": f["patches"].shape[0],
                    "labels": f["labels"].shape[0],
                    "date_rows": f["dates"].shape[0],
                }
            )
    return shapes


# ---- the checks' frames and schemas -----------------------------------------------------------


def boundary_frame(split: sp.Split, folds: list[sp.Fold], sessions: tuple[date, ...], hmax: int) -> pl.DataFrame:
    """One row per pair of consecutive sets (main split and each fold), for the gap check."""
    pos = {d: i for i, d in enumerate(sessions)}
    pairs = [("train", split.train, "val", split.val), ("val", split.val, "test", split.test)]
    pairs += [(f"fold{f.index}.train", f.train, f"fold{f.index}.val", f.val) for f in folds]
    rows = []
    for a, A, b, B in pairs:
        rows.append(
            {
                "earlier": a,
                "later": b,
                "earlier_last_pos": pos[max(A)],
                "later_first_pos": pos[min(B)],
                "shared": len(set(A) & set(B)),
                "window_violations": len(sp.check_no_leak({a: A, b: B}, sessions, hmax, split.gap)),
            }
        )
    return pl.DataFrame(rows)


def gap_schema(gap: int) -> pa.DataFrameSchema:
    """For ``boundary_frame``: disjoint sets, the gap rule, no label window across sets."""
    return pa.DataFrameSchema(
        checks=[
            frame_check(pl.col("shared") == 0, "disjoint"),
            frame_check(pl.col("later_first_pos") - pl.col("earlier_last_pos") > gap, f"gap_gt_{gap}"),
            frame_check(pl.col("window_violations") == 0, "label_windows_isolated"),
        ]
    )


def statistics_frame(res: SplitsResult) -> pl.DataFrame:
    """One row per fitted scope (train, each fold): what was fitted against what should have been."""
    split, stats = res.split, res.stats
    eval_read = len(set(res.moments) & set(split.test))
    scopes = [("train", stats["train"], split.train)]
    scopes += [(f"fold{f.index}", s, f.train) for f, s in zip(res.folds, stats["folds"])]
    return pl.DataFrame(
        [
            {
                "scope": scope,
                "fitted": s["n_dates"],
                "expected": len(train),
                "images_read_for_scope": s["images"],
                "first": s["fitted_dates"][0],
                "last": s["fitted_dates"][1],
                "want_first": train[0].isoformat(),
                "want_last": train[-1].isoformat(),
                "eval_dates_read": eval_read,
            }
            for scope, s, train in scopes
        ]
    )


STATISTICS_SCHEMA = pa.DataFrameSchema(
    checks=[
        frame_check(
            (pl.col("fitted") == pl.col("expected")) & (pl.col("images_read_for_scope") == pl.col("expected")),
            "fitted_on_all_and_only_training_dates",
        ),
        frame_check((pl.col("first") == pl.col("want_first")) & (pl.col("last") == pl.col("want_last")), "date_range"),
        frame_check(pl.col("eval_dates_read") == 0, "no_test_image_read"),
    ]
)
SHAPES_SCHEMA = pa.DataFrameSchema(
    checks=[
        frame_check(
            (pl.col("images") == pl.col("dates")) & (pl.col("date_rows") == pl.col("dates")), "one_image_per_date"
        ),
        frame_check(pl.col("patches") == pt.N_PATCHES * pl.col("images"), "patches_eq_256_x_images"),
        frame_check(pl.col("labels") == pl.col("patches"), "one_label_row_per_patch"),
    ]
)

__all__ = [
    "SHAPES_SCHEMA",
    "STATISTICS_SCHEMA",
    "SplitsConfig",
    "SplitsResult",
    "boundary_frame",
    "build_splits",
    "dates_frame",
    "eligible_dates",
    "fit_statistics",
    "folds_frame",
    "gap_schema",
    "image_moments",
    "read_all_labels",
    "statistics_frame",
    "write_splits",
]
