"""The daily schedule: after the New York close, materialise that session's partition."""

from datetime import date, datetime

import dagster as dg

from finnex_ml import calendar

# Everything per-date (ingestion -> features -> images -> labels -> patches); training stays manual.
DAILY_GROUPS = ("ingestion", "features", "images", "labels", "patches")
# A session's 5-day label only exists 5 sessions later, so each tick rebuilds the last few
# sessions too; every stage is deterministic, so the dates already built get the same bytes.
RELABEL_SESSIONS = 5

daily_job = dg.define_asset_job(
    "finnex_daily",
    selection=dg.AssetSelection.groups(*DAILY_GROUPS),
    description="One session through every per-date stage; what the daily schedule runs.",
)


def session_for_tick(tick: datetime) -> str | None:
    """The session a tick at ``tick`` (New York time) should build, or None on a non-session."""
    day = tick.astimezone(calendar.NEW_YORK).date()
    return day.isoformat() if calendar.is_session(day) else None


# Universe mode's per-date stages: every ticker of the universe on each date, one run per range.
universe_job = dg.define_asset_job(
    "finnex_universe",
    selection=dg.AssetSelection.groups("universe")
    - dg.AssetSelection.assets("universe_splits", "universe_model", "universe_walk_forward", "universe_evaluation"),
    description="Universe prices, features, images and labels for a range of trading dates (the whole universe).",
)


def _after_close(name: str, job, run_key_prefix: str) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=name,
        cron_schedule="30 17 * * 1-5",  # 17:30 New York: after the 16:00 close (13:00 on early closes)
        execution_timezone="America/New_York",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,  # off in dev; turn on in the UI or via the daemon
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        key = session_for_tick(context.scheduled_execution_time)
        if key is None:
            return dg.SkipReason(f"{context.scheduled_execution_time.date()} is not an NYSE session")
        first = calendar.sessions_back(date.fromisoformat(key), RELABEL_SESSIONS + 1).isoformat()
        # One run over [t-5, t]; run_key makes re-evaluating the same tick idempotent.
        return dg.RunRequest(
            run_key=f"{run_key_prefix}-{key}",
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": key},
        )

    return _schedule


daily_after_close = _after_close("daily_after_close", daily_job, "daily")
universe_after_close = _after_close("universe_after_close", universe_job, "universe")
