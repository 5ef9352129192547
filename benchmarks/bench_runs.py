"""Dagster's per-run bookkeeping over many date partitions (issue 18: the packaged-panel demo spent
minutes creating its features run before the first step started).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_runs.py --partitions 500 2000
    PYTHONPATH=. .venv/bin/python benchmarks/bench_runs.py --partitions 500 --baseline-code /tmp/base

One run of a stand-in for ``universe_panel`` with no work in it: a multi-asset of two outputs on
the project's trading-date partitions (single-run backfill policy) with three blocking checks,
reporting each asset per partition and the checks, over the last N sessions to 2022-12-16. So
what is timed is only Dagster's bookkeeping: creating the run (its planned events, one per asset
and partition, and the checks' planned rows), the step's materialisation events (one per asset and
partition) and the run's other events, through the event log storage under test:

* ``stock``: Dagster's stock SQLite storage (a home with no ``instance_class``; what the packaged
  demo of 2026-12-03 07:57 ran on);
* ``finnex``: ``FinnexInstance`` (dagster_home/dagster.yaml) from this checkout;
* ``finnex@baseline``: the same from ``--baseline-code`` (an export of an earlier commit), so a
  change to the storage is measured against its predecessor in the same conditions.

Each configuration runs in its own child process (fresh ``DAGSTER_HOME``, imports done before the
clock starts). Per run: wall and CPU seconds of creating the run (``create_run_for_job``), of the
whole ``execute_in_process``, and the events stored; the child checks every partition of both
assets reads as materialised and each check has a row per partition, so a fast wrong storage
cannot pass. Shared 2-core VM: read ratios within one invocation. Prints only.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
END = "2022-12-16"  # the packaged panel's last image date


def child(kind: str, n: int) -> dict:
    import warnings

    warnings.filterwarnings("ignore")
    import dagster as dg

    from finnex_assets.partitions import trading_days
    from finnex_ml import calendar

    home = Path(os.environ["DAGSTER_HOME"])
    if kind == "finnex":
        (home / "dagster.yaml").write_text((REPO / "dagster_home" / "dagster.yaml").read_text())
    else:
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    keys = [d.isoformat() for d in calendar.sessions("2014-01-02", END)][-n:]
    checks = ("unique_ticker_date", "features_match_membership", "positive_close")

    @dg.multi_asset(
        outs={"prices": dg.AssetOut(is_required=False), "features": dg.AssetOut(is_required=False)},
        check_specs=[dg.AssetCheckSpec(c, asset="features", blocking=True) for c in checks],
        partitions_def=trading_days,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
    )
    def panel(context: dg.AssetExecutionContext):
        for c in checks:
            yield dg.AssetCheckResult(asset_key="features", check_name=c, passed=True)
        for name in ("prices", "features"):
            yield dg.MaterializeResult(asset_key=name, metadata={"rows": len(context.partition_keys)})

    instance = dg.DagsterInstance.get()
    instance.get_runs(limit=1)  # storage opened (and migrated) before the clock
    created = {}
    original = type(instance).create_run_for_job

    def timed(self, *a, **k):
        w, c = time.perf_counter(), time.process_time()
        try:
            return original(self, *a, **k)
        finally:
            created["wall"], created["cpu"] = time.perf_counter() - w, time.process_time() - c

    type(instance).create_run_for_job = timed
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    job = dg.Definitions(assets=[panel]).resolve_implicit_global_asset_job_def()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    w, c = time.perf_counter(), time.process_time()
    result = job.execute_in_process(instance=instance, tags=tags, run_config=quiet)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    assert result.success
    for name in ("prices", "features"):
        got = instance.get_materialized_partitions(dg.AssetKey(name))
        assert got == set(keys), f"{kind}: {name} materialised {len(got)} of {len(keys)} partitions"
    records = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(dg.AssetKey("features"), checks[0]), limit=n + 1
    )
    rows = {r.partition: r.status.value for r in records}
    assert set(keys) <= set(rows), f"{kind}: check rows for {len(set(keys) & set(rows))} of {n} partitions"
    events = len(instance.all_logs(result.run_id))
    instance.dispose()
    return {
        "create_wall": created["wall"],
        "create_cpu": created["cpu"],
        "run_wall": wall,
        "run_cpu": cpu,
        "events": events,
    }


def run_child(kind: str, n: int, code: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_runs_") as home:
        env = {**os.environ, "DAGSTER_HOME": home, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        env.pop("DAGSTER_EVENT_BATCH_SIZE", None)
        cmd = [sys.executable, __file__, "--child", kind, "--partitions", str(n)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise SystemExit(f"{kind} x {n} failed:\n{out.stderr[-3000:]}")
        if "Exception while storing event batch" in out.stderr:  # Dagster fell back to one at a time
            raise SystemExit(f"{kind} x {n}: the batch write failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--child", default="")
    ap.add_argument("--baseline-code", default="", help="an export of an earlier commit (finnex@baseline)")
    ap.add_argument("--stock-max", type=int, default=500, help="largest N run on the stock storage (slow)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.partitions[0])))
        return
    configs = [("finnex", "finnex", REPO)]
    if args.baseline_code:
        configs.insert(0, ("finnex@baseline", "finnex", Path(args.baseline_code)))
    configs.insert(0, ("stock", "stock", REPO))
    load = os.getloadavg()
    print(f"# bench_runs {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, load {load[0]:.1f}")
    print("| partitions | storage | events | create wall s | create CPU s | run wall s | run CPU s |")
    print("|---|---|---|---|---|---|---|")
    for n in args.partitions:
        for label, kind, code in configs:
            if kind == "stock" and n > args.stock_max:
                continue
            r = run_child(kind, n, code)
            print(
                f"| {n} | {label} | {r['events']} | {r['create_wall']:.1f} | {r['create_cpu']:.1f} "
                f"| {r['run_wall']:.1f} | {r['run_cpu']:.1f} |",
                flush=True,
            )
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
