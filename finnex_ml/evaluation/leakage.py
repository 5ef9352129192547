"""Leak detectors. Honest daily single-stock direction accuracy is in the low 50s; anything far
better is treated as a leak until proven otherwise.

* ``scan_features``: the rank correlation of each daily feature at t with the forward return
  over (t, t+h] on the training dates. Under no leak it is noise of size ~1/sqrt(n); a feature
  built from a future price correlates strongly. The bar is ``max(min_abs_corr, z / sqrt(n))``.
* ``suspicious_scores``: a model whose balanced-accuracy interval lies wholly above
  ``max_balanced_accuracy`` is flagged, whatever the cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


class LeakageError(RuntimeError):
    """Raised when a leak check fails and the caller asked for a hard stop."""


@dataclass
class LeakReport:
    threshold: float
    n: int
    flagged: list[tuple[str, float]] = field(default_factory=list)  # (feature, spearman rho)
    top: list[tuple[str, float]] = field(default_factory=list)  # the largest |rho|, flagged or not

    @property
    def passed(self) -> bool:
        return not self.flagged

    def raise_if_failed(self) -> None:
        if self.flagged:
            names = ", ".join(f"{n} (rho={r:+.3f})" for n, r in self.flagged[:10])
            raise LeakageError(f"{len(self.flagged)} feature(s) predict the forward return far beyond chance "
                               f"(|rho| > {self.threshold:.3f} on {self.n} training dates): {names}. "
                               "A feature at t must use only data known at t's close.")


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


def scan_features(X: np.ndarray, names: Sequence[str], forward_return: np.ndarray, *, min_abs_corr: float = 0.3,
                  z: float = 5.0, top: int = 10) -> LeakReport:
    """Flag features whose |Spearman rho| with the forward return exceeds the bar (module docstring)."""
    y = np.asarray(forward_return, dtype=np.float64)
    n = int(np.isfinite(y).sum())
    bar = max(min_abs_corr, z / np.sqrt(max(n - 1, 1)))
    rhos = [(str(name), spearman(np.asarray(X[:, j], dtype=np.float64), y)) for j, name in enumerate(names)]
    rhos = [(nm, r) for nm, r in rhos if np.isfinite(r)]
    ranked = sorted(rhos, key=lambda t: -abs(t[1]))
    return LeakReport(threshold=float(bar), n=n, flagged=[(nm, r) for nm, r in ranked if abs(r) > bar],
                      top=ranked[:top])


def suspicious_scores(rows: Sequence[dict], *, max_balanced_accuracy: float = 0.6) -> list[dict]:
    """Rows (model, horizon, balanced_accuracy_lower, ...) whose whole interval beats the bar."""
    return [r for r in rows if np.isfinite(r.get("balanced_accuracy_lower", np.nan))
            and r["balanced_accuracy_lower"] > max_balanced_accuracy]


__all__ = ["LeakReport", "LeakageError", "scan_features", "spearman", "suspicious_scores"]
