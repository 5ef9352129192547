"""Trading-day partitions, partition-key / path validation, and session assignment of timestamps."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta

import exchange_calendars as xcals
import polars as pl
import pytest

from finnex_assets.partitions import trading_day_partitions, trading_days
from finnex_ml.calendar import NEW_YORK, assign_session, session_close_utc
from finnex_ml.errors import ConfigError
from finnex_ml.paths import resolve_under, validate_partition_key

# --------------------------------------------------------------------------- partitions


@pytest.fixture(scope="module")
def keys_2024() -> list[str]:
    return [k for k in trading_days.get_partition_keys() if k.startswith("2024-")]


def test_2024_keys_are_exactly_the_xnys_sessions(keys_2024):
    expected = [
        ts.strftime("%Y-%m-%d") for ts in xcals.get_calendar("XNYS").sessions_in_range("2024-01-01", "2024-12-31")
    ]
    assert len(expected) == 252
    assert keys_2024 == expected  # same keys, same (sorted) order, no duplicates


@pytest.mark.parametrize(
    "holiday", ["2024-01-01", "2024-01-15", "2024-03-29", "2024-07-04", "2024-11-28", "2024-12-25"]
)
def test_holidays_are_not_partitions(keys_2024, holiday):
    assert holiday not in keys_2024


@pytest.mark.parametrize("early_close", ["2024-07-03", "2024-11-29", "2024-12-24"])
def test_early_close_days_are_partitions(keys_2024, early_close):
    assert early_close in keys_2024


def test_no_weekend_keys(keys_2024):
    assert all(date.fromisoformat(k).weekday() < 5 for k in keys_2024)


def test_partition_start_on_a_session():
    assert trading_day_partitions("2020-01-02").get_first_partition_key() == "2020-01-02"


@pytest.mark.parametrize(
    "start, first",
    [
        ("2024-01-01", "2024-01-02"),  # New Year's Day
        ("2024-01-06", "2024-01-08"),  # Saturday
        ("2024-03-29", "2024-04-01"),  # Good Friday
    ],
)
def test_partition_start_on_a_closed_day_begins_at_next_session(start, first):
    assert trading_day_partitions(start).get_first_partition_key() == first


def test_partition_start_must_be_an_iso_date():
    with pytest.raises(ConfigError):
        trading_day_partitions("2024/01/02")


# --------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "bad", ["../etc", "2024-13-01", "2024-1-2", "2024-02-30", "2024-01-02/../x", "2024-01-02 ", "", "20240102"]
)
def test_validate_partition_key_rejects(bad):
    with pytest.raises(ConfigError):
        validate_partition_key(bad)


def test_validate_partition_key_accepts_iso_dates():
    assert validate_partition_key("2024-02-29") == date(2024, 2, 29)


@pytest.mark.parametrize("relative", ["../outside", "a/../../outside", "/etc/passwd", "a/b/../../../x"])
def test_resolve_under_rejects_traversal(tmp_path, relative):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ConfigError):
        resolve_under(root, relative)


def test_resolve_under_rejects_symlink_escape(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    with pytest.raises(ConfigError):
        resolve_under(root, "link/file.parquet")


def test_resolve_under_accepts_paths_inside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    assert resolve_under(root, "a/b/../c.parquet") == (root / "a" / "c.parquet").resolve()
    assert resolve_under(root, ".") == root.resolve()


# --------------------------------------------------------------------------- assign_session


def _ny(y, m, d, hh, mm) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=NEW_YORK)


CASES = [
    (_ny(2024, 3, 14, 15, 59), date(2024, 3, 14)),  # before the close: same session
    (_ny(2024, 3, 14, 16, 0), date(2024, 3, 15)),  # at the close: next session
    (_ny(2024, 3, 14, 16, 30), date(2024, 3, 15)),
    (_ny(2024, 3, 14, 3, 0), date(2024, 3, 14)),  # pre-market counts for the same day
    (_ny(2024, 11, 29, 12, 59), date(2024, 11, 29)),  # early close (13:00)
    (_ny(2024, 11, 29, 13, 0), date(2024, 12, 2)),
    (_ny(2024, 11, 29, 13, 30), date(2024, 12, 2)),
    (_ny(2024, 7, 3, 13, 30), date(2024, 7, 5)),  # early close, then Independence Day
    (_ny(2024, 3, 16, 11, 0), date(2024, 3, 18)),  # Saturday -> Monday
    (_ny(2024, 3, 17, 23, 59), date(2024, 3, 18)),  # Sunday night -> Monday
    (_ny(2024, 1, 12, 17, 0), date(2024, 1, 16)),  # Friday evening before MLK day
    (_ny(2024, 1, 15, 10, 0), date(2024, 1, 16)),  # on the holiday itself
    (_ny(2024, 3, 8, 15, 30), date(2024, 3, 8)),  # EST: close is 21:00 UTC
    (_ny(2024, 3, 11, 16, 30), date(2024, 3, 12)),  # EDT: close is 20:00 UTC
]


def _assign(stamps: list[datetime]) -> list[date]:
    utc = [s.astimezone(UTC) for s in stamps]
    frame = pl.DataFrame({"ts": utc}, schema={"ts": pl.Datetime("us", "UTC")})
    return frame.select(assign_session(pl.col("ts")).alias("s"))["s"].to_list()


@pytest.mark.parametrize("stamp, expected", CASES, ids=[c[0].strftime("%Y-%m-%d %H:%M NY") for c in CASES])
def test_assign_session(stamp, expected):
    assert _assign([stamp]) == [expected]


def test_assign_session_vectorised_and_timezone_agnostic():
    stamps = [c[0] for c in CASES]
    expected = [c[1] for c in CASES]
    assert _assign(stamps) == expected
    # The same instants typed in New York time give the same sessions.
    ny = pl.DataFrame({"ts": stamps}, schema={"ts": pl.Datetime("us", "America/New_York")})
    assert ny.select(assign_session(pl.col("ts")).alias("s"))["s"].to_list() == expected


def test_assign_session_one_microsecond_before_and_at_the_close():
    close = session_close_utc(date(2024, 11, 29))
    assert close == datetime(2024, 11, 29, 18, 0, tzinfo=UTC)  # 13:00 EST
    assert _assign([close - timedelta(microseconds=1), close]) == [date(2024, 11, 29), date(2024, 12, 2)]


def test_session_close_rejects_non_sessions():
    with pytest.raises(ValueError):
        session_close_utc(date(2024, 7, 4))
