"""Universe mode end to end: a year of the default synthetic universe through features, images,
labels and splits, against bare baselines measured in the same run; peak memory; 500 tickers.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_universe.py            # ~10 min on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/bench_universe.py --quick    # ~3 min: a quarter, fewer tickers

Writes ``benchmarks/universe.md`` (``--out`` to change) and prints the same tables; with
``--summary-json`` also one ``SUMMARY {json}`` line of part 1 + 2's stage rows (see ``_summary.py``).

1. Dagster stages (``dg.materialize`` into a temp dir, one ephemeral instance), in
   ``finnex demo --universe``'s order: universe_prices + universe_features over the images'
   lookback (307 sessions) + the year, then universe_images, universe_labels (timed as separate runs
   so the images stage stands alone), then universe_splits. Wall and CPU time (this process's
   user + system; Dagster runs in process), images written, bytes on disk, rows.
2. Baselines in the same run: (a) a bare numpy -> h5py write of the same images (read back date by
   date from the store, untimed), one file per date, lz4 via hdf5plugin with the store's chunks,
   and uncompressed contiguous; no checks, no metadata, no temp file, no fsync. Each bare file is
   deleted (untimed) after it is written. Ratio = images stage wall / bare write wall (issue-18
   target: within 2x). (b) ``panel.panel_features`` called directly on the same dates vs the
   Dagster features stage: ratio and the fixed Dagster overhead (difference). The synthetic
   universe's lru caches are cleared before each so neither run inherits the other's tickers.
3. Peak memory: the images stage at library level (encode_cross_sections, the four QA checks the
   asset runs through ``SeriesQA`` as the asset does, its preview, write_cross_section) in
   a child process per (tickers, dates) cell, on a features table saved by part 1; and the features
   stage (panel_features) per cell likewise. ru_maxrss of the child; also its RSS just before the
   stage, so the stage's own growth is visible.
4. Scale: ``universe_source("synthetic", n_tickers=500)`` in a child: members() time and memory,
   one load_ticker over 10 years, panel_features for K tickers x 5 dates (K = 500; 50 with
   --quick) and K = 50 for the per-ticker slope; members() at 24 / 100 / 500 tickers.

Shared 2-core VM: absolute times drift by up to ~2x with other users' load; read ratios within one
run. Prints only; no assertions on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import UTC, date, datetime
from pathlib import Path

import h5py
import hdf5plugin
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

warnings.filterwarnings("ignore")

from finnex_ml import calendar, panel  # noqa: E402
from finnex_ml.data import universe as universe_mod  # noqa: E402
from finnex_ml.data.universe import universe_source  # noqa: E402
from finnex_ml.encoding.normalize import NormConfig  # noqa: E402
from finnex_ml.encoding.panel_store import PANEL_CHUNKS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _summary import emit, row  # noqa: E402

HERE = Path(__file__).resolve().parent
LOOKBACK = 307  # finnex_assets.assets.images.LOOKBACK (checked in main)
NORM = NormConfig()  # finnex_assets.assets.images.NORM (checked in main); children skip importing Dagster
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
MB = 2**20


def peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, which exec resets. (ru_maxrss is not usable in a child: Linux
    carries the parent's high-water mark across fork + exec, so every child would report >= the parent.)"""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / MB


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def clear_universe_caches() -> None:
    for name in ("_universe", "_ticker", "_ticker_texts", "_world"):
        fn = getattr(universe_mod, name, None)
        if hasattr(fn, "cache_clear"):
            fn.cache_clear()


class Head:
    """The first k members of a universe (same data per ticker), for ticker-count sweeps."""

    def __init__(self, universe, k: int) -> None:
        self.u, self.k, self.name = universe, k, universe.name

    def members(self) -> pl.DataFrame:
        return self.u.members().head(self.k)

    def load_ticker(self, ticker, start, end):
        return self.u.load_ticker(ticker, start, end)


# --------------------------------------------------------------------------------------------- #
# children (one process per cell, so ru_maxrss is that cell's peak)
# --------------------------------------------------------------------------------------------- #
def child_images(features_path: str, k: int, start: str, n_dates: int) -> dict:
    from finnex_ml.encoding import SeriesQA, build_layout, write_preview
    from finnex_ml.encoding.panel_store import write_cross_section

    dates = calendar.sessions(date.fromisoformat(start), calendar.sessions_forward(date.fromisoformat(start), 400))
    dates = dates[:n_dates]
    lo = calendar.sessions_back(dates[0], LOOKBACK)
    table = pl.read_parquet(features_path)
    tickers = sorted(table["ticker"].unique().to_list())[:k]
    table = (
        table.filter(pl.col("ticker").is_in(tickers) & pl.col("date").is_between(lo, dates[-1]))
        .sort("date", "ticker")
        .rechunk()
    )
    spec = build_layout([c for c in table.columns if c != "ticker"])
    gc.collect()
    rss_before, peak_before = current_rss_mb(), peak_rss_mb()
    out = Path(tempfile.mkdtemp(prefix="u16mem_"))
    t0 = time.perf_counter()
    qa = SeriesQA(spec)
    n = 0
    try:
        parts = dict.fromkeys(("encode", "checks", "preview", "write"), 0.0)
        stream = panel.encode_cross_sections(table, dates, spec, NORM)
        while True:
            t1 = time.perf_counter()
            try:
                d, items = next(stream)  # the encoder's work happens here, per date
            except StopIteration:
                break
            t2 = time.perf_counter()
            parts["encode"] += t2 - t1
            if not items:
                continue
            for tk, item in items:  # as the asset: no stored images before this run
                qa.check(tk, item.image, item.window, lambda: None)
            qa.keep_only(tk for tk, _ in items)
            t3 = time.perf_counter()
            write_preview(out / "previews" / f"{d}.png", items[0][1].image, spec, title=str(d), step=2)
            t4 = time.perf_counter()
            write_cross_section(out, d, items, spec=spec, norm_config=NORM)
            parts["checks"] += t3 - t2
            parts["preview"] += t4 - t3
            parts["write"] += time.perf_counter() - t4
            n += len(items)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {
        "tickers": k,
        "dates": len(dates),
        "images": n,
        "parts_s": parts,
        "table_rows": table.height,
        "wall_s": time.perf_counter() - t0,
        "rss_before_mb": rss_before,
        "peak_before_mb": peak_before,
        "peak_mb": peak_rss_mb(),
    }


def child_features(k: int, start: str, n_dates: int) -> dict:
    first = date.fromisoformat(start)
    dates = calendar.sessions(first, calendar.sessions_forward(first, 400))[:n_dates]
    asof = calendar.sessions(calendar.sessions_back(dates[0], LOOKBACK), dates[-1])
    src = Head(universe_source("synthetic", n_tickers=24, seed=7), k)
    rss_before, peak_before = current_rss_mb(), peak_rss_mb()
    t0 = time.perf_counter()
    prices, features = panel.panel_features(src, asof)
    return {
        "tickers": k,
        "dates": len(dates),
        "sessions": len(asof),
        "rows": features.height,
        "table_mb": features.estimated_size() / MB,
        "wall_s": time.perf_counter() - t0,
        "rss_before_mb": rss_before,
        "peak_before_mb": peak_before,
        "peak_mb": peak_rss_mb(),
    }


def child_scale(n: int, ks: list[int]) -> dict:
    res: dict = {"n": n, "rss_start_mb": current_rss_mb()}
    u = universe_source("synthetic", n_tickers=n, seed=7)
    t0 = time.perf_counter()
    members = u.members()  # cold: also builds the shared single-stock world (market, regimes)
    res["members_s"] = time.perf_counter() - t0
    res["members_rows"] = members.height
    res["after_members_rss_mb"], res["after_members_peak_mb"] = current_rss_mb(), peak_rss_mb()
    for m in (24, 100, n):  # warm world, the universe itself rebuilt: what grows with n
        universe_mod._universe.cache_clear()
        t0 = time.perf_counter()
        universe_source("synthetic", n_tickers=m, seed=7).members()
        res[f"members_warm_{m}_s"] = time.perf_counter() - t0
    lo, hi = date(2015, 1, 2), date(2024, 12, 31)
    listed = members.filter((pl.col("first") <= lo) & (pl.col("last") >= hi))["ticker"]
    tk = listed[len(listed) // 2]
    res["load_ticker"] = tk
    t0 = time.perf_counter()
    raw = u.load_ticker(tk, lo, hi)
    res["load_s"] = time.perf_counter() - t0
    res["load_rows"] = {"prices": raw.prices.height, "texts": raw.texts.height, "releases": raw.releases.height}
    res["after_load_peak_mb"] = peak_rss_mb()
    dates = calendar.sessions(date(2024, 6, 3), date(2024, 6, 7))
    res["pf"] = []
    for k in ks:
        rss0 = current_rss_mb()
        t0, c0 = time.perf_counter(), cpu_s()
        prices, features = panel.panel_features(Head(u, k), dates)
        res["pf"].append(
            {
                "k": k,
                "wall_s": time.perf_counter() - t0,
                "cpu_s": cpu_s() - c0,
                "rows": features.height,
                "rss_before_mb": rss0,
                "rss_after_mb": current_rss_mb(),
                "peak_mb": peak_rss_mb(),
            }
        )
        del prices, features
    res["per_ticker"] = per_ticker_split(u, members, dates)  # after panel_features: its caches fill memory
    return res


def per_ticker_split(u, members: pl.DataFrame, dates: list[date], k: int = 20) -> dict:
    """Where panel_features' per-ticker time goes at 5 dates, on k tickers listed throughout:
    simulating the ticker (_ticker, _ticker_texts: the whole grid,
    then cached; the caches are cleared first), ticker_sessions' load of the dates' window, modality_snapshots (its own load of the
    history window + snapshots), the feature table. Seconds per ticker."""
    from finnex_ml import pipeline
    from finnex_ml.data.universe import ticker_source

    listed = members.with_row_index("i").filter(
        (pl.col("first") < calendar.sessions_back(dates[0], 400)) & (pl.col("last") > dates[-1])
    )
    rows = listed.tail(k)
    universe_mod._ticker.cache_clear()  # nothing of these tickers cached: their first touch is timed
    universe_mod._ticker_texts.cache_clear()
    out = dict.fromkeys(("simulate_ticker", "simulate_texts", "ticker_sessions_load", "snapshots", "features"), 0.0)
    for i, tk in zip(rows["i"].to_list(), rows["ticker"].to_list()):
        t0 = time.perf_counter()
        u._t(i)
        t1 = time.perf_counter()
        universe_mod._ticker_texts(u.seed, u.n_tickers, u.n_sectors, i)
        t2 = time.perf_counter()
        panel.ticker_sessions(u, tk, dates[0], dates[-1])
        t3 = time.perf_counter()
        snaps, _ = pipeline.modality_snapshots(ticker_source(u, tk), dates)
        t4 = time.perf_counter()
        pipeline.daily_features_from_snapshots(snaps)
        t5 = time.perf_counter()
        for key, dt in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            out[key] += dt / len(rows)
    return out


def run_child(args: list[str], timeout: float = 900) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"child {args} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")


# --------------------------------------------------------------------------------------------- #
# part 1: the Dagster stages
# --------------------------------------------------------------------------------------------- #
def dagster_stages(tmp: Path, start: date, end: date, n_tickers: int, horizon: int) -> dict:
    import dagster as dg

    from finnex_assets.assets.universe import UNIVERSE_ASSETS, UniverseResource
    from finnex_assets.io_managers import PartitionedParquetIOManager
    from finnex_assets.resources import MlflowTracking
    from finnex_assets.storage import FinnexStorage

    storage = FinnexStorage(root=str(tmp))  # tables under tmp/tables, universe files under tmp/universe
    res = {
        "universe": UniverseResource(n_tickers=n_tickers),
        "storage": storage,
        "io_manager": PartitionedParquetIOManager(storage=storage),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp}/mlflow.db"),
    }
    inst = dg.DagsterInstance.ephemeral()
    lookback = calendar.sessions_back(start, LOOKBACK)
    stages = [
        ("features", ["universe_prices", "universe_features"], lookback, end),
        ("images", ["universe_images"], start, end),
        ("labels", ["universe_labels"], start, end),
        ("splits", ["universe_splits"], None, None),
    ]
    out: dict = {"stages": {}}
    for name, sel, lo, hi in stages:
        tags = (
            {"dagster/asset_partition_range_start": str(lo), "dagster/asset_partition_range_end": str(hi)}
            if lo
            else None
        )
        if name == "features":
            clear_universe_caches()
        t0, c0 = time.perf_counter(), cpu_s()
        cfg = {**QUIET, "ops": {"universe_splits": {"config": {"horizon": horizon}}}} if name == "splits" else QUIET
        result = dg.materialize(UNIVERSE_ASSETS, selection=sel, resources=res, tags=tags, instance=inst, run_config=cfg)
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        assert result.success, name
        partitions = len(calendar.sessions(lo, hi)) if lo else 1
        out["stages"][name] = {"wall_s": wall, "cpu_s": cpu, "partitions": partitions, "peak_mb": peak_rss_mb()}
        print(f"  stage {name}: {wall:.1f} s wall, {cpu:.1f} s CPU, {partitions} partition(s)", flush=True)
    root = res["storage"].universe.images_root
    tables = tmp / "tables"
    from finnex_ml.encoding.panel_store import panel_index

    index = panel_index(root, start, end)
    prices = pl.read_parquet(tables / "universe_prices" / "*" / "*.parquet")
    features = pl.read_parquet(tables / "universe_features" / "*" / "*.parquet")
    labels = pl.read_parquet(tables / "universe_labels" / "*" / "*.parquet")
    samples = pl.read_parquet(res["storage"].universe.datasets_root / "samples.parquet")
    out.update(
        {
            "images": index.height,
            "image_dates": index["date"].n_unique(),
            "h5_bytes": sum(p.stat().st_size for p in root.rglob("*.h5")),
            "images_root_bytes": du(root),
            "tables_bytes": {a: du(tables / a) for a in ("universe_prices", "universe_features", "universe_labels")},
            "datasets_bytes": du(res["storage"].universe.datasets_root),
            "rows": {
                "prices": prices.height,
                "features": features.height,
                "features_cols": features.width,
                "labels": labels.height,
                "samples": samples.height,
                "samples_in_sets": samples.filter(pl.col("set").is_not_null()).height,
            },
            "root": str(root),
        }
    )
    features.write_parquet(tmp / "features_all.parquet")
    return out


# --------------------------------------------------------------------------------------------- #
# part 2: baselines
# --------------------------------------------------------------------------------------------- #
def bare_write(root: Path, scratch: Path, start: date, end: date) -> dict:
    from finnex_ml.encoding.panel_store import read_cross_section

    scratch.mkdir(parents=True, exist_ok=True)
    lz4 = dict(hdf5plugin.LZ4())
    t_read = t_lz4 = t_none = c_lz4 = c_none = 0.0
    b_lz4 = b_none = n = 0
    for i, d in enumerate(calendar.sessions(start, end)):
        t0 = time.perf_counter()
        try:
            _, images = read_cross_section(root, d)
        except Exception:  # noqa: BLE001 - a date without a file (none expected)
            continue
        t_read += time.perf_counter() - t0
        n += images.shape[0]
        # alternate which bare write goes first, so neither always meets a warmer page cache
        for kind in ("lz4", "none") if i % 2 == 0 else ("none", "lz4"):
            path = scratch / f"{d}_{kind}.h5"
            t0, c0 = time.perf_counter(), cpu_s()
            with h5py.File(path, "w") as f:
                if kind == "lz4":
                    f.create_dataset("images", data=images, chunks=PANEL_CHUNKS, **lz4)
                else:
                    f.create_dataset("images", data=images)
            dt, dc = time.perf_counter() - t0, cpu_s() - c0
            size = path.stat().st_size
            path.unlink()
            if kind == "lz4":
                t_lz4, c_lz4, b_lz4 = t_lz4 + dt, c_lz4 + dc, b_lz4 + size
            else:
                t_none, c_none, b_none = t_none + dt, c_none + dc, b_none + size
        del images
    return {
        "images": n,
        "read_s": t_read,
        "lz4_s": t_lz4,
        "lz4_cpu_s": c_lz4,
        "lz4_bytes": b_lz4,
        "none_s": t_none,
        "none_cpu_s": c_none,
        "none_bytes": b_none,
    }


def partition_writes(tmp: Path, n: int = 120) -> dict:
    """What PartitionedParquetIOManager.handle_output pays per partition, outside Dagster: the
    features table's first ``n`` date partitions written one parquet file each, plain and through
    atomic_path (temp file, fsync, rename) as the IO manager does. Milliseconds per partition."""
    from finnex_ml.paths import atomic_path

    table = pl.read_parquet(tmp / "features_all.parquet")
    prices_like = table.select("date", "ticker", *table.columns[2:8])
    out: dict = {"partitions": 0}
    for name, frame in (("features", table), ("prices_like", prices_like)):
        keys = sorted(frame["date"].unique().to_list())[:n]
        parts = frame.partition_by("date", as_dict=True)
        for mode in ("plain", "atomic"):
            root = tmp / "pw" / name / mode
            root.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            for k in keys:
                path = root / f"{k}.parquet"
                if mode == "plain":
                    parts[(k,)].write_parquet(path, statistics=True)
                else:
                    with atomic_path(path) as t:
                        parts[(k,)].write_parquet(t, statistics=True)
            out[f"{name}_{mode}_ms"] = 1000 * (time.perf_counter() - t0) / len(keys)
        out[f"{name}_cols"] = frame.width
        out["partitions"] = len(keys)
    shutil.rmtree(tmp / "pw", ignore_errors=True)
    return out


def bare_features(start: date, end: date, n_tickers: int) -> dict:
    asof = calendar.sessions(calendar.sessions_back(start, LOOKBACK), end)
    clear_universe_caches()
    t0, c0 = time.perf_counter(), cpu_s()
    src = universe_source("synthetic", n_tickers=n_tickers, seed=7, n_sectors=min(4, n_tickers))
    prices, features = panel.panel_features(src, asof)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0, "rows": features.height}


# --------------------------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------------------------- #
def fmt(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}"


def render(args, meta: dict, p1: dict, bare: dict, bf: dict, mem_img: list, mem_feat: list, scale: dict) -> str:
    st = p1["stages"]
    n_img = p1["images"]
    gb = 1e9
    img_gb = p1["h5_bytes"] / gb
    tickers = args.tickers
    days = p1["image_dates"]
    per_ticker_year = img_gb / (n_img / 252) if n_img else float("nan")  # GB per 252 images of one ticker
    L = []
    L.append("# Universe mode: a year through images, labels and splits\n")
    L.append(
        f"`benchmarks/bench_universe.py{' --quick' if args.quick else ''}`, run {meta['when']} on "
        f"{meta['cores']} CPU core(s) ({meta['machine']}; shared dev VM: absolute times drift by up to ~2x "
        "with other users' load, the ratios are measured within this run and are what to read). "
        f"Universe: `universe_source('synthetic', n_tickers={tickers}, seed=7)`, images and labels over "
        f"{args.start}..{args.end} ({days} sessions), features over the images' {LOOKBACK}-session lookback + "
        f"that span. Whole benchmark: {meta['total_s']:.0f} s.\n"
    )
    L.append("## 1. Dagster stages (dg.materialize, ephemeral instance, in-process executor)\n")
    L.append(
        "Each stage one run, in `finnex demo --universe`'s order (images and labels as separate runs here so "
        "the images stage is timed alone). CPU = this process's user + system time during the run.\n"
    )
    L.append("| stage | partitions | wall s | CPU s | CPU/wall | per partition ms | peak RSS so far MB |")
    L.append("|---|---|---|---|---|---|---|")
    for name, s in st.items():
        L.append(
            f"| {name} | {s['partitions']} | {fmt(s['wall_s'], 1)} | {fmt(s['cpu_s'], 1)} | "
            f"{fmt(s['cpu_s'] / s['wall_s'])} | {fmt(1000 * s['wall_s'] / s['partitions'], 0)} | "
            f"{fmt(s['peak_mb'], 0)} |"
        )
    total = sum(s["wall_s"] for s in st.values())
    L.append(f"| **total** | | **{fmt(total, 1)}** | {fmt(sum(s['cpu_s'] for s in st.values()), 1)} | | | |\n")
    r = p1["rows"]
    tb = p1["tables_bytes"]
    L.append(
        f"Images written: **{n_img}** ({days} dates x up to {tickers} tickers; tickers without {LOOKBACK} "
        f"sessions of history are not imaged). Images stage: {fmt(1000 * st['images']['wall_s'] / n_img, 1)} ms "
        f"wall per image.\n"
    )
    L.append("| on disk | bytes | GB |")
    L.append("|---|---|---|")
    L.append(f"| images: cross-section .h5 files (lz4) | {p1['h5_bytes']:,} | {fmt(img_gb, 3)} |")
    L.append(
        f"| images root, all files (+ previews, spec) | {p1['images_root_bytes']:,} | "
        f"{fmt(p1['images_root_bytes'] / gb, 3)} |"
    )
    for a, b in tb.items():
        L.append(f"| tables/{a} (parquet per partition) | {b:,} | {fmt(b / gb, 4)} |")
    L.append(
        f"| datasets (samples.parquet, splits.json) | {p1['datasets_bytes']:,} | {fmt(p1['datasets_bytes'] / gb, 4)} |"
    )
    L.append("")
    L.append(
        f"GB per ticker-year of images (252 images): **{fmt(per_ticker_year, 3)}** "
        f"({fmt(p1['h5_bytes'] / n_img / MB, 3)} MiB per image; raw float32 is 3.0 MiB).\n"
    )
    L.append(
        f"Rows: universe_prices {r['prices']:,} and universe_features {r['features']:,} x {r['features_cols']} "
        f"columns (lookback + span), universe_labels {r['labels']:,}, samples {r['samples']:,} "
        f"({r['samples_in_sets']:,} in train/val/test).\n"
    )
    L.append("## 2. Baselines in the same run\n")
    L.append(
        f"Bare write: the same {bare['images']} images, read back date by date from the store (untimed, "
        f"{fmt(bare['read_s'], 1)} s), written with plain `h5py` one file per date: lz4 (hdf5plugin, the "
        f"store's chunks {PANEL_CHUNKS}) and uncompressed contiguous; no checks, metadata, temp file or fsync; "
        "the two alternate which goes first; each file deleted untimed after writing.\n"
    )
    wi = st["images"]["wall_s"]
    L.append("| write | wall s | CPU s | MB/s (image bytes) | GB on disk | images stage wall / this |")
    L.append("|---|---|---|---|---|---|")
    raw_mb = bare["images"] * 3.0
    for kind in ("lz4", "none"):
        w = bare[f"{kind}_s"]
        L.append(
            f"| bare h5py, {kind} | {fmt(w, 1)} | {fmt(bare[f'{kind}_cpu_s'], 1)} | {fmt(raw_mb / w, 0)} | "
            f"{fmt(bare[f'{kind}_bytes'] / gb, 3)} | **{fmt(wi / w, 1)}x** |"
        )
    L.append(
        f"| universe_images stage (encode + 4 checks + preview + staged write + commit, Dagster) | {fmt(wi, 1)} | "
        f"{fmt(st['images']['cpu_s'], 1)} | {fmt(raw_mb / wi, 0)} | {fmt(img_gb, 3)} | 1.0x |"
    )
    L.append("")
    fw = st["features"]["wall_s"]
    L.append(
        f"Features: `panel.panel_features` called directly on the same {st['features']['partitions']} sessions "
        f"(no Dagster, caches cleared): {fmt(bf['wall_s'], 1)} s wall, {fmt(bf['cpu_s'], 1)} s CPU, {bf['rows']:,} "
        f"rows. Dagster stage / bare = **{fmt(fw / bf['wall_s'], 2)}x**; Dagster's overhead "
        f"{fmt(fw - bf['wall_s'], 1)} s ({fmt(1000 * (fw - bf['wall_s']) / st['features']['partitions'], 0)} ms "
        "per partition: the three blocking checks, one parquet file per output and partition, the "
        "materialization events).\n"
    )
    pw = bf.get("partition_writes")
    if pw:
        per = pw["features_atomic_ms"] + pw["prices_like_atomic_ms"]
        L.append(
            f"Of that overhead, the IO manager's files, timed outside Dagster on the first {pw['partitions']} "
            f"date partitions of the same table (one parquet file per partition, `statistics=True`): features "
            f"({pw['features_cols']} columns) {fmt(pw['features_plain_ms'], 1)} ms plain, "
            f"{fmt(pw['features_atomic_ms'], 1)} ms through atomic_path (temp + fsync + rename); a prices-like "
            f"frame ({pw['prices_like_cols']} columns) {fmt(pw['prices_like_plain_ms'], 1)} / "
            f"{fmt(pw['prices_like_atomic_ms'], 1)} ms. Both outputs: ~{fmt(per, 0)} ms per partition, "
            f"~{fmt(per * st['features']['partitions'] / 1000, 1)} s per run"
            + (
                f", more than this run's stage-minus-bare difference ({fmt(fw - bf['wall_s'], 1)} s): the stage "
                "and the bare call are one run each on a VM whose load drifts, so that difference is within "
                "noise; the files are the known fixed part of the overhead.\n"
                if per * st["features"]["partitions"] / 1000 > fw - bf["wall_s"]
                else f" of the {fmt(fw - bf['wall_s'], 1)} s.\n"
            )
        )
    L.append("## 3. Peak memory (child process per cell)\n")
    L.append(
        "Images stage at library level (encode_cross_sections, the four QA checks through `SeriesQA` as the "
        "asset runs them, one preview per date, write_cross_section), on the features table part 1 wrote, cut to the cell's tickers and "
        "lookback + dates. `before` = RSS after imports and loading the table, just before the stage.\n"
    )
    L.append("| tickers | dates | images | wall s | RSS before MB | peak RSS MB | stage growth MB |")
    L.append("|---|---|---|---|---|---|---|")
    for m in mem_img:
        L.append(
            f"| {m['tickers']} | {m['dates']} | {m['images']} | {fmt(m['wall_s'], 1)} | {fmt(m['rss_before_mb'], 0)} | "
            f"{fmt(m['peak_mb'], 0)} | {fmt(m['peak_mb'] - m['rss_before_mb'], 0)} |"
        )
    L.append("")
    big = max(mem_img, key=lambda m: m["images"])
    pt = big["parts_s"]
    L.append(
        f"Where the images stage's time goes (cell {big['tickers']} x {big['dates']}, {big['images']} images, "
        "ms per image): "
        + ", ".join(f"{k} {1000 * v / big['images']:.1f}" for k, v in pt.items())
        + " (encode = the generator's next(): normalisation + paint; checks = the four QA checks (`SeriesQA`: "
        "the previous image kept as its window); write = write_cross_section with temp file + fsync). Bare lz4 write in part 2: "
        f"{1000 * bare['lz4_s'] / bare['images']:.1f} ms per image.\n"
    )
    slopes = memory_slopes(mem_img)
    if slopes:
        L.append(slopes + "\n")
    if mem_feat:
        L.append(
            "Features stage (`panel_features` over lookback + dates, fresh synthetic universe of 24, first k "
            "tickers):\n"
        )
        L.append("| tickers | dates | sessions | rows | table MB | wall s | RSS before MB | peak RSS MB | growth MB |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for m in mem_feat:
            L.append(
                f"| {m['tickers']} | {m['dates']} | {m['sessions']} | {m['rows']:,} | {fmt(m['table_mb'], 1)} | "
                f"{fmt(m['wall_s'], 1)} | {fmt(m['rss_before_mb'], 0)} | {fmt(m['peak_mb'], 0)} | "
                f"{fmt(m['peak_mb'] - m['rss_before_mb'], 0)} |"
            )
        L.append("")
    L.append("## 4. Scale: 500 synthetic tickers\n")
    sc = scale
    L.append(
        f"`universe_source('synthetic', n_tickers={sc['n']})` in a child process. members() cold: "
        f"{fmt(sc['members_s'], 2)} s ({sc['members_rows']} rows; most of it builds the shared single-stock world "
        f"once), RSS {fmt(sc['rss_start_mb'], 0)} -> {fmt(sc['after_members_rss_mb'], 0)} MB. With that world "
        f"built, rebuilding the universe itself (per-sector GARCH, listings): 24 tickers "
        f"{fmt(sc['members_warm_24_s'], 3)} s, 100 {fmt(sc['members_warm_100_s'], 3)} s, {sc['n']} "
        f"{fmt(sc['members_warm_' + str(sc['n']) + '_s'], 3)} s. One load_ticker ({sc['load_ticker']}, listed "
        f"throughout) over 2015-01-02..2024-12-31: {fmt(sc['load_s'], 2)} s ({sc['load_rows']['prices']} price "
        f"rows, {sc['load_rows']['texts']:,} texts, {sc['load_rows']['releases']:,} releases), peak "
        f"{fmt(sc['after_load_peak_mb'], 0)} MB.\n"
    )
    L.append(
        "| panel_features: tickers x 5 dates | wall s | CPU s | s per ticker | rows | RSS before MB | RSS after MB | peak MB |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for p in sc["pf"]:
        L.append(
            f"| {p['k']} x 5 | {fmt(p['wall_s'], 1)} | {fmt(p['cpu_s'], 1)} | {fmt(p['wall_s'] / p['k'], 3)} | "
            f"{p['rows']:,} | {fmt(p['rss_before_mb'], 0)} | {fmt(p['rss_after_mb'], 0)} | {fmt(p['peak_mb'], 0)} |"
        )
    L.append("")
    pt = sc.get("per_ticker")
    if pt:
        L.append(
            "Where one ticker's panel_features time goes at 5 dates (seconds per ticker, 20 listed tickers not yet "
            "cached): " + ", ".join(f"{k} {v:.3f}" for k, v in pt.items()) + f" (sum {sum(pt.values()):.3f}).\n"
        )
    L.append("## What this says\n")
    L.append(says(p1, bare, bf, mem_img, mem_feat, scale, per_ticker_year) + "\n")
    return "\n".join(L)


def says(p1: dict, bare: dict, bf: dict, mem_img: list, mem_feat: list, sc: dict, gb_ty: float) -> str:
    st = p1["stages"]
    wi, n = st["images"]["wall_s"], p1["images"]
    big = max(mem_img, key=lambda m: m["images"])
    pt = big["parts_s"]
    r_lz4, r_none = wi / bare["lz4_s"], wi / bare["none_s"]
    total = sum(s["wall_s"] for s in st.values())
    out = [
        f"* Time: features {100 * st['features']['wall_s'] / total:.0f} % and images "
        f"{100 * wi / total:.0f} % of the {total:.0f} s; labels and splits are negligible.",
        f"* Images vs the bare write of the same bytes: {r_lz4:.1f}x the bare lz4 write and {r_none:.1f}x the "
        f"bare uncompressed one. The issue-18 target (within 2x) is {'met' if r_lz4 <= 2 else 'NOT met'}: the "
        f"bare write costs {1000 * bare['lz4_s'] / n:.1f} ms per image, the stage {1000 * wi / n:.1f} ms. "
        f"In the library-level split (part 3, {big['images']} images): "
        + ", ".join(f"{k} {100 * v / sum(pt.values()):.0f} %" for k, v in pt.items())
        + " of the loop; the write itself (HDF5 + lz4 + temp file + fsync) is "
        f"{1000 * pt['write'] / big['images']:.1f} ms per image against the bare "
        f"{1000 * bare['lz4_s'] / n:.1f} ms ({pt['write'] / big['images'] / (bare['lz4_s'] / n):.1f}x), encode + "
        f"write {(pt['encode'] + pt['write']) / big['images'] / (bare['lz4_s'] / n):.1f}x, and the QA checks alone "
        f"{pt['checks'] / big['images'] / (bare['lz4_s'] / n):.1f}x. The library loop is "
        f"{1000 * sum(pt.values()) / big['images']:.1f} ms per image against the Dagster stage's "
        f"{1000 * wi / n:.1f} ms"
        + (
            f": Dagster, loading the lookback's feature partitions and the staged commit add "
            f"{100 * (wi / n) / (sum(pt.values()) / big['images']) - 100:.0f} %."
            if wi / n > sum(pt.values()) / big["images"]
            else ": Dagster, the feature partitions' loading and the staged commit cost less than this VM's "
            "run-to-run noise (the library loop, in a child process on fewer dates, was no faster)."
        ),
        f"* Features: Dagster {st['features']['wall_s'] / bf['wall_s']:.2f}x the bare `panel_features` call; "
        f"{(st['features']['wall_s'] - bf['wall_s']) / st['features']['partitions'] * 1000:.0f} ms per "
        "partition of fixed overhead, of which the IO manager's one parquet file per output and partition is "
        f"the known part (~{bf['partition_writes']['features_atomic_ms'] + bf['partition_writes']['prices_like_atomic_ms']:.0f}"
        " ms per partition, part 2); one run each, so read the ratio as +-0.2.",
        f"* Disk: {gb_ty:.3f} GB per ticker-year of lz4 images, so {24 * gb_ty:.2f} GB for 24 tickers x 1 "
        f"year and {20 * 5 * gb_ty:.1f} GB for 20 tickers x 5 years (budgets 5 and 20 GB); tables are small.",
    ]
    why = {
        "images": "Flat in dates. Per ticker: its encode stream's own image buffer (3 MB, reused date to date), "
        "the previous window the continuity check keeps (a 3 MB image copy only after a failed spatial "
        "check), and its normaliser state.",
        "features": "panel_features builds one ticker at a time: tickers add their output rows and the synthetic "
        "source's per-ticker caches (bounded by lru_cache sizes; see the 500-ticker peak); dates add because "
        "one ticker's snapshots for every date (each with its trailing window) are held at once.",
    }
    for label, mem in (("images", mem_img), ("features", mem_feat)):
        sl = memory_slopes(mem)
        if sl:
            out.append(f"* Peak memory, {label} stage: {sl} {why[label]}")
    pf = sc["pf"]
    if pf:
        big = pf[-1]
        out.append(
            f"* {sc['n']} tickers: members() {sc['members_s']:.1f} s, load_ticker {sc['load_s']:.2f} s, "
            f"panel_features {big['k']} x 5 dates {big['wall_s']:.0f} s ({big['wall_s'] / big['k']:.3f} s per "
            f"ticker), peak {big['peak_mb']:.0f} MB."
            + (
                f" Per ticker {pf[0]['wall_s'] / pf[0]['k']:.3f} s at {pf[0]['k']} vs "
                f"{big['wall_s'] / big['k']:.3f} s at {big['k']}: linear in tickers (no quadratic term)."
                if len(pf) > 1
                else ""
            )
        )
    if mem_img and pf:
        tk = max(m["tickers"] for m in mem_img)
        ms = sorted((m for m in mem_img if m["dates"] == min(x["dates"] for x in mem_img)), key=lambda m: m["tickers"])
        per_tk = (ms[-1]["peak_mb"] - ms[0]["peak_mb"]) / max(ms[-1]["tickers"] - ms[0]["tickers"], 1)
        n_big = sc["n"]
        f_min = bf["wall_s"] / tk * n_big / 60
        i_min = wi / n * 252 * n_big / 60
        out.append(
            f"* Extrapolated, not measured: {n_big} tickers x 1 year on this VM, linearly from the rows above: "
            f"features ~{f_min:.0f} min (bare), images ~{i_min:.0f} min, {n_big * gb_ty:.1f} GB of images, "
            f"images-stage peak ~{(ms[-1]['peak_mb'] + per_tk * (n_big - ms[-1]['tickers'])) / 1024:.1f} GB "
            f"({per_tk:.1f} MB per ticker). Nothing measured here grows faster than linearly in tickers."
        )
    return "\n".join(out)


def memory_slopes(mem: list) -> str:
    """Per-ticker growth from cells with equal dates, per-date growth from cells with equal tickers."""
    out = []
    by_dates: dict[int, list] = {}
    by_tk: dict[int, list] = {}
    for m in mem:
        by_dates.setdefault(m["dates"], []).append(m)
        by_tk.setdefault(m["tickers"], []).append(m)
    for d, ms in sorted(by_dates.items()):
        if len(ms) >= 2:
            ms = sorted(ms, key=lambda m: m["tickers"])
            a, b = ms[0], ms[-1]
            s = (b["peak_mb"] - a["peak_mb"]) / (b["tickers"] - a["tickers"])
            g = ((b["peak_mb"] - b["rss_before_mb"]) - (a["peak_mb"] - a["rss_before_mb"])) / (
                b["tickers"] - a["tickers"]
            )
            out.append(
                f"Tickers ({a['tickers']} -> {b['tickers']}, {d} dates): peak +{s:.1f} MB per ticker "
                f"(stage growth +{g:.1f} MB per ticker)."
            )
    for k, ms in sorted(by_tk.items()):
        if len(ms) >= 2:
            ms = sorted(ms, key=lambda m: m["dates"])
            a, b = ms[0], ms[-1]
            s = (b["peak_mb"] - a["peak_mb"]) / (b["dates"] - a["dates"])
            out.append(
                f"Dates ({a['dates']} -> {b['dates']}, {k} tickers): peak {s:+.2f} MB per date "
                f"(total {b['peak_mb'] - a['peak_mb']:+.0f} MB)."
            )
    return " ".join(out)


# --------------------------------------------------------------------------------------------- #
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a quarter instead of a year, smaller cells, 50 of 500")
    ap.add_argument("--tickers", type=int, default=None, help="default 24 (8 with --quick)")
    ap.add_argument("--start", default="2024-01-02")
    ap.add_argument("--end", default=None, help="default 2024-12-31 (2024-03-28 with --quick)")
    ap.add_argument("--horizon", type=int, default=5, help="universe_splits horizon (the asset's default)")
    ap.add_argument("--scale-tickers", type=int, default=500)
    ap.add_argument("--skip-features-memory", action="store_true")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir, removed)")
    ap.add_argument("--out", type=Path, default=HERE / "universe.md")
    ap.add_argument("--render", type=Path, default=None, help="only re-render the markdown from a saved .json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--summary-json", action="store_true", help="also print one SUMMARY {json} line")
    args = ap.parse_args()
    if args.render:
        raw = json.loads(args.render.read_text(encoding="utf-8"))
        for k, v in raw["args"].items():
            setattr(args, k, v)
        write_report(args, raw)
        if args.summary_json:
            emit(summary_rows(raw))
        return
    if args.child:
        kind, *rest = args.child
        if kind == "images":
            r = child_images(rest[0], int(rest[1]), rest[2], int(rest[3]))
        elif kind == "features":
            r = child_features(int(rest[0]), rest[1], int(rest[2]))
        else:
            r = child_scale(int(rest[0]), [int(x) for x in rest[1:]])
        print(json.dumps(r))
        return
    from finnex_assets.assets.images import LOOKBACK as ASSET_LOOKBACK
    from finnex_assets.assets.images import NORM as ASSET_NORM

    assert (ASSET_LOOKBACK, ASSET_NORM) == (LOOKBACK, NORM), (ASSET_LOOKBACK, ASSET_NORM)
    args.tickers = args.tickers or (8 if args.quick else 24)
    args.end = args.end or ("2024-03-28" if args.quick else "2024-12-31")
    start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    t_all = time.perf_counter()
    tmp = args.dir or Path(tempfile.mkdtemp(prefix="bench_universe_"))
    tmp.mkdir(parents=True, exist_ok=True)
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "machine": f"{platform.machine()}, Python {platform.python_version()}, polars {pl.__version__}, h5py {h5py.__version__}",
    }
    try:
        print(f"part 1: Dagster stages, {args.tickers} tickers, {start}..{end} into {tmp}", flush=True)
        p1 = dagster_stages(tmp, start, end, args.tickers, args.horizon)
        print(f"  {p1['images']} images, {p1['h5_bytes'] / 1e9:.3f} GB", flush=True)
        print("part 2: bare write + bare features", flush=True)
        bare = bare_write(Path(p1["root"]), tmp / "bare", start, end)
        print(f"  bare lz4 {bare['lz4_s']:.1f} s, none {bare['none_s']:.1f} s", flush=True)
        bf = bare_features(start, end, args.tickers)
        print(f"  bare panel_features {bf['wall_s']:.1f} s", flush=True)
        bf["partition_writes"] = partition_writes(tmp)
        print(f"  partition writes {bf['partition_writes']}", flush=True)
        print("part 3: memory cells", flush=True)
        short, long_ = (10, 30) if args.quick else (21, 63)
        cells = (
            [(4, short), (8, short), (8, long_)] if args.quick else [(6, short), (12, short), (24, short), (24, long_)]
        )
        feats = str(tmp / "features_all.parquet")
        mem_img = []
        for k, nd in cells:
            mem_img.append(run_child(["--child", "images", feats, str(k), str(start), str(nd)]))
            print(f"  images {k} x {nd}: peak {mem_img[-1]['peak_mb']:.0f} MB", flush=True)
        mem_feat = []
        if not args.skip_features_memory:
            fcells = [(4, short), (8, short), (8, long_)] if args.quick else [(6, short), (12, short), (12, long_)]
            for k, nd in fcells:
                mem_feat.append(run_child(["--child", "features", str(k), str(start), str(nd)]))
                print(f"  features {k} x {nd}: peak {mem_feat[-1]['peak_mb']:.0f} MB", flush=True)
        print("part 4: scale", flush=True)
        ks = [50] if args.quick else [50, args.scale_tickers]
        scale = run_child(["--child", "scale", str(args.scale_tickers), *map(str, ks)], timeout=1800)
        print(f"  {scale}", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["total_s"] = time.perf_counter() - t_all
    raw = {
        "meta": meta,
        "part1": p1,
        "bare": bare,
        "bare_features": bf,
        "mem_images": mem_img,
        "mem_features": mem_feat,
        "scale": scale,
        "args": {"quick": args.quick, "tickers": args.tickers, "start": args.start, "end": args.end},
    }
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    write_report(args, raw)
    if args.summary_json:
        emit(summary_rows(raw))


def summary_rows(raw: dict) -> list[dict]:
    """Part 1's Dagster stages against part 2's bare baselines, as ``_summary`` rows."""
    p1, bare, bf, a = raw["part1"], raw["bare"], raw["bare_features"], raw["args"]
    st = p1["stages"]
    tk = f"{a['tickers']} tickers"
    span = f"{a['start']}..{a['end']}"
    slower = "x the time of the baseline (higher = slower)"
    imgs = f"{p1['images']} images ({tk} x {p1['image_dates']} dates)"
    rows = [
        row(
            "universe_prices + universe_features (Dagster)",
            f"{tk} x {st['features']['partitions']} sessions (lookback + {span}), {bf['rows']:,} rows",
            st["features"]["wall_s"],
            "bare panel_features call",
            bf["wall_s"],
            st["features"]["wall_s"] / bf["wall_s"],
            slower,
        ),
        row(
            "universe_images (Dagster)",
            imgs,
            st["images"]["wall_s"],
            "bare h5py lz4 write of the same images",
            bare["lz4_s"],
            st["images"]["wall_s"] / bare["lz4_s"],
            slower,
        ),
        row(
            "universe_images (Dagster)",
            imgs,
            st["images"]["wall_s"],
            "bare h5py uncompressed write of the same images",
            bare["none_s"],
            st["images"]["wall_s"] / bare["none_s"],
            slower,
        ),
    ]
    for name, asset in (("labels", "universe_labels"), ("splits", "universe_splits")):
        work = (
            f"{tk}, {st[name]['partitions']} partition(s), {p1['rows'][name if name == 'labels' else 'samples']:,} rows"
        )
        rows.append(row(f"{asset} (Dagster)", work, st[name]["wall_s"], None, None, None, "no baseline"))
    return rows


END_TO_END = "## Packaged panel end to end"


def write_report(args, raw: dict) -> None:
    keys = ("meta", "part1", "bare", "bare_features", "mem_images", "mem_features", "scale")
    text = render(args, *(raw[k] for k in keys))
    # the hand-recorded end-to-end demo run at the end of the file is not this benchmark's: keep it
    if args.out.exists():
        old = args.out.read_text(encoding="utf-8")
        if END_TO_END in old:
            text = text.rstrip("\n") + "\n\n" + old[old.index(END_TO_END) :]
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
