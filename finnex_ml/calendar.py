"""NYSE trading sessions from exchange_calendars (holidays and early closes maintained upstream)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import numpy as np
import polars as pl

NEW_YORK = ZoneInfo("America/New_York")
CALENDAR_START = date(1995, 1, 3)


@lru_cache(maxsize=1)
def _calendar() -> xcals.ExchangeCalendar:
    return xcals.get_calendar("XNYS", start=CALENDAR_START.isoformat())


@lru_cache(maxsize=1)
def all_sessions() -> tuple[date, ...]:
    """Every XNYS session the library knows, from 1995 to about a year ahead."""
    return tuple(ts.date() for ts in _calendar().sessions)


@lru_cache(maxsize=1)
def _session_array() -> np.ndarray:
    return np.array(all_sessions(), dtype="datetime64[D]")


def calendar_end() -> date:
    return all_sessions()[-1]


def sessions(start: date | str, end: date | str) -> list[date]:
    """Sessions in [start, end], both inclusive."""
    lo, hi = _as_date(start), _as_date(end)
    arr = _session_array()
    i = np.searchsorted(arr, np.datetime64(lo, "D"), side="left")
    j = np.searchsorted(arr, np.datetime64(hi, "D"), side="right")
    return list(all_sessions()[i:j])


def is_session(d: date | str) -> bool:
    d = _as_date(d)
    arr = _session_array()
    i = np.searchsorted(arr, np.datetime64(d, "D"))
    return bool(i < len(arr) and arr[i] == np.datetime64(d, "D"))


def session_on_or_after(d: date) -> date:
    arr = _session_array()
    i = int(np.searchsorted(arr, np.datetime64(d, "D"), side="left"))
    if i >= len(arr):
        raise ValueError(f"{d} is beyond the calendar's last session {calendar_end()}")
    return all_sessions()[i]


def session_on_or_before(d: date) -> date:
    arr = _session_array()
    i = int(np.searchsorted(arr, np.datetime64(d, "D"), side="right")) - 1
    if i < 0:
        raise ValueError(f"{d} is before the calendar's first session")
    return all_sessions()[i]


def sessions_back(end: date, n: int) -> date:
    """The session ``n-1`` sessions before the last session on or before ``end``."""
    arr = _session_array()
    j = int(np.searchsorted(arr, np.datetime64(end, "D"), side="right")) - 1
    return all_sessions()[max(0, j - (n - 1))]


def sessions_forward(start: date, n: int) -> date:
    """The session ``n`` sessions after the first session on or after ``start`` (clipped to the
    calendar's last session)."""
    arr = _session_array()
    j = int(np.searchsorted(arr, np.datetime64(start, "D"), side="left"))
    return all_sessions()[min(len(arr) - 1, j + n)]


def non_session_weekdays(start: date, end: date) -> list[date]:
    """Weekdays in [start, end] on which NYSE is closed (holidays and special closures)."""
    open_days = set(sessions(start, end))
    out, d = [], start
    while d <= end:
        if d.weekday() < 5 and d not in open_days:
            out.append(d)
        d += timedelta(days=1)
    return out


def assign_session(published: pl.Expr) -> pl.Expr:
    """Map a UTC timestamp to the first session whose close comes after it.

    Anything stamped at or after a session's close (16:00 New York, 13:00 on early-close
    days), or on a non-session day, is only tradeable from the next session, so it counts there.
    """
    return published.dt.convert_time_zone("UTC").map_batches(_session_for_instant, return_dtype=pl.Date)


@lru_cache(maxsize=1)
def _close_instants() -> np.ndarray:
    closes = _calendar().closes  # UTC timestamps, one per session
    return np.asarray(closes.values).astype("datetime64[us]")  # naive or aware, values are UTC


def _session_for_instant(s: pl.Series) -> pl.Series:
    closes = _close_instants()
    values = s.dt.replace_time_zone(None).to_numpy().astype("datetime64[us]")
    idx = np.searchsorted(closes, values, side="right")
    if len(idx) and idx.max() >= len(closes):
        raise ValueError("a timestamp falls after the calendar's last session")
    return pl.Series(s.name, _session_array()[idx]).cast(pl.Date)


def _as_date(d: date | str | datetime) -> date:
    if isinstance(d, datetime):
        return d.date()
    if isinstance(d, date):
        return d
    return date.fromisoformat(d)


def session_close_utc(d: date) -> datetime:
    """The close of session ``d`` as an aware UTC datetime (13:00 NY on early-close days)."""
    arr = _session_array()
    i = int(np.searchsorted(arr, np.datetime64(d, "D")))
    if i >= len(arr) or arr[i] != np.datetime64(d, "D"):
        raise ValueError(f"{d} is not an NYSE session")
    us = _close_instants()[i].astype("datetime64[us]").astype(np.int64)
    return datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC")) + timedelta(microseconds=int(us))
