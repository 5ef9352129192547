"""benchmarks/run_all.py on tiny fake benchmarks: SUMMARY parsing, per-process peak RSS from
os.wait4, the FAILED row and the exit status, the markdown table. No real benchmark runs.

The runner itself runs in a fresh small Python process: Linux carries the spawning process's
peak RSS into each child's ru_maxrss, and this pytest process (Dagster, polars imported by the
conftest) would put a floor of a few hundred MB under every value.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402

ALLOC = """
import json, sys
block = bytearray(60 * 2**20)
for i in range(0, len(block), 4096):  # touch every page, so it is resident
    block[i] = 1
assert "--summary-json" in sys.argv and "--quick" in sys.argv
row = {"stage": "alloc", "work": "60 MB | touched", "seconds": 0.5, "baseline": "bare", "baseline_seconds": 0.25,
       "ratio": 2.0, "ratio_meaning": "x the time of the bare thing (higher = slower)"}
print("some console output")
print("SUMMARY " + json.dumps([row, {**row, "stage": "second", "ratio": None, "baseline": None}]))
"""

FAIL = """
import sys
print("SUMMARY []")
print("Traceback (most recent call last):\\nValueError: boom in the fake benchmark", file=sys.stderr)
sys.exit(1)
"""

NO_SUMMARY = "print('forgot the summary')\n"


def fake_benches(tmp_path: Path) -> list[run_all.Bench]:
    out = []
    for name, code in (("alloc", ALLOC), ("fails", FAIL), ("silent", NO_SUMMARY)):
        script = tmp_path / f"bench_{name}.py"
        script.write_text(textwrap.dedent(code), encoding="utf-8")
        out.append(run_all.Bench(name, script))
    return out


def test_run_all_on_fake_benchmarks(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    code = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(BENCH)!r})
        import run_all
        benches = [run_all.Bench(n, Path({str(tmp_path)!r}) / f"bench_{{n}}.py") for n in ("alloc", "fails", "silent")]
        rc = run_all.main(["--out", {str(out)!r}], benchmarks=benches)
        sys.exit(rc)
        """
    )
    fake_benches(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # two benchmarks failed; the runner went on and says so
    assert "FAILED: fails, silent" in proc.stderr
    text = out.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    assert len(rows) == 4, rows  # alloc's two rows, one FAILED row each for the others
    cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in rows]
    alloc = [c for c in cells if c[0] == "alloc"]
    assert [c[1] for c in alloc] == ["alloc", "second"]
    assert alloc[0][2] == "60 MB \\| touched"  # a pipe in a cell is escaped
    assert alloc[0][3] == "0.500" and alloc[0][4] == "bare (0.250)"
    assert alloc[0][5] == "**2.00**x the time of the bare thing (higher = slower)"
    assert alloc[1][4] == "-" and alloc[1][5].startswith("x the time")
    peak = {c[0]: float(c[6]) for c in cells}
    assert peak["alloc"] >= 50, peak  # the child's own peak, from os.wait4
    assert peak["fails"] < peak["alloc"] - 40, peak  # per process: not a max over all children
    fails = next(c for c in cells if c[0] == "fails")
    assert fails[1] == "**FAILED**" and "exit status 1" in fails[2] and "boom in the fake benchmark" in fails[2]
    silent = next(c for c in cells if c[0] == "silent")
    assert silent[1] == "**FAILED**" and "no SUMMARY line" in silent[2]
    assert "Scale: **quick**" in text and "CPU core(s)" in text and "torch " in text
    assert not list(tmp_path.glob(".results.md.*"))  # the atomic write left no temp file


def test_parse_summary_and_render() -> None:
    rows = [
        {"stage": "s", "work": "w", "seconds": 2.0, "baseline": None, "ratio": None, "ratio_meaning": "no baseline"}
    ]
    stdout = "noise\nSUMMARY [1]\nmore\nSUMMARY " + json.dumps(rows) + "\n"
    assert run_all.parse_summary(stdout) == rows  # the last SUMMARY line wins
    assert run_all.parse_summary("nothing here") is None
    bench = run_all.Bench("b", BENCH / "bench_b.py")
    res = run_all.Result(bench, ["python", str(bench.script)], 0, 3.0, 42.0, rows=rows)
    meta = {
        "when": "now",
        "command": "python benchmarks/run_all.py",
        "scale": "full",
        "machine": run_all.machine_info(),
        "total_s": 3.0,
        "runner_peak_mb": 20.0,
    }
    text = run_all.render([res], meta)
    assert "| b | s | w | 2.00 | - | no baseline | 42 |" in text
    assert "`python benchmarks/bench_b.py --summary-json`" in text
