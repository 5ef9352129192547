"""Mega-image encoding and HDF5 write throughput, against a bare numpy + h5py write.

    .venv/bin/python benchmarks/bench_mega_images.py [--n 100] [--compression none lzf gzip]

Steps, all in one run so the ratios compare like with like:

1. build a synthetic feature table with enough history for ``--n`` image dates (not timed);
2. *baseline*: write the same N images (already in memory as numpy arrays) with plain h5py,
   one contiguous uncompressed dataset per file, no temp file, no metadata;
3. encode only: ``encode_dates`` (trailing normalisation + encode), images/s;
4. write only: ``write_encoded`` per compression (chunked, atomic, metadata), MB/s of image bytes
   and bytes on disk;
5. end to end, date by date: encode + write, never holding more than one image, with peak RSS
   before and after to show memory stays bounded.

Prints rates and ratios (ours / baseline); no assertions on time.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finnex_ml import calendar  # noqa: E402
from finnex_ml.data.synthetic import SyntheticSource  # noqa: E402
from finnex_ml.encoding import (  # noqa: E402
    DEFAULT_SESSIONS, NormConfig, build_layout, encode_dates, history_needed, write_encoded, write_spec,
)
from finnex_ml.pipeline import daily_features_from_snapshots, modality_snapshots  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100, help="images (dates) to encode and write")
    ap.add_argument("--compression", nargs="+", default=["none", "lzf", "gzip"],
                    help="gzip is the store's default (level 1)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()

    cfg = NormConfig()
    t0 = time.perf_counter()
    rows = DEFAULT_SESSIONS + cfg.window - 1 + args.n - 1  # history_needed() + the other n-1 dates
    sessions = calendar.sessions("2019-01-01", "2030-12-31")[:rows]
    snaps, _ = modality_snapshots(SyntheticSource(7), sessions)
    table = daily_features_from_snapshots(snaps)
    spec = build_layout(table.columns)
    dates = table["date"].to_list()[-args.n:]
    assert table.height - args.n + 1 == history_needed(spec, cfg)
    print(f"table: {table.height} sessions x {spec.n_features} features, built in {time.perf_counter() - t0:.1f} s; "
          f"layout L={spec.sessions}, normalisation window {cfg.window}")
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="bench_mega_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        run(table, spec, cfg, dates, scratch, args.compression)
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def run(table, spec, cfg, dates, scratch: Path, compressions: list[str]) -> None:
    n = len(dates)
    mb_per_image = 512 * 512 * 3 * 4 / 2**20

    # 3. encode only (keeps one image at a time; the sample for the baseline is the last one)
    t = time.perf_counter()
    sample = None
    for item in encode_dates(table, dates, spec, cfg):
        sample = item.image
    enc_s = time.perf_counter() - t
    enc_rate = n / enc_s

    # 2. baseline: bare h5py write of the same bytes
    base_dir = scratch / "baseline"
    base_dir.mkdir()
    t = time.perf_counter()
    for i in range(n):
        with h5py.File(base_dir / f"{i}.h5", "w") as f:
            f.create_dataset("image", data=sample)
    base_s = time.perf_counter() - t
    base_rate, base_mbs = n / base_s, n * mb_per_image / base_s
    print(f"\nbaseline bare numpy+h5py write : {base_rate:8.1f} images/s  {base_mbs:8.1f} MB/s  "
          f"({dir_bytes(base_dir) / n / 2**20:.2f} MB/image on disk)")
    print(f"encode only (normalise+encode) : {enc_rate:8.1f} images/s  ratio vs baseline {enc_rate / base_rate:6.3f}")

    # 4. write only, per compression (re-encoding outside the timer would hold N images, so
    #    encode again and time only the write calls)
    for comp in compressions:
        root = scratch / f"store_{comp}"
        write_spec(root, spec, cfg)
        c = None if comp == "none" else comp
        write_s = 0.0
        for item in encode_dates(table, dates, spec, cfg):
            t = time.perf_counter()
            write_encoded(root, item, spec, cfg, compression=c)
            write_s += time.perf_counter() - t
        mbs = n * mb_per_image / write_s
        size = dir_bytes(root) / n / 2**20
        print(f"write_encoded compression={comp:5s}: {n / write_s:8.1f} images/s  {mbs:8.1f} MB/s  "
              f"ratio vs baseline {mbs / base_mbs:6.3f}  {size:.3f} MB/image on disk "
              f"({mb_per_image / size:.1f}x smaller)")

    # 5. end to end, date by date, bounded memory
    root = scratch / "e2e"
    write_spec(root, spec, cfg)
    peak_before, cur_before = peak_rss_mb(), current_rss_mb()
    t = time.perf_counter()
    for item in encode_dates(table, dates, spec, cfg):
        write_encoded(root, item, spec, cfg)
    e2e_s = time.perf_counter() - t
    peak_after, cur_after = peak_rss_mb(), current_rss_mb()
    print(f"end to end (default gzip-1)     : {n / e2e_s:8.1f} images/s  ratio vs baseline {n / e2e_s / base_rate:6.3f}")
    print(f"peak RSS before/after e2e       : {peak_before:.0f} MB -> {peak_after:.0f} MB "
          f"(+{peak_after - peak_before:.0f} MB; current {cur_before:.0f} -> {cur_after:.0f} MB); "
          f"all {n} images at once would be {n * mb_per_image:.0f} MB")


if __name__ == "__main__":
    main()
