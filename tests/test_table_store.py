"""finnex_ml.table_store: batched, atomic per-partition Parquet writes and their reads."""

import os
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

from finnex_ml import paths, table_store

DAYS = [date(2024, 3, 4) + timedelta(days=i) for i in range(5)]
KEYS = [d.isoformat() for d in DAYS]


def table(scale: float = 1.0) -> pl.DataFrame:
    """Three rows per date, deliberately not sorted by date, so order within a partition counts."""
    rows = [(d, i, scale * (10 * n + i)) for i in (2, 0, 1) for n, d in enumerate(DAYS)]
    return pl.DataFrame(rows, schema={"date": pl.Date, "row": pl.Int64, "x": pl.Float64}, orient="row")


def path_of(root: Path):
    return lambda key: root / key[:4] / f"{key}.parquet"


def write(root: Path, frame: pl.DataFrame, keys: list[str], **kw) -> list[Path]:
    return table_store.write_partitions(table_store.split_partitions(frame, "date", keys), path_of(root), **kw)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read(root: Path, keys: list[str]) -> pl.DataFrame:
    return table_store.read_partitions([path_of(root)(k) for k in keys])


def test_round_trip_returns_exactly_the_rows_of_the_requested_partitions(tmp_path):
    frame = table()
    written = write(tmp_path, frame, KEYS)
    assert written == [path_of(tmp_path)(k) for k in KEYS]
    assert sorted(tree(tmp_path)) == [f"2024/{k}.parquet" for k in KEYS]
    back = read(tmp_path, KEYS)
    # partition order, and within a partition the input's row order
    expected = pl.concat([frame.filter(pl.col("date") == d) for d in DAYS])
    assert back.equals(expected)
    assert read(tmp_path, KEYS[1:3]).equals(expected.filter(pl.col("date").is_in(DAYS[1:3])))
    assert read(tmp_path, []).height == 0


def test_split_in_chunks_gives_the_same_partitions_as_one_pass():
    frame = table()
    whole = list(table_store.split_partitions(frame, "date", KEYS, chunk=len(KEYS)))
    for chunk in (1, 2, 3):
        parts = table_store.split_partitions(frame, "date", KEYS, chunk=chunk)
        assert len(parts) == len(KEYS)
        got = list(parts)
        assert [k for k, _ in got] == KEYS
        assert all(a.equals(b) for (_, a), (_, b) in zip(got, whole, strict=True))
    assert [f.columns for _, f in whole] == [frame.columns] * len(KEYS)


def test_split_refuses_stray_rows_and_empty_partitions():
    with pytest.raises(ValueError, match="fall outside"):
        table_store.split_partitions(table(), "date", KEYS[:4])
    with pytest.raises(ValueError, match="no rows for partition 2024-03-11"):
        table_store.split_partitions(table(), "date", [*KEYS, "2024-03-11"])


def test_a_date_alone_is_byte_identical_to_the_same_date_in_a_range(tmp_path):
    frame = table()
    write(tmp_path / "range", frame, KEYS)
    write(tmp_path / "alone", frame.filter(pl.col("date") == DAYS[2]), [KEYS[2]])
    range_file = path_of(tmp_path / "range")(KEYS[2]).read_bytes()
    assert path_of(tmp_path / "alone")(KEYS[2]).read_bytes() == range_file
    assert read(tmp_path / "alone", [KEYS[2]]).equals(read(tmp_path / "range", [KEYS[2]]))


def test_rematerialising_one_date_supersedes_only_that_date(tmp_path):
    write(tmp_path, table(), KEYS)
    before = tree(tmp_path)
    write(tmp_path, table(scale=-1.0).filter(pl.col("date") == DAYS[1]), [KEYS[1]])
    after = tree(tmp_path)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {f"2024/{KEYS[1]}.parquet"}
    assert read(tmp_path, [KEYS[1]])["x"].to_list() == [-12.0, -10.0, -11.0]
    assert read(tmp_path, [KEYS[0]])["x"].to_list() == [2.0, 0.0, 1.0]


def test_a_writer_failing_mid_file_leaves_every_partition_old_and_no_temp(tmp_path):
    write(tmp_path, table(), KEYS)
    before = tree(tmp_path)
    calls = []

    def dies_on_the_third(frame: pl.DataFrame, path: Path) -> None:
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"PAR1 half a file")  # a torn temp, as a killed writer leaves it
            raise RuntimeError("killed mid-write")
        frame.write_parquet(path, statistics=True)

    with pytest.raises(RuntimeError, match="killed mid-write"):
        write(tmp_path, table(scale=2.0), KEYS, write=dies_on_the_third)
    assert len(calls) == 3
    assert tree(tmp_path) == before  # nothing renamed, every temp removed


def test_a_failure_between_renames_leaves_each_partition_old_or_new_never_torn(tmp_path, monkeypatch):
    write(tmp_path, table(), KEYS)
    real_replace, done = os.replace, []

    def replace_twice_then_die(src, dst):
        if len(done) == 2:
            raise OSError("killed between renames")
        real_replace(src, dst)
        done.append(dst)

    monkeypatch.setattr(table_store.os, "replace", replace_twice_then_die)
    with pytest.raises(OSError, match="between renames"):
        write(tmp_path, table(scale=2.0), KEYS)
    monkeypatch.undo()
    assert not [p for p in tmp_path.rglob("*.tmp")]
    new, old = table(scale=2.0), table()
    for d, k in zip(DAYS, KEYS, strict=True):
        got = read(tmp_path, [k])
        want = (new if k in KEYS[:2] else old).filter(pl.col("date") == d)
        assert got.equals(want), k


def test_every_temp_is_flushed_before_the_first_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(table_store, "flush_files", lambda files: events.append(f"flush {len(files)}"))
    monkeypatch.setattr(table_store.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    monkeypatch.setattr(paths, "DURABLE", True)
    write(tmp_path, table(), KEYS)
    assert events == ["flush 5"] + ["rename"] * 5


def test_flush_files_falls_back_to_one_fdatasync_per_file(tmp_path, monkeypatch):
    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for f in files:
        f.write_bytes(b"x")
    synced: list[Path] = []
    monkeypatch.setattr(table_store, "_syncfs", lambda folder: False)
    monkeypatch.setattr(paths, "fsync_file", lambda p: synced.append(p))
    table_store.flush_files(files)
    assert synced == files


def test_read_partitions_refuses_files_whose_schemas_disagree(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(a)
    pl.DataFrame({"x": ["one"]}).write_parquet(b)
    with pytest.raises(pl.exceptions.SchemaError):
        table_store.read_partitions([a, b])
    wide = tmp_path / "wide.parquet"
    pl.DataFrame({"x": [2], "y": [3.0]}).write_parquet(wide)
    both = table_store.read_partitions([a, wide], how="diagonal_relaxed")
    assert both.to_dict(as_series=False) == {"x": [1, 2], "y": [None, 3.0]}
