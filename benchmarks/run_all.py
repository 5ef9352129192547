"""Run every benchmark, one child process at a time, and write ``benchmarks/results.md``.

    PYTHONPATH=. .venv/bin/python benchmarks/run_all.py                 # quick scale (~10 min on 2 cores)
    PYTHONPATH=. .venv/bin/python benchmarks/run_all.py --full          # each benchmark's default scale
    PYTHONPATH=. .venv/bin/python benchmarks/run_all.py --only features patches

Each benchmark runs as its own child process with ``--summary-json`` (and ``--quick`` unless
``--full``), sequentially so they do not compete for the cores. From each child: the rows of its
``SUMMARY {json}`` line (stage, work, seconds, baseline, baseline seconds, ratio and what the ratio
means; every ratio is against a baseline measured in the same child run), its wall time, and its
peak RSS from ``os.wait4`` (that process's own ``ru_maxrss``, not ``RUSAGE_CHILDREN``'s max over all
children). Linux reports in it the larger of the process's peak and its waited-for children's, so
a benchmark that runs parts in subprocesses reports its largest single process; and exec carries
the spawning process's peak into the child's, which is why this runner imports nothing heavy (its
own peak, the floor of every value, is printed in the header).

``results.md`` is written atomically (temp file + ``os.replace``). A benchmark that fails (non-zero
exit, no SUMMARY line, or timeout) gets a FAILED row with the last lines of its stderr; the others
still run and the runner exits 1 at the end. Benchmarks that write their own report
(``panel_store.md``, ``universe.md``) are pointed at a temp folder, so the committed reports are
not overwritten by a run_all pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PREFIX = "SUMMARY "  # as in benchmarks/_summary.py (not imported: keep this process small)
STDERR_LINES = 8


@dataclass(frozen=True)
class Bench:
    """One benchmark: a script run as ``python script [*common] [*quick | *full] --summary-json``.
    ``{tmp}`` in an argument is replaced by a scratch folder for that run."""

    name: str
    script: Path
    quick: tuple[str, ...] = ("--quick",)
    full: tuple[str, ...] = ()
    common: tuple[str, ...] = ()
    timeout_s: float | None = 1800.0


BENCHMARKS: list[Bench] = [
    Bench("features", HERE / "bench_features.py"),
    Bench("ingestion", HERE / "bench_ingestion.py"),
    Bench("patches", HERE / "bench_patches.py", common=("--write",)),
    Bench("mega_images", HERE / "bench_mega_images.py"),
    Bench("panel_store", HERE / "bench_panel_store.py", common=("--out", "{tmp}/panel_store.md")),
    Bench("training", HERE / "bench_training.py"),
    Bench("image_training", HERE / "bench_image_training.py"),
    Bench("refit", HERE / "bench_refit.py"),
    Bench("interpret", HERE / "bench_interpret.py"),
    Bench("universe", HERE / "bench_universe.py", common=("--out", "{tmp}/universe.md"), timeout_s=3600.0),
]


@dataclass
class Result:
    bench: Bench
    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_mb: float
    rows: list[dict] = field(default_factory=list)
    error: str | None = None  # set when the benchmark failed

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_summary(stdout: str) -> list[dict] | None:
    """The rows of the last ``SUMMARY {json}`` line, or None when there is none."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(PREFIX):
            rows = json.loads(line[len(PREFIX) :])
            return rows if isinstance(rows, list) else [rows]
    return None


def tail(text: str, n: int = STDERR_LINES) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:])


def spawn_and_wait(argv: list[str], env: dict, stdout: Path, stderr: Path, timeout_s: float | None):
    """Run ``argv`` with stdout/stderr to files; return (exit code, wall s, peak RSS MB, timed out).
    The peak is ``ru_maxrss`` (KiB on Linux) of this one child from ``os.wait4``."""
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
        timed_out = False
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done == pid:
                break
            if timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                _, status, usage = os.wait4(pid, 0)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
    return os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024.0, timed_out


def run_one(bench: Bench, full: bool, scratch: Path) -> Result:
    scratch.mkdir(parents=True, exist_ok=True)
    args = [a.replace("{tmp}", str(scratch)) for a in (*bench.common, *(bench.full if full else bench.quick))]
    argv = [sys.executable, str(bench.script), *args, "--summary-json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    out, err = scratch / "stdout.txt", scratch / "stderr.txt"
    rc, wall, peak, timed_out = spawn_and_wait(argv, env, out, err, bench.timeout_s)
    stdout = out.read_text(encoding="utf-8", errors="replace")
    stderr = err.read_text(encoding="utf-8", errors="replace")
    res = Result(bench, argv, rc, wall, peak)
    try:
        rows = parse_summary(stdout)
    except ValueError as exc:
        rows, stderr = None, f"{stderr}\nbad SUMMARY line: {exc}"
    if timed_out:
        res.error = f"timed out after {bench.timeout_s:.0f} s\n{tail(stderr)}"
    elif rc != 0:
        res.error = f"exit status {rc}\n{tail(stderr)}"
    elif not rows:
        res.error = f"no SUMMARY line on stdout\n{tail(stderr) or tail(stdout)}"
    else:
        res.rows = rows
    return res


# --------------------------------------------------------------------------------------------- #
# results.md
# --------------------------------------------------------------------------------------------- #
def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": {d: version(d) for d in ("torch", "polars", "h5py", "numpy", "dagster")},
        "load": load,
    }


def cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("`", "'").replace("\n", "<br>")


def num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    if abs(x) >= 0.1 or x == 0:
        return f"{x:.3f}"
    return f"{x:.2g}"


def ratio_text(row: dict) -> str:
    r, meaning = row.get("ratio"), row.get("ratio_meaning") or ""
    if r is None:
        return cell(meaning or "-")
    sep = "" if meaning.startswith("x ") else " "
    return cell(f"**{num(r)}**{sep}{meaning}")


SCALES = {"quick": "each benchmark with --quick", "full": "each benchmark's default scale"}


def shown_path(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else path


def render(results: list[Result], meta: dict) -> str:
    m = meta["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    failed = [r.bench.name for r in results if not r.ok]
    lines = [
        "# Benchmarks: all stages in one run",
        "",
        f"Written by `benchmarks/run_all.py` on {meta['when']}; the record of speed and memory (tests never "
        "assert on time).",
        "",
        f"* Command: `{meta['command']}`",
        f"* Scale: **{meta['scale']}** ({SCALES[meta['scale']]}); "
        f"benchmarks run one at a time, {meta['total_s']:.0f} s in all"
        + (f"; FAILED: {', '.join(failed)}" if failed else ""),
        f"* Machine: {m['cpus']} CPU core(s), {m['platform']} ({m['machine']}), Python {m['python']}; {versions}; "
        f"load average at start {m['load'][0]:.2f} / {m['load'][1]:.2f} / {m['load'][2]:.2f} (other users' jobs "
        "move absolute times; read the ratios, each measured against its baseline in the same process run)",
        f"* Peak RSS: the benchmark process's `ru_maxrss` from `os.wait4` (the larger of its own peak and its "
        f"waited-for subprocesses', i.e. its largest single process; exec carries the runner's own peak, "
        f"{meta['runner_peak_mb']:.0f} MB, into every value as a floor)",
        "",
        "| benchmark | stage | work | time (s) | baseline (time s) | ratio | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        name = cell(r.bench.name)
        if not r.ok:
            lines.append(f"| {name} | **FAILED** | {cell(r.error)} | {num(r.wall_s)} | - | - | {r.peak_rss_mb:.0f} |")
            continue
        for row in r.rows:
            base = row.get("baseline")
            base_text = f"{cell(base)} ({num(row.get('baseline_seconds'))})" if base else "-"
            lines.append(
                f"| {name} | {cell(row.get('stage', '?'))} | {cell(row.get('work', ''))} | "
                f"{num(row.get('seconds'))} | {base_text} | {ratio_text(row)} | {r.peak_rss_mb:.0f} |"
            )
    lines += [
        "",
        "Per benchmark (wall time of the whole child process, including its untimed setup; `{tmp}` is a scratch "
        "folder, so the committed reports those benchmarks write are left alone):",
        "",
    ]
    for r in results:
        b = r.bench
        args = (*b.common, *(b.full if meta["scale"] == "full" else b.quick), "--summary-json")
        cmd = shlex.join(["python", shown_path(str(b.script)), *args])
        status = "ok" if r.ok else "FAILED"
        lines.append(f"* {r.bench.name}: {status}, {r.wall_s:.0f} s, peak RSS {r.peak_rss_mb:.0f} MB: `{cmd}`")
    lines.append("")
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------- #
def main(argv: list[str] | None = None, benchmarks: list[Bench] | None = None) -> int:
    benchmarks = BENCHMARKS if benchmarks is None else benchmarks
    names = [b.name for b in benchmarks]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="each benchmark's default scale (default: --quick)")
    ap.add_argument("--only", nargs="+", metavar="NAME", choices=names, help=f"a subset of: {', '.join(names)}")
    ap.add_argument("--out", type=Path, default=HERE / "results.md")
    args = ap.parse_args(argv)
    chosen = [b for b in benchmarks if not args.only or b.name in args.only]
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)]),
        "scale": "full" if args.full else "quick",
        "machine": machine_info(),
    }
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="run_all_") as tmp:
        for i, bench in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] {bench.name} ...", end=" ", file=sys.stderr, flush=True)
            res = run_one(bench, args.full, Path(tmp) / bench.name)
            results.append(res)
            status = f"{len(res.rows)} rows" if res.ok else "FAILED: " + res.error.splitlines()[0]
            print(f"{res.wall_s:.0f} s, peak RSS {res.peak_rss_mb:.0f} MB, {status}", file=sys.stderr, flush=True)
    meta["total_s"] = time.perf_counter() - t0
    meta["runner_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    write_atomic(args.out, render(results, meta))
    print(f"wrote {args.out} ({meta['total_s']:.0f} s)", file=sys.stderr)
    failed = [r.bench.name for r in results if not r.ok]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
