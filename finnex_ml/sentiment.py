"""Lexicon sentiment (VADER) for dated texts, aggregated per session and source."""

from __future__ import annotations

from datetime import date
from functools import lru_cache

import polars as pl
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from finnex_ml import calendar
from finnex_ml.data.base import TEXT_SOURCES

# VADER's own convention for calling a compound score positive or negative.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05
AGGREGATES = ("mean", "count", "std", "pos_share", "neg_share")


@lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=200_000)
def compound(text: str) -> float:
    """VADER compound score in [-1, 1]; cached because feeds repeat headlines verbatim."""
    return float(_analyzer().polarity_scores(text)["compound"])


def score_texts(texts: pl.DataFrame) -> pl.DataFrame:
    """Add ``session`` (first session whose close follows publication) and ``compound``."""
    return texts.with_columns(
        calendar.assign_session(pl.col("published_at")).alias("session"),
        pl.col("text").map_elements(compound, return_dtype=pl.Float64).alias("compound"),
    )


def daily_sentiment(texts: pl.DataFrame, sessions: list[date]) -> pl.DataFrame:
    """One row per session: ``{source}_{mean,count,std,pos_share,neg_share}`` for news and social.

    A session without texts has count 0, std and shares 0, and a null mean: the feature step
    carries the last known mean forward within each date's own snapshot.
    """
    scored = score_texts(texts)
    grid = pl.DataFrame({"date": sessions}, schema={"date": pl.Date})
    out = grid
    for source in TEXT_SOURCES:
        agg = (
            scored.filter(pl.col("source") == source)
            .group_by("session")
            .agg(
                pl.col("compound").mean().alias(f"{source}_mean"),
                pl.len().cast(pl.Float64).alias(f"{source}_count"),
                pl.col("compound").std(ddof=0).alias(f"{source}_std"),
                (pl.col("compound") >= POSITIVE_AT).mean().alias(f"{source}_pos_share"),
                (pl.col("compound") <= NEGATIVE_AT).mean().alias(f"{source}_neg_share"),
            )
            .rename({"session": "date"})
        )
        out = out.join(agg, on="date", how="left")
        out = out.with_columns(
            pl.col(f"{source}_count").fill_null(0.0),
            pl.col(f"{source}_std").fill_null(0.0),
            pl.col(f"{source}_pos_share").fill_null(0.0),
            pl.col(f"{source}_neg_share").fill_null(0.0),
        )
    return out.sort("date")
