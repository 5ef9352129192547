"""Networks retrained per pooled walk-forward fold: the inner validation block is disjoint from
and purged before the scored block, the pooled rows are the union of the folds' test rows, and
cached folds are reused (no training on a second call)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from finnex_ml import calendar
from finnex_ml.evaluation import network_folds as nf
from finnex_ml.evaluation import walkforward as wf

PURGE = 5
DATES = calendar.sessions("2022-01-03", "2023-12-29")


def _read(path: Path) -> list[date]:
    return [date.fromisoformat(d) for d in json.loads(Path(path).read_text())]


@pytest.fixture
def fake_training(monkeypatch):
    """Set files are date lists; training records what it was given; a "model" predicts a
    function of the date, so pooled predictions can be checked row by row."""
    calls: list[dict] = []

    def write_set(path: Path, name: str, ds) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([d.isoformat() for d in ds]))
        return path

    def train_fold(lm, fit_file, val_file, ckpt_dir, epochs, seeds):
        calls.append({"fit": _read(fit_file), "val": _read(val_file), "epochs": epochs, "seeds": list(seeds)})
        return SimpleNamespace(horizons=lm.horizons), [{"seed": s, "best_epoch": 1, "epochs_run": 1} for s in seeds]

    def predict(lm, set_file):
        ds = _read(set_file)
        ordinal = np.array([d.toordinal() for d in ds], dtype=np.float64)
        probs = np.zeros((len(ds), len(lm.horizons), 3))
        probs[..., 0] = (ordinal % 7)[:, None]
        return SimpleNamespace(probs=probs, returns=np.tile(ordinal[:, None], (1, len(lm.horizons))))

    monkeypatch.setattr(nf, "_train_fold", train_fold)
    monkeypatch.setattr(nf, "predict_set", predict)
    return write_set, calls


def _run(tmp_path: Path, write_set, folds, hashes, epochs=3, seeds=(0, 1)):
    model = SimpleNamespace(horizons=[1, 5], config={"model": "cnn", "epochs": 20, "patience": 6})
    return nf.pooled_networks(
        {"cnn_model": model},
        DATES,
        folds,
        write_set=write_set,
        data_hashes=hashes,
        cache_dir=tmp_path / "cache",
        epochs=epochs,
        seeds=seeds,
        purge=PURGE,
    )["cnn_model"]


def test_each_fold_trains_on_an_inner_block_purged_before_its_validation_and_the_test(tmp_path, fake_training):
    write_set, calls = fake_training
    folds = wf.yearly_folds(DATES, purge=PURGE, min_train=240, block_sessions=None)
    assert [f.label for f in folds] == ["2023"]
    folds = wf.yearly_folds(DATES, purge=PURGE, min_train=200, block_sessions=126)  # several folds
    assert len(folds) >= 2
    net = _run(tmp_path, write_set, folds, ["d"] * len(folds))
    assert len(calls) == len(folds) and net.trained_folds == len(folds)
    for f, call in zip(folds, calls, strict=True):
        test = [DATES[i] for i in f.test]
        fit, val = call["fit"], call["val"]
        assert (call["epochs"], call["seeds"]) == (3, [0, 1])
        # fit < purge gap < inner validation < purge gap < scored block, all disjoint
        assert max(fit) < min(val) and max(val) < min(test)
        assert DATES.index(min(val)) - DATES.index(max(fit)) == PURGE + 1
        assert DATES.index(min(test)) - DATES.index(max(val)) == PURGE + 1
        assert len(val) == round((len(fit) + PURGE + len(val)) * 0.2)
    # pooled rows: exactly the union of the folds' test rows, in date order, predictions aligned
    union = np.concatenate([f.test for f in folds])
    assert np.array_equal(net.rows, union) and np.all(np.diff(net.rows) > 0)
    ordinal = np.array([DATES[i].toordinal() for i in net.rows])
    assert np.array_equal(net.probs[:, 1, 0], ordinal % 7) and np.array_equal(net.returns[:, 0], ordinal)
    assert [m["cached"] for m in net.folds] == [False] * len(folds)


def test_cached_folds_are_reused_and_a_changed_input_retrains_only_its_fold(tmp_path, fake_training):
    write_set, calls = fake_training
    folds = wf.yearly_folds(DATES, purge=PURGE, min_train=200, block_sessions=126)
    hashes = [f"data{f.index}" for f in folds]
    first = _run(tmp_path, write_set, folds, hashes)
    n = len(calls)
    again = _run(tmp_path, write_set, folds, hashes)
    assert len(calls) == n  # nothing trained the second time
    assert again.trained_folds == 0 and all(m["cached"] for m in again.folds)
    assert np.array_equal(again.rows, first.rows) and np.array_equal(again.probs, first.probs)
    # another fold's data, or another budget, is another key
    _run(tmp_path, write_set, folds, [*hashes[:-1], "changed"])
    assert len(calls) == n + 1 and calls[-1]["val"] == calls[len(folds) - 1]["val"]
    _run(tmp_path, write_set, folds, hashes, epochs=4)
    assert len(calls) == n + 1 + len(folds)


def test_inner_split_and_hashes():
    fit, val = nf.inner_split(np.arange(100), purge=5)
    assert (fit[-1], val[0], val.size) == (74, 80, 20)
    with pytest.raises(ValueError, match="nothing to fit"):
        nf.inner_split(np.arange(6), purge=5)
    cfg = {"model": "cnn", "lr": 1e-3, "seeds": [0], "epochs": 5}
    base = nf.train_config_hash(cfg, 4, (0,), 0.2, 5)
    assert base == nf.train_config_hash({**cfg, "seeds": [9], "epochs": 50}, 4, (0,), 0.2, 5)  # replaced anyway
    assert base != nf.train_config_hash({**cfg, "lr": 1e-4}, 4, (0,), 0.2, 5)
    assert base != nf.train_config_hash(cfg, 4, (0, 1), 0.2, 5)
    ds = DATES[:3]
    y, r = np.zeros((3, 2), dtype=np.int64), np.zeros((3, 2))
    h = nf.fold_data_hash("spec", ds, y, r, [])
    assert h != nf.fold_data_hash("spec", ds, y + 1, r, []) and h != nf.fold_data_hash("other", ds, y, r, [])
