"""Patch extraction throughput against a bare numpy copy of the same bytes, in the same run.

    .venv/bin/python benchmarks/bench_patches.py [--n 32] [--repeat 5] [--write] [--quick] [--summary-json]

1. *baseline*: ``np.copyto`` of each 512x512x3 float32 image into a preallocated contiguous
   buffer (a plain memcpy of 3 MiB);
2. *extract*: ``extract_patches(image, out=buffer)`` into a preallocated [256, 32, 32, 3] buffer
   (the one strided copy the patch dataset makes per image);
3. *inverse*: ``patches_to_image`` back into an image buffer;
4. with ``--write``: extract + ``write_shard`` (gzip-1, one chunk, atomic, labels) per image
   against a bare ``h5py`` gzip-1 write of the same image, on piecewise-constant images like
   the real ones (random pixels would only measure gzip failing to compress).

Extraction and its inverse run in paired passes (baseline, extract, inverse back to back, at
least 15 pairs); each ratio is the median of the per-pass ratios baseline / ours (target >= 0.5
for extraction), each time a median. The write comparison is the best of ``--repeat // 2``
passes. No assertions on time. ``--quick``: 8 images, 15 pairs, writes best of 1. ``--summary-json`` also prints one ``SUMMARY {json}`` line (see ``_summary.py``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _summary import emit, row  # noqa: E402

from finnex_ml.patches import IMAGE_SHAPE, PATCHES_SHAPE, PatchShard, extract_patches, patches_to_image, write_shard  # noqa: E402


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best_of(repeat: int, fn) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="images per pass")
    ap.add_argument("--repeat", type=int, default=5, help="passes; the best is reported")
    ap.add_argument("--write", action="store_true", help="also time extract + shard write to a temp dir")
    ap.add_argument("--quick", action="store_true", help="8 images, best of 3")
    ap.add_argument("--summary-json", action="store_true", help="also print one SUMMARY {json} line")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeat = 8, 3

    rng = np.random.default_rng(0)
    images = [rng.random(IMAGE_SHAPE, dtype=np.float32) for _ in range(args.n)]
    copies = [np.empty(IMAGE_SHAPE, dtype=np.float32) for _ in range(args.n)]
    patch_bufs = [np.empty(PATCHES_SHAPE, dtype=np.float32) for _ in range(args.n)]
    gb = args.n * images[0].nbytes / 1e9

    def baseline() -> None:
        for src, dst in zip(images, copies):
            np.copyto(dst, src)

    def extract() -> None:
        for src, dst in zip(images, patch_bufs):
            extract_patches(src, out=dst)

    def inverse() -> None:
        for src, dst in zip(patch_bufs, copies):
            patches_to_image(src, out=dst)

    baseline()  # touch every page once so no pass pays for first-touch faults
    extract()
    inverse()
    # Paired passes: baseline, extract and inverse back to back, the ratio taken per pass and its
    # median reported. On this shared 2-core VM a best-of over separate blocks of passes mostly
    # measured which block another user's job landed in (0.40x one run, 0.64x the next, the
    # code unchanged); a paired median is what bench_panel_store.py reports too.
    pairs = max(args.repeat, 15)
    base_t, ext_t, inv_t = [], [], []
    for _ in range(pairs):
        base_t.append(timed(baseline))
        ext_t.append(timed(extract))
        inv_t.append(timed(inverse))
    for i in range(args.n):  # the timed code did the real thing
        assert np.array_equal(copies[i], images[i])
    t_base, t_ext, t_inv = (float(np.median(t)) for t in (base_t, ext_t, inv_t))
    r_ext = float(np.median(np.array(base_t) / np.array(ext_t)))
    r_inv = float(np.median(np.array(base_t) / np.array(inv_t)))
    print(f"images: {args.n} x 512x512x3 float32 = {gb * 1e3:.1f} MB per pass, medians of {pairs} paired passes")
    print(f"baseline np.copyto         {gb / t_base:7.2f} GB/s")
    print(f"extract_patches            {gb / t_ext:7.2f} GB/s   paired ratio {r_ext:.2f} (target >= 0.5)")
    print(f"patches_to_image           {gb / t_inv:7.2f} GB/s   paired ratio {r_inv:.2f}")
    work = f"{args.n} images 512x512x3 float32 ({gb * 1e3:.0f} MB), medians of {pairs} paired passes"
    copy_meaning = "x of a bare np.copyto's throughput (paired per-pass median; higher = faster)"
    rows = [
        row("extract_patches", work, t_ext, "bare np.copyto", t_base, r_ext, copy_meaning),
        row("patches_to_image", work, t_inv, "bare np.copyto", t_base, r_inv, copy_meaning),
    ]

    if args.write:
        tmp = Path(tempfile.mkdtemp(prefix="bench_patches_"))
        try:
            days = [date(2024, 1, 1) + timedelta(days=i) for i in range(args.n)]

            # 8x8-pixel blocks of random values: compresses like a real mega-image (bands of repeats)
            blocky = [
                np.ascontiguousarray(np.repeat(np.repeat(rng.random((64, 64, 3), dtype=np.float32), 8, 0), 8, 1))
                for _ in range(args.n)
            ]

            def bare() -> None:
                for i, src in enumerate(blocky):
                    with h5py.File(tmp / f"bare_{i}.h5", "w") as f:
                        f.create_dataset("image", data=src, chunks=(32, 512, 3), compression="gzip", compression_opts=1)

            def shards() -> None:
                buf = np.empty(PATCHES_SHAPE, dtype=np.float32)
                for d, src in zip(days, blocky):
                    extract_patches(src, out=buf)
                    write_shard(
                        tmp / "shards", PatchShard(d, buf, (1, 5), np.zeros(2, np.int8), np.zeros(2), "0" * 64, "")
                    )

            t_bare = best_of(max(1, args.repeat // 2), bare)
            t_shard = best_of(max(1, args.repeat // 2), shards)
            mb = gb * 1e3
            print(f"bare h5py gzip-1 write     {mb / t_bare:7.1f} MB/s")
            print(f"extract + write_shard      {mb / t_shard:7.1f} MB/s   ratio {t_bare / t_shard:.2f}")
            rows.append(
                row(
                    "extract_patches + write_shard",
                    f"{args.n} blocky images ({mb:.0f} MB), best of {max(1, args.repeat // 2)}",
                    t_shard,
                    "bare h5py gzip-1 write",
                    t_bare,
                    t_bare / t_shard,
                    "x of a bare h5py gzip-1 write's throughput (higher = faster)",
                )
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.summary_json:
        emit(rows)


if __name__ == "__main__":
    main()
