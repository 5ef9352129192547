"""Mega-image stage throughput (encode + HDF5 write) against a bare numpy + h5py write.

    .venv/bin/python benchmarks/bench_mega_images.py [--n 100] [--compression none lzf gzip]
    .venv/bin/python benchmarks/bench_mega_images.py --n 40 200     # one child process per N
    .venv/bin/python benchmarks/bench_mega_images.py --quick [--summary-json]   # N=40, 2 repetitions

What is measured, all in one process so the ratios compare like with like:

* baseline: a bare numpy + h5py write of the same 3 MB images, one contiguous uncompressed
  dataset per file, no temp file, no metadata (the cost of putting the bytes in a file);
* WHOLE STAGE: ``for item in encode_dates(...): write_encoded(...)`` end to end, date by date with
  one image in memory at a time, exactly as ``MegaImageIOManager.handle_output`` runs it, per
  compression (none = the store default, lzf, gzip-1). Its ratio to the baseline is the issue's
  target (>= 0.5). Inside the same loop the time is split into encode (``next()`` on the
  generator: trailing normalisation, paint, hash, missing summary), reported as images/s against
  the baseline's images/s, and write (``write_encoded``: temp file, image, metadata, rename),
  reported as MB/s of image bytes against the baseline's MB/s;
* where one image's time goes: the same pieces re-timed one by one on the same dates;
* the cost of durability: the stage's writes with ``atomic_path``'s fsync of the file before
  the rename and of the folder after it (the default) against the same writes without, as a ratio;
* outside the stage, reported separately: the ``mega_images`` asset's first pass, which encodes
  every date and runs the QA checks, the channel/section statistics and the PNG preview per image
  before the IO manager's pass (the stage) encodes and writes. They are per-image diagnostics
  for the UI, not part of producing the stored images, so they are kept out of the stage ratio
  but timed and printed next to it (Dagster's own event/metadata overhead is not included).

Fairness: on a shared VM the page-cache write speed drifts by 2-5x within seconds, and memory the
page cache touches for the first time is slow. So 2N images are written and deleted untimed
first, blocks of ``--block`` images of the stage alternate with as many bare writes (which go
first alternates too), each run starts from an empty folder after ``os.sync``, the order of the
compressions rotates between the ``--repeat`` repetitions, and medians are compared. The bare write is a page-cache copy (GB/s), not disk speed;
our fixed per-image costs (normalisation, HDF5 metadata, atomic rename) weigh more against it
when the page cache is fast, so the ratio is lowest exactly when the machine is quiet.

Memory: peak RSS is read before and after the stage; with several ``--n`` each N runs in its own
process, so the summary shows whether the peak grows with N (it should not: one image at a time).
Prints only; no assertions on time. ``--summary-json`` (one N) also prints one ``SUMMARY {json}``
line: a list of rows (see ``_summary.py``), the default compression's whole stage first.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finnex_ml import calendar  # noqa: E402
from finnex_ml import paths as paths_mod  # noqa: E402
from finnex_ml.data.synthetic import SyntheticSource  # noqa: E402
from finnex_ml.encoding import (  # noqa: E402
    DEFAULT_SESSIONS,
    NormConfig,
    TrailingNormalizer,
    build_layout,
    channel_section_stats,
    check_feature_preservation,
    check_image,
    check_spatial_integrity,
    check_temporal_continuity,
    encode,
    encode_dates,
    feature_matrix,
    history_needed,
    store,  # noqa: E402
    write_encoded,
    write_preview,
    write_spec,
)
from finnex_ml.encoding import encoder as encoder_mod  # noqa: E402
from finnex_ml.encoding.normalize import _config_hash, params_hash_digests  # noqa: E402
from finnex_ml.encoding.store import DEFAULT_COMPRESSION  # noqa: E402
from finnex_ml.paths import atomic_path  # noqa: E402
from finnex_ml.pipeline import daily_features_from_snapshots, modality_snapshots  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _summary import emit, row  # noqa: E402

MB_PER_IMAGE = 512 * 512 * 3 * 4 / 2**20
IMAGES_PER_YEAR = 252


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return float("nan")


def dir_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.h5"))


def fresh(path: Path) -> Path:
    """Empty ``path`` and flush dirty pages, so a timed block never pays for the previous one."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()
    return path


def comp_arg(name: str) -> str | None:
    return None if name == "none" else name


def comp_name(c: str | None) -> str:
    return "none" if c is None else c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[100], help="images (dates); several N run one process each")
    ap.add_argument("--compression", nargs="+", default=["none", "lzf", "gzip"], choices=["none", "lzf", "gzip"])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; medians are reported")
    ap.add_argument("--block", type=int, default=10, help="images per alternating block of ours / bare writes")
    ap.add_argument("--no-asset", action="store_true", help="skip timing the asset's QA + preview pass")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="N=40, 2 repetitions (a smoke run)")
    ap.add_argument("--summary-json", action="store_true", help="also print one SUMMARY {json} line (one N)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = [40], 2
    if len(args.n) > 1:
        return run_children(args)

    cfg = NormConfig()
    n = args.n[0]
    t0 = time.perf_counter()
    rows = DEFAULT_SESSIONS + cfg.window - 1 + n - 1  # history_needed() + the other n-1 dates
    sessions = calendar.sessions("2019-01-01", "2035-12-31")[:rows]
    snaps, _ = modality_snapshots(SyntheticSource(7), sessions)
    table = daily_features_from_snapshots(snaps)
    del snaps  # the raw snapshots are not part of the stage; free them before measuring memory
    spec = build_layout(table.columns)
    dates = table["date"].to_list()[-n:]
    assert table.height - n + 1 == history_needed(spec, cfg)
    print(
        f"table: {table.height} sessions x {spec.n_features} features, built in {time.perf_counter() - t0:.1f} s "
        f"(not timed); layout L={spec.sessions}, normalisation window {cfg.window}; N={n} images"
    )
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="bench_mega_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        summary = run(
            table,
            spec,
            cfg,
            dates,
            scratch,
            [comp_arg(c) for c in args.compression],
            args.repeat,
            args.block,
            not args.no_asset,
        )
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    if args.summary_json:
        emit(summary["rows"])


def run_children(args: argparse.Namespace) -> None:
    rows = []
    for n in args.n:
        cmd = [
            sys.executable,
            __file__,
            "--n",
            str(n),
            "--repeat",
            str(args.repeat),
            "--block",
            str(args.block),
            "--summary-json",
            "--compression",
            *args.compression,
        ] + (["--no-asset"] if args.no_asset else [])
        if args.dir is not None:
            cmd += ["--dir", str(args.dir / f"n{n}")]
        print(f"\n===== N = {n} (own process) =====", flush=True)
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print("\n".join(line for line in out.splitlines() if not line.startswith("SUMMARY ")), flush=True)
        head = json.loads(next(line for line in out.splitlines() if line.startswith("SUMMARY "))[8:])[0]
        rows.append({**head, "stage_ratio": head["ratio"]})  # the default compression's whole stage
    print("\n===== memory and ratio against N =====")
    print(
        f"{'N':>5} {'stage ratio':>12} {'bare MB/s':>10} {'peak RSS before stage':>22} {'after':>8} "
        f"{'growth':>7} {'all N images at once':>21}"
    )
    for r in rows:
        print(
            f"{r['n']:>5} {r['stage_ratio']:>12.3f} {r['bare_mbs']:>10.0f} {r['peak_before']:>19.0f} MB "
            f"{r['peak_after']:>5.0f} MB {r['peak_after'] - r['peak_before']:>+4.0f} MB "
            f"{r['n'] * MB_PER_IMAGE:>18.0f} MB"
        )
    print(
        "(peak RSS before the stage grows with N only through the synthetic feature table built first; "
        "the stage itself adds ~0: one image at a time)"
    )


def run(table, spec, cfg, dates, scratch: Path, comps: list[str | None], repeat: int, block: int, asset: bool) -> dict:
    n = len(dates)
    default = DEFAULT_COMPRESSION if DEFAULT_COMPRESSION in comps else comps[0]

    # one-off costs per process (not per image): lazy imports, the layout's index maps, h5py
    # property lists. Timed here once and kept out of the per-image rates.
    t = time.perf_counter()
    encoder_mod._MAPS.clear()
    encoder_mod._maps(spec)
    maps_ms = (time.perf_counter() - t) * 1e3
    warm = fresh(scratch / "warm")
    write_spec(warm, spec, cfg)
    t = time.perf_counter()
    sample = next(iter(encode_dates(table, dates[:1], spec, cfg)))
    first_ms = (time.perf_counter() - t) * 1e3
    for c in comps:
        write_encoded(warm, sample, spec, cfg, compression=c)
    print(
        f"one-off per process: layout index maps {maps_ms:.0f} ms; first encode_dates call "
        f"(imports, feature matrix, {spec.sessions} normalised rows) {first_ms:.0f} ms"
    )

    times: dict[str, list[float]] = {}
    sizes: dict[str, float] = {}
    rss = {}

    def record(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)

    # first touch of page-cache memory is slow on this VM: put 2N images' worth through it once
    # (untimed), else whichever compression runs first gets a slower bare write, i.e. a flattering ratio
    prime = fresh(scratch / "prime")
    for i in range(2 * n):
        with h5py.File(prime / f"{i}.h5", "w") as f:
            f.create_dataset("image", data=sample.image)
    shutil.rmtree(prime)

    for rep in range(repeat):
        for c in comps[rep % len(comps) :] + comps[: rep % len(comps)]:  # rotate which goes first
            name = comp_name(c)
            out, base = fresh(scratch / "stage"), fresh(scratch / "baseline")
            write_spec(out, spec, cfg)
            if rep == 0 and c == default:
                rss["peak_before"], rss["cur_before"] = peak_rss_mb(), current_rss_mb()
            enc_s = write_s = bare_s = 0.0
            cpu = {"ours": 0.0, "bare": 0.0}
            stream = iter(encode_dates(table, dates, spec, cfg, reuse_buffer=True))  # as ImageBatch
            latest = sample.image
            # blocks of `block` images of ours and `block` bare writes alternate (in turn first),
            # so both see the same page-cache and CPU conditions, which drift a lot on a shared
            # machine, while each block keeps its own cache behaviour. The bare block writes the
            # latest encoded image (contents do not matter to an uncompressed write).
            for b0 in range(0, n, block):
                size = min(block, n - b0)
                for part in ("ours", "bare") if (b0 // block) % 2 == 0 else ("bare", "ours"):
                    c0 = time.process_time()
                    if part == "bare":
                        t = time.perf_counter()
                        for i in range(b0, b0 + size):
                            with h5py.File(base / f"{i}.h5", "w") as f:
                                f.create_dataset("image", data=latest)
                        bare_s += time.perf_counter() - t
                        cpu["bare"] += time.process_time() - c0
                        continue
                    for _ in range(size):
                        t = time.perf_counter()
                        item = next(stream)
                        t_enc = time.perf_counter()
                        write_encoded(out, item, spec, cfg, compression=c)
                        enc_s, write_s = enc_s + t_enc - t, write_s + time.perf_counter() - t_enc
                        latest = item.image
                    cpu["ours"] += time.process_time() - c0
            if rep == 0 and c == default:
                rss["peak_after"], rss["cur_after"] = peak_rss_mb(), current_rss_mb()
            record(f"encode:{name}", enc_s)
            record(f"write:{name}", write_s)
            record(f"stage:{name}", enc_s + write_s)
            record(f"bare:{name}", bare_s)
            record(f"cpu:{name}", cpu["ours"] / (enc_s + write_s))
            record(f"cpubare:{name}", cpu["bare"] / bare_s)
            sizes[name] = dir_bytes(out) / n / 2**20
    shutil.rmtree(scratch / "warm", ignore_errors=True)
    shutil.rmtree(scratch / "stage", ignore_errors=True)
    shutil.rmtree(scratch / "baseline", ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\nmedians of {repeat} repetitions; blocks of {block} images of ours alternate with {block} bare "
        f"numpy+h5py writes of the same image in the same loop; ratio = ours / bare"
    )
    print(f"{'':46s} {'images/s':>9} {'MB/s':>8} {'ms/image':>9} {'ratio':>7} {'MB/image':>9} {'GB/year':>8}")

    def line(label: str, seconds: float, ratio: float | None, size: float | None = None) -> None:
        r = f"{ratio:7.3f}" if ratio is not None else f"{'':7s}"
        z = f" {size:9.3f} {size * IMAGES_PER_YEAR / 1024:8.2f}" if size is not None else ""
        print(f"{label:46s} {n / seconds:9.1f} {n * MB_PER_IMAGE / seconds:8.1f} {seconds / n * 1e3:9.2f} {r}{z}")

    for c in comps:
        name = comp_name(c)
        tag = " (default)" if c == DEFAULT_COMPRESSION else ""
        b = med[f"bare:{name}"]
        print(
            f"-- compression={name}{tag}; bare-write MB/s per repetition: "
            + ", ".join(f"{n * MB_PER_IMAGE / s:.0f}" for s in times[f"bare:{name}"])
        )
        line("   bare numpy+h5py write of the same images", b, 1.0, MB_PER_IMAGE)
        line("   encode (images/s vs bare images/s)", med[f"encode:{name}"], b / med[f"encode:{name}"])
        line("   HDF5 write_encoded (MB/s vs bare MB/s)", med[f"write:{name}"], b / med[f"write:{name}"], sizes[name])
        line(f"   WHOLE STAGE encode+write, {name}", med[f"stage:{name}"], b / med[f"stage:{name}"], sizes[name])
        print(
            f"   (CPU time / wall time: stage {med[f'cpu:{name}']:.2f}, bare {med[f'cpubare:{name}']:.2f}; "
            f"below 1 = waiting for the CPU (other load) or the kernel)"
        )
    stage_s, base_s = med[f"stage:{comp_name(default)}"], med[f"bare:{comp_name(default)}"]
    stage_ratio = base_s / stage_s
    verdict = "meets" if stage_ratio >= 0.5 else "misses"
    print(
        f"\n=> WHOLE STAGE ({comp_name(default)}): {n / stage_s:.1f} images/s, {n * MB_PER_IMAGE / stage_s:.1f} MB/s "
        f"vs bare {n / base_s:.1f} images/s, {n * MB_PER_IMAGE / base_s:.1f} MB/s: ratio {stage_ratio:.3f} "
        f"({verdict} the 0.5 target)"
    )
    print(
        f"peak RSS around the stage: {rss['peak_before']:.0f} MB -> {rss['peak_after']:.0f} MB "
        f"(+{rss['peak_after'] - rss['peak_before']:.0f} MB; current {rss['cur_before']:.0f} -> "
        f"{rss['cur_after']:.0f} MB); all {n} images at once would be {n * MB_PER_IMAGE:.0f} MB"
    )

    where_time_goes(
        table,
        spec,
        cfg,
        dates,
        scratch,
        base_s / n,
        med[f"encode:{comp_name(default)}"] / n,
        med[f"write:{comp_name(default)}"] / n,
        stage_s / n,
        default,
    )
    on, off = fsync_cost(table, spec, cfg, dates, scratch, default, repeat, block)
    work = f"{n} images x {MB_PER_IMAGE:.0f} MB ({spec.sessions} sessions x {spec.n_features} features), median of {repeat}"
    bare = "bare numpy+h5py write of the same images"
    faster = "x of the bare write's throughput (higher = faster)"
    rows = [
        row(
            f"WHOLE STAGE encode+write, {comp_name(default)} (default)",
            work,
            stage_s,
            bare,
            base_s,
            stage_ratio,
            faster,
            n=n,
            bare_mbs=n * MB_PER_IMAGE / base_s,
            **rss,
        )
    ]
    for c in comps:
        name = comp_name(c)
        b = med[f"bare:{name}"]
        if c != default:
            s = med[f"stage:{name}"]
            rows.append(row(f"WHOLE STAGE encode+write, {name}", work, s, bare, b, b / s, faster))
        e, w = med[f"encode:{name}"], med[f"write:{name}"]
        rows.append(
            row(f"encode ({name} run)", work, e, bare, b, b / e, "x of the bare write's images/s (higher = faster)")
        )
        rows.append(
            row(f"write_encoded, {name}", work, w, bare, b, b / w, "x of the bare write's MB/s (higher = faster)")
        )
    rows.append(
        row(
            f"write_encoded with fsync (durable), {comp_name(default)}",
            work,
            on,
            "the same writes without fsync",
            off,
            off / on,
            "x of the non-durable writes' speed (higher = faster)",
        )
    )
    if asset:
        total = asset_pass(table, spec, cfg, dates, scratch, base_s, stage_s)
        rows.append(
            row(
                "mega_images asset end to end (QA + preview pass + stage)",
                work,
                total,
                bare,
                base_s,
                base_s / total,
                faster,
            )
        )
    return {"n": n, "stage_ratio": stage_ratio, "bare_mbs": n * MB_PER_IMAGE / base_s, **rss, "rows": rows}


def fsync_cost(table, spec, cfg, dates, scratch: Path, comp, repeat: int, block: int) -> tuple[float, float]:
    """The cost of durability: ``write_encoded`` with ``atomic_path``'s fsync of file and folder
    (the default) against the same writes without it, on the same images, in alternating blocks
    (which goes first alternates too), medians of ``repeat`` repetitions."""
    n = len(dates)
    times: dict[bool, list[float]] = {True: [], False: []}
    try:
        for rep in range(repeat):
            out = {True: fresh(scratch / "durable"), False: fresh(scratch / "plain")}
            for d in out.values():
                write_spec(d, spec, cfg)
            spent = {True: 0.0, False: 0.0}
            stream = iter(encode_dates(table, dates, spec, cfg, reuse_buffer=True))
            for b0 in range(0, n, block):
                # the stream reuses its buffers: keep copies so both writes get the same image
                images = [
                    it._replace(image=it.image.copy(), missing=it.missing.copy(), window=it.window.copy())
                    for it in (next(stream) for _ in range(min(block, n - b0)))
                ]
                order = (True, False) if (b0 // block + rep) % 2 == 0 else (False, True)
                for durable in order:
                    paths_mod.DURABLE = durable
                    t = time.perf_counter()
                    for it in images:
                        write_encoded(out[durable], it, spec, cfg, compression=comp)
                    spent[durable] += time.perf_counter() - t
            for durable in (True, False):
                times[durable].append(spent[durable])
    finally:
        paths_mod.DURABLE = True
        shutil.rmtree(scratch / "durable", ignore_errors=True)
        shutil.rmtree(scratch / "plain", ignore_errors=True)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(
        f"\nfsync of file and folder around the rename (compression={comp_name(comp)}), write only, medians of "
        f"{repeat}: {on / n * 1e3:.2f} ms/image with, {off / n * 1e3:.2f} without: ratio {off / on:.3f} "
        f"(durable writes at {off / on:.0%} of the speed; +{(on - off) / n * 1e3:.2f} ms/image)"
    )
    return on, off


def where_time_goes(table, spec, cfg, dates, scratch: Path, bare_s, encode_s, write_s, stage_s, comp) -> None:
    """Split of one image's stage time, re-timed piece by piece with the library's own parts
    (the same calls ``encode_dates`` and ``write_image`` make, in the same order)."""
    all_dates, mat = feature_matrix(table, spec)
    pos = {d: i for i, d in enumerate(all_dates)}
    norm = TrailingNormalizer(mat, cfg, all_dates, cache_rows=max(spec.sessions + 64, 128))
    root = fresh(scratch / "split")
    parts = dict.fromkeys(
        ["normalise", "paint", "hash", "path", "temp file", "open", "image", "metadata", "close", "rename"], 0.0
    )
    L = spec.sessions
    buffer = np.empty(spec.shape, dtype=np.float32)  # reuse_buffer=True, as the stage
    for d in dates:
        clock = [time.perf_counter()]

        def lap(key: str, clock: list[float] = clock) -> None:
            clock.append(time.perf_counter())
            parts[key] += clock[-1] - clock[-2]

        rows = [norm.row(j) for j in range(pos[d] - L + 1, pos[d] + 1)]
        values, missing = np.stack([r.values for r in rows]), np.stack([r.missing for r in rows])
        lap("normalise")
        image = encode(values, spec, out=buffer)
        lap("paint")
        params_hash_digests(cfg, [norm.digest(j) for j in range(pos[d] - L + 1, pos[d] + 1)], missing)
        lap("hash")
        final = store.image_path(root, d)
        lap("path")
        with atomic_path(final) as tmp:
            lap("temp file")
            f = h5py.File(tmp, "w", track_order=True)
            lap("open")
            store._write_payload(f, image, comp, None)
            lap("image")
            store._write_metadata(
                f,
                {
                    "date": d.isoformat(),
                    "spec_hash": spec.spec_hash(),
                    "normalization_hash": _config_hash(cfg),
                    "normalization_params_hash": "x" * 64,
                    "feature_count": spec.n_features,
                    "sessions": L,
                    "missing_cells": 0,
                    "code_version": "x",
                    "format_version": 1,
                },
                missing,
                rows[-1].center,
                rows[-1].scale,
                compress_missing=comp is not None,
            )
            lap("metadata")
            f.close()
            lap("close")
        lap("rename")
    shutil.rmtree(root, ignore_errors=True)
    ms = 1e3 / len(dates)
    p = {k: v * ms for k, v in parts.items()}
    enc_rest = max(encode_s * 1e3 - p["normalise"] - p["paint"] - p["hash"], 0.0)  # pieces re-timed: noise
    print(f"\nwhere one image's stage time goes (compression={comp_name(comp)}), ms/image, pieces re-timed alone:")
    print(
        f"  encode {encode_s * 1e3:.2f}: trailing normalisation + stacking {p['normalise']:.2f} (includes the first "
        f"image's {L - 1} extra rows, amortised over N), paint {p['paint']:.2f}, params hash {p['hash']:.2f}, "
        f"rest (contiguity check, missing summary, generator) {enc_rest:.2f}"
    )
    print(
        f"  write  {write_s * 1e3:.2f}: image dataset {p['image']:.2f}"
        + (" (includes compression)" if comp is not None else " (the bytes the bare write writes)")
        + f", open {p['open']:.2f} + close {p['close']:.2f}, metadata datasets + 9 attributes {p['metadata']:.2f}, "
        f"path check {p['path']:.2f}, temp file {p['temp file']:.2f}, rename {p['rename']:.2f}"
    )
    print(
        f"  bare   {bare_s * 1e3:.2f} (open + one contiguous 3 MB dataset + close); a 0.5 ratio allows a stage of "
        f"{2 * bare_s * 1e3:.2f}, the stage took {stage_s * 1e3:.2f}"
    )


def asset_pass(table, spec, cfg, dates, scratch: Path, base_s: float, stage_s: float) -> float:
    """The mega_images asset's own pass before the IO manager's (which is the stage)."""
    root = fresh(scratch / "asset")
    parts = dict.fromkeys(
        [
            "encode",
            "check_image",
            "spatial_integrity",
            "feature_preservation",
            "temporal_continuity",
            "channel_section_stats",
            "preview_png",
        ],
        0.0,
    )
    prev = None
    t_all = time.perf_counter()
    it = iter(encode_dates(table, dates, spec, cfg))
    while True:
        t = time.perf_counter()
        item = next(it, None)
        parts["encode"] += time.perf_counter() - t
        if item is None:
            break
        key = item.date.isoformat()
        t = time.perf_counter()
        png = write_preview(root / "previews" / f"{key}.png", item.image, spec, title=key, step=2)
        base64.b64encode(png.read_bytes()).decode()
        parts["preview_png"] += time.perf_counter() - t
        for name, fn, fargs in (
            ("check_image", check_image, (item.image, spec)),
            ("spatial_integrity", check_spatial_integrity, (item.image, spec, item.window)),
            ("feature_preservation", check_feature_preservation, (item.image, spec, item.window)),
            ("temporal_continuity", check_temporal_continuity, (prev, item.image, spec)),
            ("channel_section_stats", channel_section_stats, (item.image, spec)),
        ):
            if prev is None and name == "temporal_continuity":
                continue
            t = time.perf_counter()
            fn(*fargs)
            parts[name] += time.perf_counter() - t
        prev = item.image
    pass1_s = time.perf_counter() - t_all
    n = len(dates)
    detail = ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in parts.items())
    print(
        f"\nNOT in the stage: the asset's first pass (encode again + QA + stats + preview), ms/image: {detail}; "
        f"total {pass1_s / n * 1e3:.2f}"
    )
    total = pass1_s + stage_s
    print(
        f"mega_images asset end to end (first pass + stage): {n / total:.1f} images/s, ratio vs bare "
        f"{base_s / total:.3f} (excluding Dagster's own event and metadata handling)"
    )
    shutil.rmtree(root, ignore_errors=True)
    return total


if __name__ == "__main__":
    main()
