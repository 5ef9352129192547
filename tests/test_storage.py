"""The storage layer: ``SeriesKey``, the library's typed stores (``finnex_ml.storage``) and the
``FinnexStorage`` resource's root, with and without ``FINNEX_DATA_DIR``."""

import dataclasses
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from finnex_assets.storage import FinnexStorage, default_storage
from finnex_ml import patches as pt
from finnex_ml.encoding import build_layout
from finnex_ml.encoding.encoder import EncodedImage
from finnex_ml.encoding.normalize import NormConfig
from finnex_ml.encoding.store import image_path, read_image
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.paths import REPO_ROOT
from finnex_ml.series import DEFAULT_TICKER, SeriesKey, series_keys, single_date
from finnex_ml.storage import Storage

REPO = Path(__file__).resolve().parent.parent
D = date(2024, 3, 4)

# ---- SeriesKey -------------------------------------------------------------------------------


def test_series_key_of_a_date_is_the_single_stock_series():
    k = SeriesKey.of(D)
    assert k == SeriesKey(DEFAULT_TICKER, D) == SeriesKey.of("2024-03-04") and k.is_default
    assert SeriesKey.of(k) is k and k.partition_key == "2024-03-04" and str(k) == f"{DEFAULT_TICKER}@2024-03-04"
    assert SeriesKey.of(D, "AAPL") == SeriesKey("AAPL", D) and not SeriesKey("AAPL", D).is_default
    assert series_keys(["2024-03-05", D], "MSFT") == [SeriesKey("MSFT", date(2024, 3, 5)), SeriesKey("MSFT", D)]
    # frozen, hashable, ordered by ticker then date
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.ticker = "X"  # type: ignore[misc]
    assert len({k, SeriesKey.of("2024-03-04")}) == 1
    keys = [SeriesKey("B", D), SeriesKey("A", date(2024, 3, 5)), SeriesKey("A", D)]
    assert sorted(keys) == [SeriesKey("A", D), SeriesKey("A", date(2024, 3, 5)), SeriesKey("B", D)]


@pytest.mark.parametrize("bad", [("", D), ("AAPL", "2024-03-04"), ("AAPL", None), (None, D)])
def test_series_key_rejects_what_is_not_a_ticker_and_a_date(bad):
    with pytest.raises(ConfigError, match="SeriesKey"):
        SeriesKey(*bad)


def test_single_date_refuses_another_ticker_with_a_hint():
    assert single_date(D) == single_date(SeriesKey.of(D)) == D
    with pytest.raises(ConfigError, match="universe store"):
        single_date(SeriesKey("AAPL", D), "the image store")
    with pytest.raises(ConfigError, match="ISO date"):
        SeriesKey.of("2024-3-4")


# ---- the typed stores: the same paths as before, round trips ---------------------------------


def test_store_paths_are_the_date_only_layout(tmp_path):
    s = Storage(tmp_path)
    root = tmp_path.resolve()
    key = SeriesKey.of(D)
    assert s.tables.path("labels", D) == s.tables.path("labels", key) == s.tables.path(["labels"], "2024-03-04")
    assert s.tables.path("labels", key) == root / "tables" / "labels" / "2024" / "2024-03-04.parquet"
    assert s.images.path(key) == image_path(tmp_path / "mega_images", D) == root / "mega_images/2024/03/2024-03-04.h5"
    assert s.images.spec_path() == tmp_path / "mega_images/metadata/channel_encoding_spec.json"
    assert s.images.preview_path(key) == tmp_path / "mega_images/previews/2024-03-04.png"
    patches = tmp_path / "datasets" / "patch_datasets"
    assert s.patches.shard_path(key) == pt.shard_path(patches, D)
    assert s.patches.table_path(D) == pt.table_path(patches, D)
    assert s.splits.splits_path() == tmp_path / "datasets/splits/splits.json"
    assert s.cnn_ready.set_path("train") == tmp_path / "datasets/cnn_ready/train.h5"
    assert s.cnn_ready.statistics_path() == tmp_path / "datasets/cnn_ready/statistics.json"
    assert s.models.best_checkpoint("cnn_model") == tmp_path / "datasets/models/cnn_model/best.pt"
    assert s.evaluation.path("evaluation.json") == tmp_path / "datasets/evaluation/evaluation.json"
    assert s.reports.path("qa_report") == tmp_path / "reports/qa_report.html"
    u = s.universe
    assert (u.images_root, u.datasets_root) == (tmp_path / "universe/images", tmp_path / "universe/datasets")
    assert u.report_path() == tmp_path / "universe/reports/universe_report.html"
    # any ticker of a date lives in that date's cross-section file
    assert u.image_path(SeriesKey("AAPL", D)) == u.image_path(SeriesKey("MSFT", D)) == u.image_path(D)
    assert u.image_path(D) == root / "universe/images/2024/03/2024-03-04.h5"


def test_single_stock_stores_refuse_another_ticker_and_unsafe_names(tmp_path):
    s = Storage(tmp_path)
    other = SeriesKey("AAPL", D)
    for call in (
        lambda: s.tables.path("labels", other),
        lambda: s.images.path(other),
        lambda: s.patches.shard_path(other),
    ):
        with pytest.raises(ConfigError, match="AAPL@2024-03-04"):
            call()
    for call in (
        lambda: s.tables.path("..", D),
        lambda: s.tables.path("labels", "2024-03-04/../x"),
        lambda: s.models.checkpoint_dir("../escape"),
        lambda: s.reports.path("a/b"),
        lambda: s.evaluation.path(".hidden"),
    ):
        with pytest.raises(ConfigError):
            call()
    with pytest.raises(ConfigError, match="SeriesKey"):
        s.universe.read_record(D)  # type: ignore[arg-type]


def test_table_store_round_trip_and_clear_missing_error(tmp_path):
    tables = Storage(tmp_path).tables
    rows = {d: pl.DataFrame({"date": [d], "x": [float(d.day)]}) for d in (D, date(2024, 3, 5), date(2025, 1, 2))}
    for d, frame in rows.items():
        assert tables.write("feats", SeriesKey.of(d), frame) == tables.path("feats", d)
    assert tables.exists("feats", D) and not tables.exists("feats", date(2024, 3, 6))
    assert tables.read("feats", "2024-03-05").equals(rows[date(2024, 3, 5)])
    assert tables.read_all("feats").equals(pl.concat(list(rows.values())))
    with pytest.raises(DataInputError, match="feats has no materialisation for 2024-03-06") as err:
        tables.read("feats", date(2024, 3, 6))
    assert err.value.file.endswith("2024-03-06.parquet") and err.value.date == "2024-03-06"
    with pytest.raises(FileNotFoundError, match="materialise it first"):
        tables.read_all("absent")


def test_image_store_round_trip_by_key(tmp_path):
    images = Storage(tmp_path).images
    spec = build_layout(["price__ret_1d", "macro__vix", "news__mean", "fundamental__eps_ttm"])
    n_features = len(spec.features)
    rng = np.random.default_rng(3)
    item = EncodedImage(
        date=D,
        image=rng.random((512, 512, 3), dtype=np.float32),
        missing_summary={},
        missing=np.zeros((spec.sessions, n_features), dtype=bool),
        window=np.zeros((spec.sessions, n_features), dtype=np.float32),
        center=np.zeros(n_features),
        scale=np.ones(n_features),
        params_hash="p",
    )
    norm = NormConfig()
    images.write_spec(spec, norm)
    assert images.write(item, spec, norm) == images.path(SeriesKey.of(D))
    assert images.read_spec().spec_hash() == spec.spec_hash()
    assert images.read(SeriesKey.of(D)).tobytes() == item.image.tobytes() == read_image(images.root, D).tobytes()
    assert images.read_record("2024-03-04")["normalization_params_hash"] == "p"
    with images.open_range([SeriesKey.of(D)]) as view:
        assert np.array_equal(view[0], item.image)


def test_json_stores_round_trip_and_name_the_missing_file(tmp_path):
    s = Storage(tmp_path)
    doc = {"b": 1, "a": [1, 2]}
    path = s.evaluation.write_json("evaluation.json", doc)
    assert path.read_text(encoding="utf-8") == '{\n "b": 1,\n "a": [\n  1,\n  2\n ]\n}'  # as written, not sorted
    assert s.evaluation.read_json("evaluation.json", "hint") == doc
    frame = pl.DataFrame({"x": [1, 2]})
    s.evaluation.write_parquet("equity.parquet", frame)
    assert s.evaluation.read_parquet("equity.parquet").equals(frame)
    with pytest.raises(DataInputError, match="splits.json is missing: materialise dataset_splits first"):
        s.splits.read_splits()
    with pytest.raises(DataInputError, match="statistics.json is missing"):
        s.cnn_ready.read_statistics()
    assert s.reports.write_html("qa_report", "<p>ok</p>").read_text(encoding="utf-8") == "<p>ok</p>"
    assert s.universe.write_dataset_json("splits.json", {"horizon": 1}).parent == s.universe.datasets_root


# ---- the resource: FINNEX_DATA_DIR or the repo's data/ ----------------------------------------


def test_resource_root_from_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FINNEX_DATA_DIR", str(tmp_path / "d"))
    r = default_storage()
    assert isinstance(r.root, dg.EnvVar)  # the UI shows where the root comes from
    assert r.root_path() == (tmp_path / "d").resolve()  # also read outside a run (the CLI)
    with dg.build_resources({"storage": r}) as res:  # as Dagster resolves it when a run starts
        assert res.storage.root == str(tmp_path / "d")
        assert res.storage.images.root == (tmp_path / "d").resolve() / "mega_images"


def test_resource_without_the_variable_is_the_repo_data_and_follows_a_later_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("FINNEX_DATA_DIR", raising=False)
    r = default_storage()
    assert r.root == "" and r.root_path() == (REPO_ROOT / "data").resolve()
    with dg.build_resources({"storage": r}) as res:
        assert res.storage.tables.root == (REPO_ROOT / "data").resolve() / "tables"
        # the CLI sets FINNEX_DATA_DIR for some demos after the definitions were built
        monkeypatch.setenv("FINNEX_DATA_DIR", str(tmp_path))
        assert res.storage.tables.root == tmp_path.resolve() / "tables"
    assert FinnexStorage(root=str(tmp_path / "x")).reports.root == (tmp_path / "x").resolve() / "reports"


def _load_definitions(env_data_dir: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "FINNEX_DATA_DIR"}
    if env_data_dir is not None:
        env["FINNEX_DATA_DIR"] = env_data_dir
    code = (
        "import dagster as dg\n"
        "from finnex_assets.definitions import defs\n"
        "r = defs.resources['storage']\n"
        "assert defs.resources['io_manager'].storage is r and defs.resources['mega_image_io_manager'].storage is r\n"
        "with dg.build_resources({'storage': r}) as res:\n"
        "    print(res.storage.root_path())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_definitions_load_with_and_without_the_variable(tmp_path):
    assert _load_definitions(str(tmp_path)) == str(tmp_path.resolve())
    assert _load_definitions(None) == str((REPO_ROOT / "data").resolve())


def test_dagster_validates_the_definitions_without_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FINNEX_DATA_DIR"}
    env.update(PYTHONPATH=str(REPO), DAGSTER_HOME=str(tmp_path), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "finnex_assets.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
