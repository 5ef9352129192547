"""Uncertainty of out-of-sample results: block-bootstrap intervals, (deflated) Sharpe
probabilities, and breakdowns by market regime.

Daily evaluation rows are not independent: returns are autocorrelated (volatility clusters) and
an h-day label at t shares h-1 days of its future with the label at t+1. Resampling single rows
i.i.d. would pretend there are n independent observations and give intervals that are too
narrow, so every interval here comes from a circular moving-block bootstrap whose block is at
least the label horizon (:func:`default_block`, or :func:`optimal_block` from the data).

The resampling indices come from ``arch.bootstrap.CircularBlockBootstrap`` and the data-driven
block length from ``arch.bootstrap.optimal_block_length`` (Politis & White 2004, Patton et al.
2009); only the percentile interval around them is our own (arch's ``conf_int`` wants a
function of the resampled arrays too, but skipping resamples whose statistic is undefined,
e.g. a balanced accuracy on a one-class resample, is ours to decide and report).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import kurtosis, norm, skew

__all__ = [
    "block_bootstrap_indices",
    "bootstrap_ci",
    "default_block",
    "optimal_block",
    "classification_intervals",
    "sharpe_interval",
    "probabilistic_sharpe_ratio",
    "deflated_sharpe_ratio",
    "regimes_from_closes",
    "breakdown_by_group",
    "metrics_by_regime",
    "EULER_GAMMA",
]

EULER_GAMMA = 0.5772156649015329


def block_bootstrap_indices(n: int, block: int, n_boot: int, seed: int) -> np.ndarray:
    """Row indices [n_boot, n] of a circular moving-block bootstrap.

    Each resample concatenates ceil(n / block) blocks of ``block`` consecutive rows starting at
    uniformly drawn rows and wrapping past the end back to row 0 (so every row is equally likely
    to be drawn), truncated to n rows. Deterministic for a given ``seed``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return _bootstrap_rows(int(n), min(int(block), int(n)), int(n_boot), int(seed)).copy()


# a few distinct (n, block) per evaluation; 8 entries bound the memory (5,000 x 750 rows is 30 MB)
@functools.lru_cache(maxsize=8)
def _bootstrap_rows(n: int, block: int, n_boot: int, seed: int) -> np.ndarray:
    """The indices of :func:`block_bootstrap_indices`, drawn once per (n, block, n_boot, seed):
    every row of an evaluation table resamples the same test dates with the same seed, and
    arch's generator costs more than the statistics. Read-only, so no caller can alter a cached
    draw."""
    from arch.bootstrap import CircularBlockBootstrap

    # arch draws ceil(n / block) uniform block starts and wraps past the end, exactly the scheme
    # above; resampling the row numbers themselves yields the indices.
    bs = CircularBlockBootstrap(block, np.arange(n), seed=np.random.default_rng(seed))
    rows = np.stack([data[0][0] for data in bs.bootstrap(n_boot)]).astype(np.int64)
    rows.setflags(write=False)
    return rows


def default_block(n: int, horizon: int) -> int:
    """Block length ``max(horizon, round(n ** (1/3)))`` capped at n: n^(1/3) is the usual rate
    for block bootstraps, and a block shorter than the label horizon would cut overlapping
    labels apart."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return int(max(1, min(n, max(int(horizon), round(n ** (1.0 / 3.0))))))


def optimal_block(x: np.ndarray, horizon: int = 1, kind: str = "circular") -> int:
    """Block length for a block bootstrap of the series ``x``: ``arch``'s Politis–White estimate
    (``optimal_block_length``, column ``kind``: "circular" or "stationary"), rounded up, and never
    shorter than the label horizon (a shorter block would cut overlapping labels apart) nor
    longer than the series."""
    from arch.bootstrap import optimal_block_length

    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 1:
        raise ValueError("optimal_block needs at least one finite value")
    if v.size < 10 or float(np.std(v)) == 0.0:
        # too short (or constant) for the spectral estimate; fall back on the horizon
        return int(max(1, min(v.size, int(horizon))))
    est = float(optimal_block_length(v)[kind].iloc[0])
    return int(max(1, min(v.size, max(int(horizon), math.ceil(est)))))


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    *,
    block: int,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    batch: Callable[..., np.ndarray] | None = None,
) -> dict[str, float]:
    """Percentile block-bootstrap interval of ``statistic(*arrays)``.

    All ``arrays`` are resampled with the same row indices (along axis 0), so paired columns
    (truth and prediction) stay paired. Resamples whose statistic is NaN or infinite are
    ignored. Returns ``estimate`` (on the original data), ``lower`` / ``upper`` (the alpha/2 and
    1 - alpha/2 quantiles), ``std`` (ddof=1) of the valid resamples, ``n_boot``, ``block``,
    ``alpha`` and ``valid_resamples``. ``batch``, when given, is ``statistic`` vectorised over
    resamples: called once with each array resampled to [n_boot, n, ...], it must return the
    n_boot values ``statistic`` gives row by row (the same numbers, far fewer Python calls).
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    if not (0 < alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    data = [np.asarray(a) for a in arrays]
    n = data[0].shape[0]
    if any(a.shape[0] != n for a in data):
        raise ValueError(f"arrays must have the same number of rows, got {[a.shape[0] for a in data]}")
    if n < 1 or block < 1 or n_boot < 1:
        raise ValueError(f"n, block and n_boot must be >= 1, got {n}, {block}, {n_boot}")
    idx = _bootstrap_rows(int(n), min(int(block), int(n)), int(n_boot), int(seed))
    estimate = float(statistic(*data))
    if batch is not None:
        stats = np.asarray(batch(*(a[idx] for a in data)), dtype=np.float64)
    else:
        stats = np.array([float(statistic(*(a[row] for a in data))) for row in idx])
    valid = stats[np.isfinite(stats)]
    nan = math.nan
    return {
        "estimate": estimate,
        "lower": float(np.quantile(valid, alpha / 2)) if valid.size else nan,
        "upper": float(np.quantile(valid, 1 - alpha / 2)) if valid.size else nan,
        "std": float(np.std(valid, ddof=1)) if valid.size > 1 else nan,
        "n_boot": float(n_boot),
        "block": float(min(block, n)),
        "alpha": float(alpha),
        "valid_resamples": float(valid.size),
    }


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(y_true == y_pred))


def _accuracy_rows(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return np.mean(y_true == y_pred, axis=1)


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Balanced accuracy with chance fixed at 1/3 even on a resample lacking a class (see
    :func:`finnex_ml.evaluation.metrics.balanced_accuracy`); NaN on a one-class resample, which
    :func:`bootstrap_ci` then skips (its count is ``n_boot - valid_resamples``)."""
    from finnex_ml.evaluation.metrics import balanced_accuracy

    return balanced_accuracy(y_true, y_pred)


def classification_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    block: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Block-bootstrap intervals (see :func:`bootstrap_ci`) of the accuracy and balanced
    accuracy of predicted class codes ``y_pred`` against ``y_true``."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D of equal length, got {t.shape}, {p.shape}")
    from finnex_ml.evaluation.metrics import balanced_accuracy_rows

    common = dict(block=block, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "accuracy": bootstrap_ci(_accuracy, [t, p], batch=_accuracy_rows, **common),
        "balanced_accuracy": bootstrap_ci(_balanced_accuracy, [t, p], batch=balanced_accuracy_rows, **common),
    }


def _annualised_sharpe(returns: np.ndarray, periods_per_year: float) -> float:
    if returns.shape[0] < 2:
        return math.nan
    sd = float(np.std(returns, ddof=1))
    mean = float(np.mean(returns))
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return math.nan
    return mean / sd * math.sqrt(periods_per_year)


def _annualised_sharpe_rows(returns: np.ndarray, periods_per_year: float) -> np.ndarray:
    """:func:`_annualised_sharpe` of every row of ``returns`` [R, n], the same values."""
    if returns.shape[1] < 2:
        return np.full(returns.shape[0], math.nan)
    sd = np.std(returns, axis=1, ddof=1)
    mean = np.mean(returns, axis=1)
    flat = sd <= 1e-12 * np.maximum(1.0, np.abs(mean))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flat, math.nan, mean / sd * math.sqrt(periods_per_year))


def sharpe_interval(
    returns: np.ndarray,
    *,
    block: int,
    n_boot: int = 1000,
    seed: int = 0,
    periods_per_year: float = 252.0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Block-bootstrap interval of the annualised Sharpe ratio (risk-free 0, std ddof=1)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all(np.isfinite(r)):
        raise ValueError("returns must be a non-empty 1-D array of finite values")
    return bootstrap_ci(
        lambda x: _annualised_sharpe(x, periods_per_year),
        [r],
        block=block,
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        batch=lambda x: _annualised_sharpe_rows(x, periods_per_year),
    )


def _sharpe_moments(returns: np.ndarray) -> tuple[float, float, float, int]:
    """Per-period Sharpe (std ddof=1), skewness and non-excess kurtosis (population moments)."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 1 or not np.all(np.isfinite(r)):
        raise ValueError("returns must be a 1-D array of finite values")
    t = int(r.size)
    if t < 3:
        return math.nan, math.nan, math.nan, t
    sd = float(np.std(r, ddof=1))
    if sd <= 1e-12 * max(1.0, abs(float(np.mean(r)))):
        return math.nan, math.nan, math.nan, t
    return float(np.mean(r)) / sd, float(skew(r)), float(kurtosis(r, fisher=False)), t


def probabilistic_sharpe_ratio(returns: np.ndarray, benchmark_sr: float = 0.0) -> float:
    """Probability that the true per-period Sharpe ratio exceeds ``benchmark_sr``.

    Bailey & López de Prado (2012/2014): with SR the observed per-period Sharpe (mean / std,
    ddof=1), T the number of returns, γ3 the skewness and γ4 the (non-excess) kurtosis,
    ``PSR = Φ((SR - SR*) sqrt(T - 1) / sqrt(1 - γ3 SR + (γ4 - 1) / 4 SR²))``. The
    non-normality terms widen the standard error of SR for skewed or fat-tailed returns. NaN for
    fewer than 3 returns or a constant series.
    """
    sr, g3, g4, t = _sharpe_moments(returns)
    if math.isnan(sr):
        return math.nan
    var_term = 1.0 - g3 * sr + (g4 - 1.0) / 4.0 * sr**2
    if var_term <= 0:
        return math.nan
    return float(norm.cdf((sr - benchmark_sr) * math.sqrt(t - 1) / math.sqrt(var_term)))


def deflated_sharpe_ratio(returns: np.ndarray, trial_sharpes: Sequence[float]) -> dict[str, float]:
    """Deflated Sharpe ratio (Bailey & López de Prado, 2014) of the selected strategy.

    ``trial_sharpes`` are the per-period (not annualised) Sharpe ratios of all N configurations
    tried, the selected one included. The best of N unskilled trials is expected to reach
    ``E[max SR] = sqrt(V) * ((1 - γ) Φ⁻¹(1 - 1/N) + γ Φ⁻¹(1 - 1/(N e)))`` with V the sample
    variance (ddof=1) of the trial Sharpes and γ the Euler–Mascheroni constant; the DSR is the
    PSR of ``returns`` against that benchmark. With a single trial the benchmark is 0 and the DSR
    is PSR(0). Returns ``deflated_sharpe`` (a probability), ``expected_max_sharpe``,
    ``n_trials`` and ``sharpe_per_period``.
    """
    trials = np.asarray(list(trial_sharpes), dtype=np.float64)
    if trials.ndim != 1 or trials.size == 0 or not np.all(np.isfinite(trials)):
        raise ValueError("trial_sharpes must be a non-empty sequence of finite per-period Sharpe ratios")
    n_trials = int(trials.size)
    if n_trials == 1:
        expected_max = 0.0
    else:
        spread = math.sqrt(float(np.var(trials, ddof=1)))
        expected_max = spread * (
            (1.0 - EULER_GAMMA) * float(norm.ppf(1.0 - 1.0 / n_trials))
            + EULER_GAMMA * float(norm.ppf(1.0 - 1.0 / (n_trials * math.e)))
        )
    sr = _sharpe_moments(returns)[0]
    return {
        "deflated_sharpe": probabilistic_sharpe_ratio(returns, expected_max),
        "expected_max_sharpe": float(expected_max),
        "n_trials": float(n_trials),
        "sharpe_per_period": float(sr),
    }


def regimes_from_closes(closes: np.ndarray, window: int = 63, band: float = 0.05) -> np.ndarray:
    """Market regime per row from the trailing ``window``-session return of the close.

    Row i uses ``closes[i] / closes[i - window] - 1``, known at the close of row i (no future
    data): above ``band`` -> "bull", below ``-band`` -> "bear", otherwise "sideways". Rows with
    fewer than ``window`` earlier closes, or a missing / non-positive close at either end, are
    "unknown".
    """
    c = np.asarray(closes, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"closes must be 1-D, got shape {c.shape}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not (band >= 0):
        raise ValueError(f"band must be >= 0, got {band}")
    out = np.full(c.shape[0], "unknown", dtype="<U8")
    if c.shape[0] <= window:
        return out
    now, then = c[window:], c[:-window]
    ok = np.isfinite(now) & np.isfinite(then) & (then > 0) & (now > 0)
    trailing = np.full(now.shape, np.nan)
    trailing[ok] = now[ok] / then[ok] - 1.0
    labels = np.where(trailing > band, "bull", np.where(trailing < -band, "bear", "sideways"))
    out[window:] = np.where(ok, labels, "unknown")
    return out


def breakdown_by_group(groups: np.ndarray, **columns: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """Split equally long ``columns`` by ``groups``: {group: {column name: rows of that group}},
    groups in sorted order and rows in their original order."""
    g = np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D, got shape {g.shape}")
    cols = {name: np.asarray(v) for name, v in columns.items()}
    for name, v in cols.items():
        if v.shape[:1] != g.shape:
            raise ValueError(f"column {name!r} has {v.shape[0] if v.ndim else 0} rows but groups has {g.shape[0]}")
    return {str(key): {name: v[g == key] for name, v in cols.items()} for key in np.unique(g)}


def metrics_by_regime(
    regimes: np.ndarray,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    strategy_returns: np.ndarray | None = None,
    periods_per_year: float = 252.0,
) -> dict[str, dict[str, float]]:
    """Accuracy, balanced accuracy and annualised Sharpe of the strategy within each regime.

    ``y_pred`` holds predicted class codes. ``sharpe`` is NaN when ``strategy_returns`` is not
    given or the regime has fewer than 2 rows; it is computed from that regime's days only
    (not contiguous), which is what "how does the strategy do in bear markets" asks.
    """
    cols: dict[str, np.ndarray] = {"y_true": np.asarray(y_true), "y_pred": np.asarray(y_pred)}
    if strategy_returns is not None:
        cols["returns"] = np.asarray(strategy_returns, dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for regime, part in breakdown_by_group(regimes, **cols).items():
        t, p = part["y_true"], part["y_pred"]
        returns = part.get("returns")
        out[regime] = {
            "n": float(t.size),
            "accuracy": _accuracy(t, p),
            "balanced_accuracy": _balanced_accuracy(t, p),
            "sharpe": _annualised_sharpe(returns, periods_per_year) if returns is not None else math.nan,
        }
    return out
