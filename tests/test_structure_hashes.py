"""Byte pins of a short synthetic pipeline: features -> mega_images -> labels -> patch_dataset ->
dataset_splits on the default synthetic source. Any refactor of these assets must leave every
digest below unchanged (pixels, label values, patch arrays and tables, splits and statistics)."""

import hashlib
import json
import warnings
from pathlib import Path

import dagster as dg
import h5py
import polars as pl
import pytest
from conftest import pipeline_resources

from finnex_assets.assets.datasets import dataset_splits, labels, patch_dataset
from finnex_assets.assets.features import daily_features
from finnex_assets.assets.images import LOOKBACK, mega_images
from finnex_assets.assets.ingestion import modalities
from finnex_ml import calendar

warnings.filterwarnings("ignore", category=dg.BetaWarning)

# 8 sessions with images; horizon 1 only (gap 1) keeps the splits small: train 3, val 1, test 2
FIRST, LAST = "2024-03-04", "2024-03-13"
ASSETS = [modalities, daily_features, mega_images, labels, patch_dataset, dataset_splits]
LABELS_CONFIG = {"horizons": [1]}
SPLITS_CONFIG = {"train_fraction": 0.5, "val_fraction": 0.25, "folds": 1}

EXPECTED: dict[str, str] = {
    "cnn_ready/statistics.json": "8f19692c4c6afe41b724901a498ef8716ba321b9a09d0efd21fa6be95f118c49",
    "cnn_ready/test.h5": "726b152bfc73192dd3a983d19b784e711dca8f2ecf94a7569de62576ceef4ee6",
    "cnn_ready/train.h5": "916102d61eb4828165777af8bf4b2f486206140f7e0893f9c129dc5dec9e5917",
    "cnn_ready/val.h5": "d7942e8f7699a2e692ac7c4117315007f604dfda93eb2c333fd0b4f173793e2a",
    "image/2024-03-04": "0ddae52d0b066de1c6f2a0218a7c5843cb428f0e1daf46d81ab60c294b16900e",
    "image/2024-03-05": "851536d5552e87bb3e498d666c0702c0fda8845e355513e37c542f1c361d061d",
    "image/2024-03-06": "433a087067a0a6409fb329f71460c012c0e4574a3f4aeebc8f86ce04a8edd1d5",
    "image/2024-03-07": "4a61f8621eea95821e4786091fb40f133b868e9e427834eb0f703e52f8609a92",
    "image/2024-03-08": "b359af1d1998cc09bead48c15840e12993f16ff0dda5d80c76b49eb2e4ab4468",
    "image/2024-03-11": "4059e3e8d6449fa70ce75da6cabf3bfc2d86262f6d6ed76d5086e9275b24c8bd",
    "image/2024-03-12": "34656e330393e37434d73327ed77d06b342948d6e3166ed1cc74e22a695f9265",
    "image/2024-03-13": "bef6258c09383553a65d3cb7fb00e30363befaae6d41bd022cc3ca0c177c47f5",
    "labels": "6b3495e7e55e12a5ac589c66aa133d63fecf5b9b74bef16312377a9687959df2",
    "patch_table/2024/03/2024-03-04.parquet": "343e46f18e7055df31102dee378c6e90993a63797332252aeaad28a25c99a0be",
    "patch_table/2024/03/2024-03-05.parquet": "4cf8a67dd386d78507d0855b20f3835f725a1aa9104109ec47671796d172c48e",
    "patch_table/2024/03/2024-03-06.parquet": "30afe46cf4e1d09b12892f9ec70da625ca50433ed9befb2ff1cd0c0eee1c5792",
    "patch_table/2024/03/2024-03-07.parquet": "151e962d07ca842f0ebbb57de39a4ec415e7fa5858174517cf843f9ca811cea3",
    "patch_table/2024/03/2024-03-08.parquet": "47717cc837edb1df25ffa79fa1cace4694854b28a81c99233a64415d43cc25b4",
    "patch_table/2024/03/2024-03-11.parquet": "01853a27a7306950eb34df1d22b9f4efe6361b297a0139b7548ec4b8f967c3ad",
    "patch_table/2024/03/2024-03-12.parquet": "ef290104bfc7b6d1672b1f11221ad80ecfe49ea8e0a6444ae74627be4f9d319f",
    "patch_table/2024/03/2024-03-13.parquet": "35c864634e23834bad22667f49a91bb57a5f9a86adfaabb6d3269c7fa71c33ca",
    "patch_table/layout/1a3a2ec321ca98739070369b8cba03dbd435a197cd912307a6e347c6fac722fb.parquet": "7c712c3ca3f109c601f17bf4691dd2b0476c365e1b12f85b6c34e154578f467a",
    "shard/2024-03-04": "af2d29a4491111212a9399e959a8e6a1bd23d21cda29ec80ca98f4d988de6b0e",
    "shard/2024-03-05": "9045b64736a09d63a17bb705f312a37637555340f5c9dfdda36d1088138ee276",
    "shard/2024-03-06": "232cfef5d9cb2b758cd4d8c40ff46233b59854eae9505e4734ac303c37aabc81",
    "shard/2024-03-07": "2726392a65e13fe5acba2857bd577158841abc0b130f69d7607548b429572710",
    "shard/2024-03-08": "603e6eefeda8292da8d7bc5e757aded6b218f0ee8594c9f634343e17e6935c28",
    "shard/2024-03-11": "9727996787824e46e7c13e05007c8f45963ca4ebcc038e7f7ee2bb4a6b4bf76f",
    "shard/2024-03-12": "4e1d2bee237b433e3af21aa913e63a30a208deda6d56420de8be37cb5e6963d7",
    "shard/2024-03-13": "61de0c798a0ace6fc61ef4d2f3fc0b311ccd8c7fc6002d2943efe9d63b3fe198",
    "splits/dates.parquet": "c6b589567b7107cff8d449bdf1e3eca61dbf593b060e2d873b69ef41ad9759cd",
    "splits/folds.parquet": "837314a9a1c7325b375f7302a1db99d9fa05512ab8062d0d21f88e9d6b26ba84",
    "splits/splits.json": "9ccd98154e48b8c073fa9812bc099156787c3e084370c80fd578eaea17e230a4",
}


def _range(res, a, b, selection, run_config=None):
    tags = {"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b} if a else None
    return dg.materialize(
        ASSETS,
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        raise_on_error=False,
        tags=tags,
        run_config=run_config,
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _value(v: object) -> object:
    # floats to 12 significant digits: a rolling std's last bits differ between CPUs (its SIMD
    # summation order; the labels' thresholds did, 2026-12-03), far below any refactor's change
    return f"{v:.12g}" if isinstance(v, float) else v


def _frame_sha(frame: pl.DataFrame) -> str:
    """Schema and values (floats to 12 significant digits), independent of the Parquet writer."""
    rows = [{k: _value(v) for k, v in row.items()} for row in frame.to_dicts()]
    doc = {"schema": [[k, str(v)] for k, v in frame.schema.items()], "rows": rows}
    return _sha(json.dumps(doc, default=str, sort_keys=True).encode())


def _h5_sha(path: Path) -> str:
    """Every dataset of the file, by name, dtype, shape and bytes (attributes are left out)."""
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
        for n in sorted(names):
            arr = f[n][()]
            h.update(f"{n}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def _digests(tmp: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted((tmp / "mega_images").rglob("*.h5")):
        with h5py.File(p, "r") as f:
            out[f"image/{p.stem}"] = _sha(f["image"][()].tobytes())
    lab = sorted((tmp / "tables" / "labels").rglob("*.parquet"))
    out["labels"] = _frame_sha(pl.concat([pl.read_parquet(p) for p in lab]).sort("date"))
    patches = tmp / "datasets" / "patch_datasets"
    for p in sorted(patches.rglob("*.h5")):
        out[f"shard/{p.stem}"] = _h5_sha(p)
    for p in sorted(patches.rglob("*.parquet")):
        out[f"patch_table/{p.relative_to(patches).as_posix()}"] = _frame_sha(pl.read_parquet(p))
    splits, ready = tmp / "datasets" / "splits", tmp / "datasets" / "cnn_ready"
    for name in ("splits.json",):
        out[f"splits/{name}"] = _sha((splits / name).read_bytes())
    for name in ("dates.parquet", "folds.parquet"):
        out[f"splits/{name}"] = _frame_sha(pl.read_parquet(splits / name))
    out["cnn_ready/statistics.json"] = _sha((ready / "statistics.json").read_bytes())
    for p in sorted(ready.glob("*.h5")):
        out[f"cnn_ready/{p.name}"] = _h5_sha(p)
    return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hashes")
    res = pipeline_resources(tmp)
    days = calendar.sessions(FIRST, LAST)
    start = calendar.sessions_back(days[0], LOOKBACK).isoformat()
    nxt = calendar.sessions_forward(days[-1], 1).isoformat()  # close(t+1) of the last date
    assert _range(res, start, nxt, [modalities, daily_features]).success
    assert _range(res, FIRST, LAST, [mega_images]).success
    labelled = _range(res, FIRST, LAST, [labels], {"ops": {"labels": {"config": LABELS_CONFIG}}})
    assert labelled.success
    assert _range(res, FIRST, LAST, [patch_dataset]).success
    split = _range(res, None, None, [dataset_splits], {"ops": {"dataset_splits": {"config": SPLITS_CONFIG}}})
    assert split.success
    return tmp


def test_pipeline_bytes_are_pinned(pipeline):
    got = _digests(pipeline)
    assert len([k for k in got if k.startswith("image/")]) == 8
    assert len([k for k in got if k.startswith("shard/")]) == 8
    assert got == EXPECTED
