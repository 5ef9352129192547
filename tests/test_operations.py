"""Operations: the daily schedule, partitions around closes, deployment files, config validation."""

import os
import re
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema

from finnex_assets.partitions import trading_day_partitions
from finnex_assets.resources import DataSourceResource
from finnex_assets.schedules import daily_after_close, session_for_tick
from finnex_ml import calendar
from finnex_ml.errors import ConfigError

NY = ZoneInfo("America/New_York")
DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _tick(day: str, hh: int = 17, mm: int = 30):
    y, m, d = map(int, day.split("-"))
    return daily_after_close(dg.build_schedule_context(scheduled_execution_time=datetime(y, m, d, hh, mm, tzinfo=NY)))


@pytest.mark.parametrize(
    "day,expected",
    [
        ("2024-11-27", "2024-11-27"),  # Wednesday before Thanksgiving
        ("2024-11-28", None),  # Thanksgiving
        ("2024-11-29", "2024-11-29"),  # early close (13:00) is still a session
        ("2024-07-04", None),  # Independence Day
        ("2024-07-05", "2024-07-05"),  # Friday after
        ("2025-01-09", None),  # national day of mourning (special closure)
        ("2024-12-31", "2024-12-31"),
        ("2025-01-01", None),
    ],
)
def test_schedule_ticks_target_the_session_or_skip(day, expected):
    result = _tick(day)
    if expected is None:
        assert isinstance(result, dg.SkipReason) and day in result.skip_message
    else:
        assert isinstance(result, dg.RunRequest)
        assert result.run_key == f"daily-{expected}"
        assert result.tags["dagster/asset_partition_range_end"] == expected
        # the range reaches back 5 sessions so the newly complete 1- and 5-day labels are built
        first = result.tags["dagster/asset_partition_range_start"]
        assert len(calendar.sessions(first, expected)) == 6


def test_schedule_partition_exists_at_tick_time():
    """A tick's partition must already be a key when the tick fires (after the close)."""
    parts = trading_day_partitions("2024-01-02")
    for d in calendar.sessions("2024-01-02", "2024-12-31"):
        tick = datetime(d.year, d.month, d.day, 17, 30, tzinfo=NY)
        keys = parts.get_partition_keys(current_time=tick)
        assert keys[-1] == d.isoformat() == session_for_tick(tick)
        assert len(keys) == len(calendar.sessions("2024-01-02", d))


def test_schedule_is_off_by_default_and_registered():
    from finnex_assets.definitions import defs

    sched = defs.resolve_schedule_def("daily_after_close")
    assert sched.default_status == dg.DefaultScheduleStatus.STOPPED
    assert sched.execution_timezone == "America/New_York"
    assert sched.cron_schedule == "30 17 * * 1-5"


def test_production_dagster_yaml_is_a_valid_instance_config():
    config = yaml.safe_load((DOCKER / "dagster.yaml").read_text())
    result = validate_config(dagster_instance_config_schema(), config)
    assert result.success, [e.message for e in result.errors]
    assert "postgres" in config["storage"]
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_coordinator"]["config"]["max_concurrent_runs"] >= 1
    pg = config["storage"]["postgres"]["postgres_db"]
    assert all(isinstance(pg[k], dict) and "env" in pg[k] for k in ("username", "password", "hostname"))


def test_embedded_dagster_yaml_is_a_valid_instance_config():
    config = yaml.safe_load((DOCKER.parent / "dagster_home" / "dagster.yaml").read_text())
    assert validate_config(dagster_instance_config_schema(), config).success


def test_compose_file_has_the_services_volumes_and_no_secrets():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "code", "webserver", "daemon", "mlflow"} <= set(services)
    assert {"data", "mlartifacts", "pgdata"} <= set(compose["volumes"])
    for name in ("code", "webserver", "daemon"):
        assert "data:/data" in services[name]["volumes"]
    assert "mlartifacts:/mlartifacts" in services["mlflow"]["volumes"]
    # published ports bind to loopback only
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    # the webserver and daemon load code over gRPC from the code service
    ws = yaml.safe_load((DOCKER / "workspace.yaml").read_text())
    assert ws["load_from"][0]["grpc_server"]["host"] == "code"
    text = (DOCKER / "docker-compose.yml").read_text()
    assert "POSTGRES_PASSWORD_FILE: /run/secrets/postgres_password" in text  # a secret file, no default
    for path in DOCKER.rglob("*"):
        if path.is_file():
            body = path.read_text()
            # a value on the same line (a `postgres_password:` key over a nested `file:` is not one)
            assert not re.search(r"password[ \t]*[:=][ \t]*['\"]?[A-Za-z0-9]{4,}", body, re.I), path


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_password_is_a_secret_file_never_argv_or_environment():
    """ps shows argv and docker inspect shows command, entrypoint and environment: the password
    must be in none of them, only in the secret file that the entrypoint reads."""
    compose = _compose()
    assert compose["secrets"]["postgres_password"]["file"].endswith("secrets/postgres_password}")
    for name, svc in compose["services"].items():
        for key in ("command", "entrypoint"):
            argv = svc.get(key, [])
            argv = " ".join(argv) if isinstance(argv, list) else str(argv)
            assert not re.search(r"password|postgresql://[^@\s]*:[^@\s]*@", argv, re.I), (name, key, argv)
        env = svc.get("environment", {})
        assert not any(re.search(r"PASSWORD$", k) for k in env), (name, env)
        assert not any("${POSTGRES_PASSWORD" in str(v) for v in env.values()), (name, env)
        assert "postgres_password" in svc.get("secrets", []), name
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    entry = (DOCKER / "with-secrets.sh").read_text()
    assert "export DAGSTER_PG_PASSWORD" in entry and "export MLFLOW_BACKEND_STORE_URI" in entry
    assert 'ENTRYPOINT ["/usr/local/bin/with-secrets"]' in (DOCKER / "Dockerfile").read_text()
    assert os.access(DOCKER / "with-secrets.sh", os.X_OK)
    assert "/docker/secrets/" in (DOCKER.parent / ".gitignore").read_text()


def test_compose_internal_services_are_on_an_internal_network_only():
    compose = _compose()
    assert compose["networks"]["backend"]["internal"] is True
    services = compose["services"]
    for name in ("postgres", "code", "daemon", "mlflow"):
        assert services[name]["networks"] == ["backend"], name
        assert "ports" not in services[name], name  # not published on any host interface
    assert set(services["webserver"]["networks"]) == {"backend", "frontend"}
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    override = yaml.safe_load((DOCKER / "mlflow-ui.override.yml").read_text())
    assert override["services"]["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]


def test_dockerfile_runs_the_grpc_code_server_as_non_root():
    text = (DOCKER / "Dockerfile").read_text()
    assert "USER finnex" in text
    assert '"dagster", "api", "grpc"' in text


@pytest.mark.parametrize("bad", ["../etc/passwd.yaml", "/etc/passwd", "examples/../../x.yaml"])
def test_files_mapping_path_traversal_is_rejected(bad, monkeypatch, tmp_path):
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="escapes"):
        DataSourceResource(kind="files", mapping_path=bad).source()


def test_data_dir_partition_paths_are_validated(tmp_path):
    from finnex_assets.storage import FinnexStorage

    tables = FinnexStorage(root=str(tmp_path)).tables
    assert (
        tables.path(["daily_features"], "2024-03-04")
        == tmp_path.resolve() / "tables/daily_features/2024/2024-03-04.parquet"
    )
    for key in ("../../etc", "2024-03-04/../../x", "2024-3-4"):
        with pytest.raises(ConfigError):
            tables.path("daily_features", key)
    with pytest.raises(ConfigError):
        tables.path(["..", "evil"], "2024-03-04")


def test_cli_ui_binds_to_loopback(monkeypatch):
    import finnex_assets.cli as cli

    seen = {}
    monkeypatch.chdir(cli.REPO_ROOT)  # the ui command changes into the repository
    monkeypatch.setattr(cli.os, "execv", lambda path, cmd: seen.update(path=path, cmd=cmd))
    monkeypatch.setattr(cli, "_sweep", lambda dry_run: seen.update(swept=not dry_run))  # not the repo's home
    monkeypatch.setattr(cli, "_ensure_initialised", lambda: seen.update(initialised=True))
    cli.main(["ui", "--port", "3999"])
    assert seen["swept"] and seen["initialised"]  # killed runs are failed before the UI and daemon start
    cmd = seen["cmd"]
    assert seen["path"] == cmd[0] and cmd[1:5] == ["-m", "dagster", "dev", "-h"]  # replaces the process
    assert cmd[cmd.index("-h") + 1] == "127.0.0.1" and "3999" in cmd


def test_partition_start_is_configurable():
    assert trading_day_partitions("2024-01-01").get_first_partition_key() == "2024-01-02"
    assert trading_day_partitions("2020-01-02").get_first_partition_key() == "2020-01-02"
    with pytest.raises(ConfigError):
        trading_day_partitions("2020/01/02")
    assert date(2024, 7, 4).isoformat() not in trading_day_partitions("2024-01-02").get_partition_keys()


def test_secrets_entrypoint_puts_the_password_in_the_environment_only(tmp_path):
    import subprocess
    import sys

    secret = tmp_path / "postgres_password"
    secret.write_text("p@ss:w/rd", encoding="utf-8")
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "POSTGRES_PASSWORD_FILE": str(secret),
        "DAGSTER_PG_USER": "finnex",
        "DAGSTER_PG_HOST": "postgres",
    }
    out = subprocess.run(
        [
            "sh",
            str(DOCKER / "with-secrets.sh"),
            sys.executable,
            "-c",
            "import os; print(os.environ['DAGSTER_PG_PASSWORD']); print(os.environ['MLFLOW_BACKEND_STORE_URI'])",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["p@ss:w/rd", "postgresql://finnex:p%40ss%3Aw%2Frd@postgres:5432/mlflow"]


def test_universe_schedule_builds_the_whole_universe_for_the_session():
    from finnex_assets.definitions import defs

    sched = defs.resolve_schedule_def("universe_after_close")
    assert sched.job_name == "finnex_universe" and sched.cron_schedule == "30 17 * * 1-5"
    job = defs.resolve_job_def("finnex_universe")
    keys = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert keys == {"universe_prices", "universe_features", "universe_images", "universe_labels"}
    tick = datetime(2024, 11, 29, 17, 30, tzinfo=NY)  # an early-close session
    req = sched.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick)).run_requests[0]
    assert req.run_key == "universe-2024-11-29"
    assert req.tags["dagster/asset_partition_range_end"] == "2024-11-29"


@pytest.mark.parametrize(
    "source, universe, planted, mode",
    [
        ("", "", "", "universe"),  # the default demo is the synthetic universe
        ("", "packaged-panel", "", "universe"),
        ("", "", "cross_section:1", "universe"),
        ("synthetic", "", "", "single"),
        ("files", "", "", "single"),
        ("", "", "level:1.0", "single"),  # single-stock positive controls keep working without --source
        ("", "", "temporal:0.7", "single"),
    ],
)
def test_demo_mode(source, universe, planted, mode):
    from finnex_assets.cli import demo_mode

    assert demo_mode(source, universe, planted) == mode


def test_files_demo_runs_every_stage_on_a_long_history_and_only_features_on_a_short_one(tmp_path, monkeypatch):
    """``finnex demo --source files`` starts the images where the files' prices cover their
    feature lookback, and on too short a history says what is missing and runs features only."""
    import subprocess
    import sys

    from finnex_assets.assets.images import LOOKBACK
    from finnex_assets.cli import MIN_IMAGE_DATES, files_plan

    repo = Path(__file__).resolve().parent.parent
    script = repo / "examples" / "files_source" / "make_example.py"
    made = subprocess.run(
        [sys.executable, str(script), "--start", "2022-01-03", "--sessions", "750", "--out", str(tmp_path / "long")],
        env={**os.environ, "PYTHONPATH": str(repo)},
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("FINNEX_SOURCE", "files")
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(tmp_path))
    monkeypatch.setenv("FINNEX_FILES_MAPPING", "long/mapping.yaml")
    first, last = date(2022, 1, 3), calendar.sessions(date(2022, 1, 3), date(2025, 1, 31))[749]
    plan = files_plan(None, None)
    assert plan.full and plan.end == last.isoformat()
    start = date.fromisoformat(plan.start)
    assert calendar.sessions_back(start, LOOKBACK) == first  # the lookback begins at the first price
    assert calendar.sessions_back(calendar.sessions_back(start, 2), LOOKBACK) < first  # one earlier would not fit
    assert f"images, labels, model and evaluation over {start}..{last}" in plan.message
    narrowed = files_plan("2022-02-01", "2024-06-28")  # a start inside the lookback moves to the first possible
    assert (narrowed.start, narrowed.end, narrowed.full) == (plan.start, "2024-06-28", True)

    monkeypatch.setenv("FINNEX_FILES_ROOT", str(repo))
    monkeypatch.setenv("FINNEX_FILES_MAPPING", "examples/files_source/mapping.yaml")
    short = files_plan(None, None)
    assert not short.full and (short.start, short.end) == ("2023-01-03", "2024-03-13")
    assert "300 sessions" in short.message and f"{LOOKBACK + MIN_IMAGE_DATES} sessions in all" in short.message
    assert "feature stage only" in short.message and "Next step" in short.message


class _Fail(dg.Config):
    fail: bool = False
    passed: bool = True


@dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="flaky_thing")])
def flaky_thing(config: _Fail):
    if config.fail:
        raise ValueError("stops before its check")
    yield dg.Output(1)
    failing = {} if config.passed else {"failing_dates": dg.MetadataValue.json(["2024-01-02"])}
    yield dg.AssetCheckResult(check_name="positive", passed=config.passed, metadata=failing)


def test_qa_history_counts_completed_evaluations_over_every_page():
    """The QA report's executions are completed evaluations only, read page by page; a run that
    stopped before its check was evaluated is counted apart, not as an execution."""
    from finnex_assets.assets.evaluation import check_history

    instance = dg.DagsterInstance.ephemeral()
    for _ in range(5):
        assert dg.materialize([flaky_thing], instance=instance).success
    failed = dg.materialize(
        [flaky_thing],
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"flaky_thing": {"config": {"fail": True}}}},
    )
    assert not failed.success
    key = dg.AssetCheckKey(dg.AssetKey("flaky_thing"), "positive")
    (row,) = check_history(instance, [key], page=2)  # 5 completed records over 3 pages
    assert (row["executions"], row["passed"], row["failed"], row["planned_not_evaluated"]) == (5, 5, 0, 1)
    assert row["latest"] == "passed"  # the newest *completed* evaluation
    for _ in range(2):
        dg.materialize(
            [flaky_thing], instance=instance, run_config={"ops": {"flaky_thing": {"config": {"passed": False}}}}
        )
    (row,) = check_history(instance, [key], page=2)
    assert (row["executions"], row["passed"], row["failed"], row["planned_not_evaluated"]) == (7, 5, 2, 1)
    assert (row["latest"], row["failing_dates"]) == ("failed", "2024-01-02")
    never = dg.AssetCheckKey(dg.AssetKey("nothing"), "positive")
    assert check_history(instance, [never])[0]["latest"] == "never run"
