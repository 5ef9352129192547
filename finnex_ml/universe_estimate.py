"""What a universe demo will cost in wall time, before it starts, from measured stage rates.

The rates are wall seconds of ``finnex demo`` measured stage by stage on the 2-core VM at a
light load (see ``MEASURED``); other jobs on the machine multiply them (at load 13-14 the
packaged panel's run was 3-10x slower per unit, benchmarks/universe.md). Dagster's
per-partition work (creating a run over its partitions, one parquet file and one
materialisation event per partition and output) is a rate of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MEASURED", "StageRates", "UniverseEstimate", "estimate_universe_demo"]


@dataclass(frozen=True)
class StageRates:
    run_start_per_partition: float  # s: Dagster creating a partitioned run, per partition
    output_per_partition: float  # s: one output's parquet file + materialisation event, per partition
    features_per_ticker_session: float  # s: panel_features (snapshots, features), per (ticker, session)
    images_per_image: float  # s: encode, four checks, preview, staged write, per image
    labels_per_ticker_date: float  # s: panel_labels, per (ticker, date)
    train_per_image: float  # s: one training pass over one image in a walk-forward fold, reads included
    predict_per_image: float  # s: one forward pass (validation or test block)
    load_average: float  # the machine's load average when these were measured


# measured 2026-12-03 09:50 UTC: `finnex demo` (synthetic universe, 24 tickers, 558 feature
# sessions, 252 image dates) on a fresh clone of the 2-core VM, load average ~3 (the test suite's
# last minutes beside it), 5 min 37 s wall in all; the project's event log storage
# (finnex_assets/instance_storage.py). The packaged panel's run on the same VM at load 13-14 and
# on the stock event log (benchmarks/universe.md) was 3-10x slower per unit: a busy machine is.
MEASURED = StageRates(
    # the features run: 92.0 s, of which 80.9 s in panel_features, over 558 partitions; the
    # images run: 80.4 s, 78.4 s of it in the loops, over 252: ~0.018 s per partition in all
    run_start_per_partition=0.006,
    output_per_partition=0.006,
    features_per_ticker_session=80.9 / (24 * 558),
    images_per_image=76.0 / (24 * 252),  # encode, four checks, preview, staged write
    labels_per_ticker_date=2.4 / (24 * 252),
    # the single-split model: 34.9 s per epoch over 3,066 training + 917 validation images; the
    # printed budget line measured 11 ms of compute + 7.6 ms of reading per training image, of
    # which the read-ahead thread hides most when a core is free
    train_per_image=0.0105,
    predict_per_image=(34.9 - 3066 * 0.0105) / 917,
    load_average=3,
)


@dataclass(frozen=True)
class UniverseEstimate:
    seconds: dict[str, float]  # per stage
    rates: StageRates

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} ~{v / 60:.0f} min" for k, v in self.seconds.items())
        return (
            f"estimated wall time ~{self.total / 60:.0f} min ({parts}; the splits and the evaluation add about a minute) at "
            f"the rates measured on the shared 2-core VM at load average {self.rates.load_average:g} "
            "(finnex_ml/universe_estimate.py); other jobs on the machine make it slower"
        )


def estimate_universe_demo(
    n_tickers: int,
    feature_sessions: int,
    image_dates: int,
    folds: Sequence[tuple[int, int, int]],
    epochs: int,
    seeds: int,
    single_split: tuple[int, int, int, int] | None = None,
    rates: StageRates = MEASURED,
) -> UniverseEstimate:
    """Wall seconds per stage: features over ``feature_sessions`` (the images' lookback
    included), images and labels over ``image_dates`` for ``n_tickers`` each (an upper bound:
    a ticker without the lookback gets no image), and the walk-forward's ``folds`` of (fitted,
    validation, test) images at ``epochs`` x ``seeds``; ``single_split`` = (train, val, test
    images, epochs) when the single-split model runs too. Every epoch counted (early stopping
    can end sooner)."""
    if min(n_tickers, feature_sessions, image_dates) <= 0:
        raise ValueError("an estimate needs tickers, feature sessions and image dates (all > 0)")
    r = rates
    fit, val, test = (sum(f[i] for f in folds) for i in range(3))
    seconds = {
        "features": feature_sessions
        * (r.run_start_per_partition + 2 * r.output_per_partition + n_tickers * r.features_per_ticker_session),
        "images and labels": image_dates
        * (
            r.run_start_per_partition
            + 2 * r.output_per_partition
            + n_tickers * (r.images_per_image + r.labels_per_ticker_date)
        ),
        "walk-forward": epochs * seeds * (fit * r.train_per_image + val * r.predict_per_image)
        + seeds * test * r.predict_per_image,
    }
    if single_split is not None:
        n_train, n_val, n_test, split_epochs = single_split
        seconds["single-split model"] = (
            split_epochs * seeds * (n_train * r.train_per_image + n_val * r.predict_per_image)
            + seeds * (n_val + n_test) * r.predict_per_image
        )
    return UniverseEstimate(seconds, rates)
