"""Leak detectors. Honest daily single-stock direction accuracy is in the low 50s; anything far
better is treated as a leak until proven otherwise.

* ``scan_features``: the rank correlation of each daily feature at t with the forward return
  over (t, t+h], for every label horizon, on the training dates. The bar is not fixed: it is the
  ``1 - alpha`` quantile of the largest |rho| over all features and horizons when the forward
  returns are block-permuted (``n_perm`` times, blocks of at least the longest horizon, so the
  overlap of h-day returns survives). A fixed bar like ``max(0.3, 5 / sqrt(n))`` is 0.36 on 192
  dates and lets a partial leak (rho ~ 0.2) or a 5-day leak through; the permutation bar is the
  family-wise level ``alpha`` (5 %: a flag only warns) for exactly these features, horizons and
  dates. On ~250 dates and a handful of features it sits near 0.19; with a hundred features it is
  higher, and the canary row says so. A *canary* (a feature
  built from the future return with a chosen rho) is run through the same bar, so the report
  can say which leak size the scan would have caught.
* Correlation alone cannot tell a leak from a strong legitimate signal (a feature known at t
  that does predict the future), so a flagged feature is a WARNING. The blocking verdict rests on
  tests that separate the two (see ``finnex_ml.evaluation.evaluate``): the label-shift placebo
  (skill against labels k >= h sessions further in the future must vanish) and implausible
  skill (``suspicious_scores``: a balanced-accuracy interval wholly above
  ``max_balanced_accuracy``, for the networks and the tabular models fitted on these features).
  The placebo catches skill from something slower than the forecast (a misaligned join, a
  feature keyed to a later date); a feature that copies the next return passes it and is caught
  only by the implausible-skill bar (blocking) or the correlation scan (warning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


class LeakageError(RuntimeError):
    """Raised when a leak check fails and the caller asked for a hard stop."""


@dataclass
class LeakReport:
    threshold: float
    n: int
    flagged: list[tuple[str, float]] = field(default_factory=list)  # (feature, spearman rho at its worst horizon)
    top: list[tuple[str, float]] = field(default_factory=list)  # the largest |rho|, flagged or not
    # every (feature, horizon) beyond the bar: {"feature", "horizon", "spearman", "p_value"}
    flagged_by_horizon: list[dict] = field(default_factory=list)
    horizons: list[int] = field(default_factory=list)
    n_perm: int = 0
    alpha: float = 0.05
    null_max_median: float = float("nan")  # typical largest |rho| when nothing is related
    canary: list[dict] = field(default_factory=list)  # {"horizon", "target_rho", "spearman", "caught"}

    @property
    def passed(self) -> bool:
        return not self.flagged

    def raise_if_failed(self) -> None:
        if self.flagged:
            names = ", ".join(f"{n} (rho={r:+.3f})" for n, r in self.flagged[:10])
            raise LeakageError(
                f"{len(self.flagged)} feature(s) predict the forward return far beyond chance "
                f"(|rho| > {self.threshold:.3f} on {self.n} training dates): {names}. "
                "A feature at t must use only data known at t's close."
            )


def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    a, b = _ranks(x[ok]), _ranks(y[ok])
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _rank_z(x: np.ndarray) -> np.ndarray:
    """Column ranks standardised over the finite rows (mean 0, mean square 1); missing rows are 0,
    so ``z.T @ zy / n`` is each column's Spearman rho (shrunk by the share of missing rows)."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64).T).T
    out = np.zeros_like(x)
    for j in range(x.shape[1]):
        ok = np.isfinite(x[:, j])
        if ok.sum() < 3:
            continue
        r = _ranks(x[ok, j])
        sd = r.std()
        if sd > 0:
            out[ok, j] = (r - r.mean()) / sd
    return out


def scan_features(
    X: np.ndarray,
    names: Sequence[str],
    forward_return: np.ndarray | Mapping[int, np.ndarray],
    *,
    min_abs_corr: float = 0.0,
    alpha: float = 0.05,
    n_perm: int = 200,
    block: int | None = None,
    seed: int = 0,
    top: int = 10,
    canary_rho: float = 0.2,
) -> LeakReport:
    """Flag features whose |Spearman rho| with a forward return beats the permutation bar.

    ``forward_return`` is one series (horizon 1) or {h: series}. Rows where any horizon's return
    is missing are dropped. ``min_abs_corr`` is an optional floor on top of the permutation bar
    (0: none). The null permutes the return rows in blocks of ``block`` (default: the longest
    horizon) and records the largest |rho| over all features and horizons, so the bar is
    family-wise. See the module docstring for what a flag means.
    """
    from finnex_ml.evaluation.significance import block_permutation_indices

    series = dict(forward_return) if isinstance(forward_return, Mapping) else {1: forward_return}
    horizons = sorted(int(h) for h in series)
    Y = np.column_stack([np.asarray(series[h], dtype=np.float64) for h in horizons])
    Xf = np.asarray(X, dtype=np.float64)
    keep = np.all(np.isfinite(Y), axis=1)
    Y, Xf = Y[keep], Xf[keep]
    n = int(Y.shape[0])
    names = [str(nm) for nm in names]
    if n < 5:
        return LeakReport(threshold=float("nan"), n=n, horizons=horizons)
    Zx, Zy = _rank_z(Xf), _rank_z(Y)
    rho = Zx.T @ Zy / n  # [features, horizons]
    blk = int(block or max(horizons))
    null_max = np.array(
        [float(np.max(np.abs(Zx.T @ Zy[idx] / n))) for idx in block_permutation_indices(n, blk, n_perm, seed)]
    )
    bar = max(float(np.quantile(null_max, 1 - alpha)), float(min_abs_corr))

    by_h, worst = [], {}
    for j, nm in enumerate(names):
        for k, h in enumerate(horizons):
            r = float(rho[j, k])
            if not np.any(Zx[:, j]):
                continue
            if nm not in worst or abs(r) > abs(worst[nm]):
                worst[nm] = r
            if abs(r) > bar:
                p = float((1 + np.sum(null_max >= abs(r))) / (1 + null_max.size))
                by_h.append({"feature": nm, "horizon": h, "spearman": r, "p_value": p})
    ranked = sorted(worst.items(), key=lambda t: -abs(t[1]))
    flagged_names = {d["feature"] for d in by_h}

    # canaries: a feature equal to the future return plus noise sized for rho ~ canary_rho (on the
    # Pearson scale of the ranks), run through the same bar
    rng = np.random.default_rng(seed + 1)
    canary = []
    for k, h in enumerate(horizons):
        z = Zy[:, k]
        noise = rng.standard_normal(n)
        c = canary_rho * z + np.sqrt(max(1 - canary_rho**2, 0.0)) * noise
        r = float(_rank_z(c[:, None])[:, 0] @ z / n)
        canary.append({"horizon": h, "target_rho": canary_rho, "spearman": r, "caught": bool(abs(r) > bar)})
    return LeakReport(
        threshold=float(bar),
        n=n,
        flagged=[(nm, r) for nm, r in ranked if nm in flagged_names],
        top=ranked[:top],
        flagged_by_horizon=sorted(by_h, key=lambda d: -abs(d["spearman"])),
        horizons=horizons,
        n_perm=int(n_perm),
        alpha=float(alpha),
        null_max_median=float(np.median(null_max)),
        canary=canary,
    )


def suspicious_scores(rows: Sequence[dict], *, max_balanced_accuracy: float = 0.6) -> list[dict]:
    """Rows (model, horizon, balanced_accuracy_lower, ...) whose whole interval beats the bar."""

    def lower(r: dict) -> float:
        v = r.get("balanced_accuracy_lower")
        return float(v) if v is not None else float("nan")

    return [r for r in rows if np.isfinite(lower(r)) and lower(r) > max_balanced_accuracy]


__all__ = ["LeakReport", "LeakageError", "scan_features", "spearman", "suspicious_scores"]
