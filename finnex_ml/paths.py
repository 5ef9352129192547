"""Data-root resolution and validation of anything that becomes a filesystem path."""

from __future__ import annotations

import functools
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finnex_ml.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl

REPO_ROOT = Path(__file__).resolve().parent.parent
_DATE_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def data_root() -> Path:
    """``FINNEX_DATA_DIR`` if set, else ``<repo>/data`` (git-ignored)."""
    return Path(os.environ.get("FINNEX_DATA_DIR") or REPO_ROOT / "data").resolve()


def validate_partition_key(key: str) -> date:
    """A partition key must be an ISO date; anything else never reaches a path."""
    if not isinstance(key, str) or not _DATE_KEY.match(key):
        raise ConfigError(f"partition key {key!r} is not an ISO date YYYY-MM-DD")
    try:
        return date.fromisoformat(key)
    except ValueError as exc:
        raise ConfigError(f"partition key {key!r} is not a valid date: {exc}") from exc


def safe_name(name: str) -> str:
    """A single path component: no separators, no '..', no leading dot."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise ConfigError(f"{name!r} is not a safe file or folder name")
    return name


def resolve_under(root: Path, relative: str | os.PathLike[str]) -> Path:
    """Resolve ``relative`` under ``root`` and refuse anything that escapes it."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise ConfigError(f"path {str(relative)!r} escapes the data root {root}")
    return target


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock on ``path`` (created if absent), held for the block.

    For one-time initialisation that concurrent first uses would otherwise race (sqlite schema
    migrations). POSIX ``flock``; elsewhere a no-op."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# fsync around the rename (see atomic_path). Module-level so benchmarks/bench_mega_images.py can
# measure its cost in the same run; production code never turns it off.
DURABLE = True


def fsync_file(path: Path) -> None:
    """Flush a closed file's data (and the size needed to read it back) to the device."""
    fd = os.open(path, os.O_RDONLY)
    try:
        getattr(os, "fdatasync", os.fsync)(fd)  # the timestamps need not be durable
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename is durable only once its directory is); POSIX only."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path in the target folder; rename it over ``final`` only on success.

    A crash midway leaves the previous ``final`` untouched and only a stray ``.tmp`` file. The
    temp path does not exist yet (a random name: the writer creates it), unlike ``mkstemp``'s
    empty file, which HDF5 then has to truncate: ~0.4 ms of a ~2 ms image write.

    The temp file is fsynced before the rename and the folder after it: without the first, a
    power loss (not a killed process, whose written pages the kernel keeps) can leave an empty
    or partial file under the final name, since the rename may reach the disk before the data;
    without the second, the rename itself may be lost. ``durable=False`` skips both, for a file
    staged to be renamed again by a caller that fsyncs it before that rename (the universe
    images' commit), so the wait for the disk is paid once, after the kernel has written most of it.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    done = False
    try:
        yield tmp_path
        if DURABLE and durable:
            fsync_file(tmp_path)
        os.replace(tmp_path, final)
        done = True
        if DURABLE and durable:
            fsync_dir(final.parent)
    finally:
        if not done:
            tmp_path.unlink(missing_ok=True)


def write_json_atomic(path: Path, doc: Any) -> None:
    """``doc`` as indented JSON with sorted keys (anything not JSON-native as ``str``), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str), encoding="utf-8")


def write_parquet_atomic(path: Path, frame: pl.DataFrame) -> None:
    """``frame`` as Parquet (polars' defaults), atomically."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


_TEMP_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8,32}\.tmp$")  # atomic_path's names (and older mkstemp ones)


def sweep_stale_temps(root: Path | str, max_age_s: float = 3600.0) -> list[Path]:
    """Delete ``atomic_path`` temp files under ``root`` last modified over ``max_age_s`` ago:
    leftovers of writers killed midway. A live writer touches its temp file within seconds, so
    an hour-old one has no owner. Returns what was deleted."""
    root = Path(root)
    if not root.is_dir():
        return []
    cutoff = time.time() - max_age_s
    removed = []
    for p in root.rglob(".*.tmp"):
        try:
            if _TEMP_RE.match(p.name) and p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # another sweeper or its writer got there first
            continue
    return removed


def as_date(d: date | str) -> date:
    """An ISO date string or a date, as a date; anything else is a ConfigError."""
    if isinstance(d, date):
        return d
    try:
        return date.fromisoformat(d)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{d!r} is not an ISO date") from exc


def date_shard_path(root: Path | str, d: date | str, suffix: str = ".h5") -> Path:
    """``{root}/YYYY/MM/{date}{suffix}``: one file per date, so writers never share one."""
    d = as_date(d)
    if "/" in suffix or os.sep in suffix or ".." in suffix:
        raise ConfigError(f"suffix {suffix!r} must be a plain file extension")
    # the relative part is built from a date, so it cannot escape root: resolve root only (cached)
    # (abspath first: a relative root must follow the current directory, not the cache)
    return _resolved(os.path.abspath(root)) / f"{d.year:04d}" / f"{d.month:02d}" / f"{d.isoformat()}{suffix}"


@functools.lru_cache(maxsize=64)
def _resolved(root: str) -> Path:
    return Path(root).resolve()
