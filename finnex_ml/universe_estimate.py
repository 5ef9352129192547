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
    train_per_image: float  # s: one training pass over one image's cells (the epoch's bookkeeping included)
    predict_per_image: float  # s: one validation pass over one image's cells
    cells_per_image: float  # s: reading one image and computing its cells, once per model or fold
    test_per_image: float  # s: predicting one test image from its pixels, the read included
    load_average: float  # the machine's load average when these were measured


# measured 2026-12-04 19:05 UTC: `finnex demo` (synthetic universe, 24 tickers, 558 feature
# sessions, 252 image dates, budget standard) alone on the 2-core VM, load average ~1, 2 min 10 s
# wall in all. The models train from cells (training.data.CellDataset) since that session. The
# features and images rates were measured again later that evening (1 min 1 s wall in all), after the
# snapshots became slices of the sorted table and the images ran in two date spans side by side
# (panel_images; a range under 2 x MIN_SPAN_DATES dates runs in one process, ~1.6x slower per
# image). Busy machines are slower: the packaged panel's run at load 13-14 (benchmarks/universe.md)
# was 3-10x slower per unit than an earlier light-load measurement.
MEASURED = StageRates(
    # partitions: 0.007 s each in all (19:05); the features stage 14.9 s, 12.6 s of it in
    # panel_features; the images stage 11.2 s, 10.1 s in the two spans
    run_start_per_partition=0.0025,
    output_per_partition=0.0025,
    features_per_ticker_session=12.6 / (24 * 558),
    images_per_image=10.1 / (24 * 252),  # encode, four checks, preview, staged write; two spans
    labels_per_ticker_date=1.7 / (24 * 252),
    # the single-split model: 7.4 s per epoch over 3,066 training + 917 validation images (their
    # cells); the printed budget line measured 1.5 ms to read an image and 0.5 ms for its cells;
    # the 39.1 s stage less 3 epochs and that cell pass leaves ~9 s for predicting the 917
    # validation and ~1,000 test images from pixels, saving and logging
    train_per_image=(7.4 - 917 * 0.0015) / 3066,
    predict_per_image=0.0015,
    cells_per_image=0.002,
    test_per_image=0.0047,
    load_average=1,
)


@dataclass(frozen=True)
class UniverseEstimate:
    seconds: dict[str, float]  # per stage
    rates: StageRates

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} ~{_span(v)}" for k, v in self.seconds.items())
        return (
            f"estimated wall time ~{_span(self.total)} ({parts}; the splits and the evaluation add to it) at "
            f"the rates measured on the shared 2-core VM at load average {self.rates.load_average:g} "
            "(finnex_ml/universe_estimate.py); other jobs on the machine make it slower"
        )


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


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
        # each fold computes its images' cells once (its seeds share them), then trains from them
        "walk-forward": epochs * seeds * (fit * r.train_per_image + val * r.predict_per_image)
        + (fit + val) * r.cells_per_image
        + seeds * test * r.test_per_image,
    }
    if single_split is not None:
        n_train, n_val, n_test, split_epochs = single_split
        seconds["single-split model"] = (
            split_epochs * seeds * (n_train * r.train_per_image + n_val * r.predict_per_image)
            + (n_train + n_val) * r.cells_per_image
            + seeds * (n_val + n_test) * r.test_per_image
        )
    return UniverseEstimate(seconds, rates)
