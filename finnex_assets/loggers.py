"""Where a run's log lines go besides the instance (the UI's run logs, which keep everything).

* ``console``: the terminal. The ``finnex`` CLI sets it to WARNING and draws progress instead
  (``finnex --verbose`` sets DEBUG); a run launched from the UI keeps Dagster's INFO.
* ``run_log_file``: every line from DEBUG up, to ``$DAGSTER_HOME/logs/<run id>.log``.
* ``stage_progress``: step starts and ends, handed to :mod:`finnex_ml.progress` so the CLI's
  terminal shows one line per stage. It prints nothing itself.
"""

import logging
import os
from pathlib import Path

import dagster as dg

from finnex_ml import progress
from finnex_ml.paths import REPO_ROOT

LINE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def log_dir() -> Path:
    return Path(os.environ.get("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))) / "logs"


@dg.logger(
    config_schema={
        "path": dg.Field(str, default_value="", description="default: $DAGSTER_HOME/logs/<run id>.log"),
        "log_level": dg.Field(str, default_value="DEBUG"),
    },
    description="Every log line of the run, to a file per run.",
)
def run_log_file(init_context: dg.InitLoggerContext) -> logging.Logger:
    cfg = init_context.logger_config
    path = Path(cfg["path"]) if cfg["path"] else log_dir() / f"{init_context.run_id or 'run'}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.Logger(f"finnex.run_log_file.{path.stem}", level=cfg["log_level"].upper())
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LINE_FORMAT))
    logger.addHandler(handler)
    return logger


class _StageHandler(logging.Handler):
    """Step events -> :func:`finnex_ml.progress.stage_started` / ``stage_finished``."""

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "dagster_event", None)
        if event is None or not event.step_key:
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            progress.stage_started(event.step_key)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            progress.stage_finished(event.step_key, ok=kind == "STEP_SUCCESS")


@dg.logger(description="Step starts and ends for the finnex CLI's progress display.")
def stage_progress(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("finnex.stage_progress", level=logging.DEBUG)
    logger.addHandler(_StageHandler())
    return logger


LOGGERS = {"console": dg.colored_console_logger, "run_log_file": run_log_file, "stage_progress": stage_progress}
