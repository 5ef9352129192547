"""What a universe demo will cost in wall time, before it starts, from measured stage rates.

The rates are wall seconds of ``finnex demo --universe packaged-panel`` measured stage by stage
on the shared 2-core VM (benchmarks/universe.md, "Packaged panel end to end"). That machine was
loaded (load average 13-14, five other jobs), so the estimate is for such a machine; a quiet one
is several times faster. Dagster's per-partition work (creating a run over ~2,000 partitions,
one parquet file and one materialisation event per partition and output) is a rate of its own
because at this size it costs as much as the features themselves.
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


# measured 2026-12-03 on the shared 2-core VM (see the module docstring)
MEASURED = StageRates(
    # features run: 348 s before its step started (2,257 partitions); images run: 384 s (1,951)
    run_start_per_partition=(348 + 384) / (2257 + 1951),
    # features run: 524 s writing 2 outputs x 2,257 partitions; images: 225 s of per-date metadata
    output_per_partition=524 / (2 * 2257),
    features_per_ticker_session=720 / (20 * 2257),  # panel_features: 720 s for 20 tickers x 2,257 sessions
    images_per_image=1338 / 39020,  # the encode/check/write loop: 1,338 s for 39,020 images
    labels_per_ticker_date=16 / 39020,  # panel_labels and its checks: 16 s
    # walk-forward fold 2017 at quick: 198 s for one epoch over 1,420 fitted + 360 validation
    # images, then 151 s predicting 5,020 test images (the CNN's 9 ms of compute per training
    # image on a quiet core becomes ~130 ms at this load, reads included)
    train_per_image=(198 - 360 * 151 / 5020) / 1420,
    predict_per_image=151 / 5020,
    load_average=13.5,
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
            f"estimated wall time ~{self.total / 60:.0f} min ({parts}; the splits and the evaluation add a few) at "
            f"the rates measured on the shared 2-core VM at load average {self.rates.load_average:g} "
            "(benchmarks/universe.md); a quiet machine is faster"
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
