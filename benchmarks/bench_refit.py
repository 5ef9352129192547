"""The refit permutation test of the gradient-boosting baseline, before and after issue 18.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_refit.py [--quick] [--summary-json]

On the same training matrix and block permutations, in one run: the refits as they were (raw
features, 150 boosting iterations at learning rate 0.05, one process) against the evaluation's
settings now (features binned once by ``baselines.prebin``; ``baselines.REFIT_BOOSTING``: 50
iterations at 0.15, the same depth, regularisation and class weights for the real and every
permuted fit) in one process and in ``--jobs`` processes. The data: ``--rows`` training dates x
206 features (the daily feature count), a weak planted signal.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from finnex_ml.evaluation import baselines as bl
from finnex_ml.evaluation import metrics as mt
from finnex_ml.evaluation import significance as sg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _summary  # noqa: E402


def _score(X_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, boosting: dict | None, y: np.ndarray) -> float:
    probs = bl.tabular_probs("gradient_boosting", X_train, y, X_test, 7, boosting=boosting)
    return mt.balanced_accuracy(y_test, probs.argmax(-1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--refits", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4 refits per variant")
    ap.add_argument("--summary-json", action="store_true")
    args = ap.parse_args()
    n_perm = 4 if args.quick else args.refits
    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.rows + 120, 206))
    y = np.digitize(0.3 * X[:, 0] + rng.normal(size=len(X)), [-0.5, 0.5])
    X_train, y_train, X_test, y_test = X[: args.rows], y[: args.rows], X[args.rows :], y[args.rows :]
    it = bl.REFIT_BOOSTING["max_iter"]
    raw, binned = (X_train, X_test), bl.prebin(X_train, X_test)
    variants = [
        ("before: raw features, 150 iterations, 1 process", raw, None, 1),
        ("features binned once, 150 iterations, 1 process", binned, None, 1),
        (f"after: features binned once, {it} iterations, 1 process", binned, bl.REFIT_BOOSTING, 1),
        (f"after: features binned once, {it} iterations, {args.jobs} processes", binned, bl.REFIT_BOOSTING, args.jobs),
    ]
    times = []
    for name, (xa, xb), boosting, jobs in variants:
        t0 = time.perf_counter()
        res = sg.refit_permutation_test(
            partial(_score, xa, xb, y_test, boosting), y_train, block=5, n_perm=n_perm, seed=1, n_jobs=jobs
        )
        times.append(time.perf_counter() - t0)
        print(
            f"{name}: {times[-1]:.1f} s for 1 + {n_perm} fits ({times[-1] / (n_perm + 1):.2f} s per fit), "
            f"observed balanced accuracy {res['statistic']:.3f}, p={res['p_value']:.3f}",
            flush=True,
        )
    print(
        f"speed-up over before: {times[0] / times[1]:.1f}x (binned once), {times[0] / times[2]:.1f}x (and {it} "
        f"iterations), {times[0] / times[3]:.1f}x (and {args.jobs} processes)"
    )
    if args.summary_json:
        _summary.emit(
            [
                _summary.row(
                    "refit permutations",
                    f"1 + {n_perm} gradient-boosting fits on {args.rows} x 206",
                    times[3],
                    variants[0][0],
                    times[0],
                    times[0] / times[3],
                    "x faster than before (baseline time / stage time)",
                )
            ]
        )


if __name__ == "__main__":
    main()
