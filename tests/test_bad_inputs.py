"""The bad-input corpus (``tests/bad_inputs/cases.yaml``) through the Dagster layer.

Each case materialises the ingestion assets over five sessions with the ``files`` source on
its own mapping (the assets its files feed), in a temp copy of the corpus and a temp data dir. An ``error`` case must fail
with every expected substring in the step's error (file, column, row or date, and a hint) and
leave no partition file and no materialisation; a ``warning`` case must succeed with a logged
warning holding the substrings; an ``accepted`` case must succeed. One job definition and one
instance serve every case (config per run), so the corpus runs in seconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from finnex_assets.assets.ingestion import modalities
from finnex_assets.io_managers import PartitionedParquetIOManager
from finnex_assets.resources import DataSourceResource
from finnex_assets.storage import FinnexStorage

CORPUS = Path(__file__).resolve().parent / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text(encoding="utf-8"))["cases"]
RANGE = ("2024-03-04", "2024-03-08")
PARTITIONS = 5


def test_corpus_is_big_and_well_formed():
    names = [c["name"] for c in CASES]
    assert len(names) >= 40 and len(set(names)) == len(names)
    for c in CASES:
        assert c["expect"] in ("error", "warning", "accepted"), c["name"]
        assert (CORPUS / c["mapping"]).exists(), c["name"]
        assert c["expect"] == "accepted" or c["contains"], f"{c['name']}: say what the message must hold"
    assert sum(c["expect"] == "error" for c in CASES) >= 30


def _generate(kind: str, folder: Path, outside: Path) -> None:
    if kind == "oversized_text":  # 150k characters: too big to keep in git for one cell
        (folder / "tweets.csv").write_text(
            'Datetime,Text\n2024-03-01T15:00:00Z,short\n2024-03-04T15:00:00Z,"' + "x" * 150_000 + '"\n',
            encoding="utf-8",
        )
    elif kind == "symlink_escape":  # git keeps symlinks, but not one to a path on this machine
        target = outside / "secret.csv"
        target.write_text("Date,Secret\n2024-03-04,1\n", encoding="utf-8")
        os.symlink(target, folder / "link.csv")
    else:
        raise AssertionError(f"unknown generator {kind}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    cases = root / "cases"
    shutil.copytree(CORPUS, cases, symlinks=True, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    for c in CASES:
        if c.get("generate"):
            _generate(c["generate"], cases / c["name"], root)
    return cases


@pytest.fixture(scope="module")
def job():
    storage = FinnexStorage.configure_at_launch()  # one instance: the IO manager gets the launched config
    defs = dg.Definitions(
        assets=[modalities],
        resources={
            "data_source": DataSourceResource.configure_at_launch(),
            "storage": storage,
            "io_manager": PartitionedParquetIOManager(storage=storage),
        },
    )
    return defs.resolve_implicit_global_asset_job_def()


@pytest.fixture(scope="module")
def instance():
    return dg.DagsterInstance.ephemeral()


def _error_text(result) -> str:
    parts = []
    for event in result.get_step_failure_events():
        err = event.step_failure_data.error
        while err is not None:
            parts.append(err.message)
            err = err.cause
    return "\n".join(parts)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case, corpus, job, instance, tmp_path, monkeypatch):
    monkeypatch.setenv("FINNEX_FILES_ROOT", str(corpus))
    data = tmp_path / "tables"  # under the data root tmp_path
    result = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        asset_selection=[dg.AssetKey(a) for a in case["assets"]],
        run_config={
            "resources": {
                "data_source": {"config": {"kind": "files", "mapping_path": case["mapping"]}},
                "storage": {"config": {"root": str(tmp_path)}},
            }
        },
        tags={"dagster/asset_partition_range_start": RANGE[0], "dagster/asset_partition_range_end": RANGE[1]},
    )
    written = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.parquet")) if data.exists() else []
    if case["expect"] == "error":
        assert not result.success, f"{case['name']}: expected an error, the run succeeded"
        message = _error_text(result)
        for part in case["contains"]:
            assert part in message, f"{case['name']}: {part!r} not in {message!r}"
        assert written == [], f"{case['name']}: a failing case wrote {written[:3]}"
        assert result.get_asset_materialization_events() == []
        return
    assert result.success, f"{case['name']}: {_error_text(result)}"
    assert len(written) == PARTITIONS * len(case["assets"])
    warnings = [
        e.user_message
        for e in instance.all_logs(result.run_id)
        if e.level >= 30 and e.user_message and "files:" in e.user_message
    ]
    if case["expect"] == "warning":
        hits = [w for w in warnings if all(part in w for part in case["contains"])]
        assert hits, f"{case['name']}: no warning with {case['contains']} in {warnings}"
    else:
        assert warnings == [], f"{case['name']}: unexpected warnings {warnings}"


def test_readme_lists_every_case():
    """The README's corpus table is the manifest's (regenerate it with make_corpus.py --table)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (CORPUS.parent.parent / "README.md").read_text(encoding="utf-8")
    assert module.readme_table(CASES) in readme
