"""Trainer, loss weighting, lazy HDF5 datasets, sampling and bit-for-bit resumption (CPU, small)."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from finnex_ml.encoding.encoder import encode
from finnex_ml.encoding.layout import build_layout
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.losses import MultiTaskLoss, class_weights_from_labels, soft_cross_entropy
from finnex_ml.models import layout_json
from finnex_ml.patches import extract_patches
from finnex_ml.training import (
    BUY,
    HOLD,
    SELL,
    ArrayDataset,
    BlockBatchSampler,
    H5ArrayDataset,
    TrainConfig,
    load_checkpoint_model,
    make_loader,
    train_model,
)
from finnex_ml.training.trainer import _Augment

TINY_CNN = {"widths": (4, 8, 8, 8), "token_dim": 8, "attn_heads": 2, "fusion_dim": 16}
SMALL_CNN = {"widths": (8, 16, 16, 16), "token_dim": 16, "attn_heads": 2, "fusion_dim": 32}
SMALL_VIT = {"dim": 32, "depth": 2, "heads": 2, "mlp_ratio": 2.0}


pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int, size: int, seed: int, tile: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Noise around 0.5 with an 8×8 stripe pattern in the GREEN channel of one 32×32 tile:
    horizontal stripes = Buy, vertical = Sell, none = Hold. Returns follow the class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (0.5 + 0.1 * rng.standard_normal((n, size, size, 3))).astype(np.float32)
    stripes = np.repeat((np.arange(8) % 2)[:, None], 8, axis=1).astype(np.float32) * 0.4 - 0.2
    r, c = tile[0] + 8, tile[1] + 16
    x[y == BUY, r : r + 8, c : c + 8, 1] += stripes
    x[y == SELL, r : r + 8, c : c + 8, 1] += stripes.T
    ret = ((y - 1) * 0.01 + 0.003 * rng.standard_normal(n)).astype(np.float32)
    return x, {"label_h1": y.astype(np.int64), "return_h1": ret}


def planted_bags(n: int, ppi: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Patch-mode data: ``n`` images of ``ppi`` noise patches (rows ``[n * ppi, 32, 32, 3]``, an
    image's patches consecutive); one random patch per Buy / Sell image carries the stripes of
    :func:`planted` (horizontal Buy, vertical Sell), Hold images none. Targets repeat the image's
    label and return on each of its patches (what the patch files store). Also returns the
    planted patch's index per image."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    hot = rng.integers(0, ppi, n)
    x = (0.5 + 0.1 * rng.standard_normal((n, ppi, 32, 32, 3))).astype(np.float32)
    stripes = np.repeat((np.arange(8) % 2)[:, None], 8, axis=1).astype(np.float32) * 0.4 - 0.2
    for i in range(n):
        if y[i] != HOLD:
            x[i, hot[i], 8:16, 16:24, 1] += stripes if y[i] == BUY else stripes.T
    ret = ((y - 1) * 0.01 + 0.003 * rng.standard_normal(n)).astype(np.float32)
    targets = {"label_h1": np.repeat(y, ppi).astype(np.int64), "return_h1": np.repeat(ret, ppi)}
    return x.reshape(n * ppi, 32, 32, 3), targets, hot


def write_h5(path: Path, x: np.ndarray, targets: dict[str, np.ndarray], chunks: tuple | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x, chunks=chunks)
        for k, v in targets.items():
            f.create_dataset(f"labels/{k}", data=v)
    return path


# --------------------------------------------------------------------------------------------
# datasets and sampling
# --------------------------------------------------------------------------------------------


def test_h5_dataset_reads_the_right_rows_lazily(tmp_path: Path) -> None:
    n = 600
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 32, 32, 3)).copy()
    targets = {"label_h1": np.arange(n) % 3, "return_h1": np.arange(n, dtype=np.float64) / 100}
    path = write_h5(tmp_path / "p.h5", x, targets, chunks=(16, 32, 32, 3))
    ds = H5ArrayDataset(
        path,
        "x",
        {"label_h1": "labels/label_h1", "return_h1": "labels/return_h1"},
        indices=np.arange(256, 512),
        patches_per_image=256,
    )
    assert len(ds) == 256 and ds.sample_shape == (32, 32, 3) and ds._file is None  # nothing opened yet
    positions = [0, 1, 2, 10, 11, 200, 3]  # unsorted on purpose
    batch = ds.__getitems__(positions)
    rows = 256 + np.array(positions)
    assert batch["x"].shape == (7, 32, 32, 3) and batch["x"].dtype == torch.float32
    assert batch["x"][:, 5, 7, 2].tolist() == rows.tolist()
    assert batch["label_h1"].dtype == torch.int64 and batch["label_h1"].tolist() == (rows % 3).tolist()
    assert batch["return_h1"].dtype == torch.float32
    np.testing.assert_allclose(batch["return_h1"].numpy(), rows / 100, rtol=1e-6)
    assert batch["row"].tolist() == rows.tolist() and batch["patch_pos"].tolist() == (rows % 256).tolist()
    # only the 7 requested rows were read, as 3 contiguous runs (256-259, 266-267, 456)
    assert ds.rows_read == 7 and ds.read_calls == 3 * 3  # x and two targets
    dup = ds.__getitems__([5, 5, 4])
    assert dup["row"].tolist() == [261, 261, 260] and ds.rows_read == 7 + 2
    one = ds[3]
    assert one["x"].shape == (32, 32, 3) and int(one["row"]) == 259
    np.testing.assert_array_equal(ds.target_array("label_h1"), np.arange(256, 512) % 3)
    np.testing.assert_array_equal(ds.group_ids(), np.ones(256))
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker gets: no open handle
    assert clone._file is None and clone.__getitems__([0])["row"].tolist() == [256]
    ds.close()
    clone.close()
    with h5py.File(path, "a") as f:
        f["x"][300, 0, 0, 0] = np.nan  # what a virtual dataset reads for a missing source file
    with pytest.raises(DataInputError, match=r"rows \[300\]"):
        H5ArrayDataset(path, "x").__getitems__([299, 300])
    with pytest.raises(ConfigError, match="no dataset"):
        H5ArrayDataset(path, "images")
    with pytest.raises(ConfigError, match="indices"):
        H5ArrayDataset(path, "x", indices=[0, n])


def test_h5_dataset_reads_columns_of_per_horizon_arrays(tmp_path: Path) -> None:
    """The cnn_ready set files keep labels/returns as [n, H] arrays, one column per horizon."""
    n = 40
    with h5py.File(tmp_path / "set.h5", "w") as f:
        f.create_dataset("patches", data=np.zeros((n, 32, 32, 3), np.float32))
        f.create_dataset("labels", data=np.stack([np.arange(n) % 3, (np.arange(n) + 1) % 3], 1).astype(np.int8))
        f.create_dataset("returns", data=np.stack([np.arange(n), -np.arange(n)], 1).astype(np.float32))
    ds = H5ArrayDataset(
        tmp_path / "set.h5",
        "patches",
        {"label_h1": ("labels", 0), "label_h5": ("labels", 1), "return_h5": ("returns", 1)},
    )
    b = ds.__getitems__([3, 4, 20])
    assert b["label_h1"].dtype == torch.int64 and b["label_h1"].tolist() == [0, 1, 2]
    assert b["label_h5"].tolist() == [1, 2, 0] and b["return_h5"].tolist() == [-3.0, -4.0, -20.0]
    np.testing.assert_array_equal(ds.target_array("label_h5"), (np.arange(n) + 1) % 3)
    with pytest.raises(ConfigError, match="no column 2"):
        H5ArrayDataset(tmp_path / "set.h5", "patches", {"label": ("labels", 2)})


def test_loader_batches_match_in_memory_and_across_workers(tmp_path: Path) -> None:
    x, t = planted(300, 32, 0)
    path = write_h5(tmp_path / "d.h5", x, t)
    h5 = H5ArrayDataset(path, "x", {k: f"labels/{k}" for k in t}, patches_per_image=256)
    mem = ArrayDataset(x, t, patches_per_image=256)
    runs = []
    for ds, workers in ((mem, 0), (h5, 0), (h5, 1)):
        loader = make_loader(ds, 64, shuffle=True, seed=3, run_length=8, num_workers=workers)
        loader.batch_sampler.set_epoch(2)
        runs.append(list(loader))
    for other in runs[1:]:
        assert len(other) == len(runs[0]) == 5
        for a, b in zip(runs[0], other):
            assert a.keys() == b.keys()
            for k in a:
                assert torch.equal(a[k], b[k]), k


def test_block_batch_sampler_covers_each_row_once_in_runs() -> None:
    s = BlockBatchSampler(1000, 64, run_length=16, seed=1)
    s.set_epoch(0)
    e0 = list(s)
    flat = np.concatenate(e0)
    assert len(e0) == len(s) == 16 and sorted(flat.tolist()) == list(range(1000))
    assert all(b == sorted(b) for b in e0)  # sorted inside a batch: contiguous reads
    # a batch is a handful of contiguous runs, not 64 scattered rows
    n_runs = [1 + int(np.sum(np.diff(b) != 1)) for b in e0[:-1]]
    assert max(n_runs) <= 64 // 16 + 1
    s.set_epoch(1)
    assert [list(b) for b in s] != [list(b) for b in e0]
    s.set_epoch(0)
    assert [list(b) for b in s] == [list(b) for b in e0]  # a function of (seed, epoch) only
    # chunk-aware: blocks of 256 (one image), runs shuffled within windows of 4 random blocks
    w = BlockBatchSampler(256 * 10 + 100, 128, run_length=16, seed=2, block_size=256, window=4)
    batches = list(w)
    assert sorted(np.concatenate(batches).tolist()) == list(range(2660))
    blocks_per_batch = [len(set(np.asarray(b) // 256)) for b in batches]
    assert max(blocks_per_batch) <= 2 * 4 and np.mean(blocks_per_batch) > 2  # mixes images, within a window
    # each block's rows are read within one window: a span of consecutive batches
    first = {blk: min(i for i, b in enumerate(batches) if blk in set(np.asarray(b) // 256)) for blk in range(11)}
    last = {blk: max(i for i, b in enumerate(batches) if blk in set(np.asarray(b) // 256)) for blk in range(11)}
    assert max(last[k] - first[k] for k in first) <= 4 * 256 // 128 + 1
    seq = BlockBatchSampler(10, 4, shuffle=False)
    assert list(seq) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_augmentation_keeps_the_layout() -> None:
    """Noise only moves values slightly; nothing is flipped or moved (a flip would reverse time)."""
    x = torch.rand(4, 3, 32, 32)
    y = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 1]), 3).float()[:, None]
    xa, ya, _ = _Augment(0.02, 0.0, seed=0, epoch=0, device=torch.device("cpu"))(x, y, None)
    assert (xa - x).abs().max() < 0.15 and 0.01 < (xa - x).std() < 0.03
    assert torch.equal(ya, y)
    xm, ym, rm = _Augment(0.0, 0.4, seed=0, epoch=0, device=torch.device("cpu"))(x, y, torch.arange(4.0)[:, None])
    torch.testing.assert_close(ym.sum(-1), torch.ones(4, 1))  # soft targets still sum to 1
    assert not torch.equal(xm, x) and rm.shape == (4, 1)


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------


def test_soft_cross_entropy_equals_weighted_ce_for_hard_labels() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(20, 3), torch.randint(0, 3, (20,))
    w = class_weights_from_labels(y)
    torch.testing.assert_close(soft_cross_entropy(logits, y, w), torch.nn.functional.cross_entropy(logits, y, weight=w))
    assert class_weights_from_labels([0, 0, 0, 1]).tolist() == pytest.approx([4 / 9, 4 / 3, 4 / 3])


def _toy_weighting(weighting: str, steps: int = 250) -> dict[str, float]:
    """Shared body, 3-class CE (noisy, loss floor ~0.3) + MSE on daily-return-sized targets (~1e-4)."""
    g = torch.Generator().manual_seed(0)
    n = 256
    x = torch.randn(n, 8, generator=g)
    z = x[:, 0] + 0.5 * torch.randn(n, generator=g)
    y = (z > 0.5).long() + (z > -0.5).long()
    r = 0.01 * x[:, 1] + 0.005 * torch.randn(n, generator=g)
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh())
    cls, reg = torch.nn.Linear(16, 3), torch.nn.Linear(16, 1)
    crit = MultiTaskLoss(1, regression_loss="mse", weighting=weighting)
    params = [*body.parameters(), *cls.parameters(), *reg.parameters()]
    opt = torch.optim.Adam([{"params": params, "lr": 1e-2}, {"params": list(crit.parameters()), "lr": 5e-2}])
    for _ in range(steps):
        h = body(x)
        out = {"classification_by_horizon": cls(h)[:, None], "regression_by_horizon": reg(h)}
        losses = crit(out, y[:, None], r[:, None])
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    w, task = losses["task_weights"], losses["task_losses"]
    share = (w * task) / (w * task).sum()
    return {"w_cls": float(w[0]), "w_reg": float(w[1]), "cls_loss": float(task[0]), "share_cls": float(share[0])}


def test_uncertainty_weighting_does_not_collapse_where_softmax_does() -> None:
    soft = _toy_weighting("softmax")
    unc = _toy_weighting("uncertainty")
    # the spec's softmax weights put everything on the small regression loss
    assert soft["w_cls"] < 0.02 and soft["w_reg"] > 0.98
    # learned log-variances: both weights stay well above 0 (they settle near 1/L_i), and each
    # task keeps a real share of the weighted objective
    assert unc["w_cls"] > 0.5 and unc["w_reg"] > 0.5
    assert 0.25 < unc["share_cls"] < 0.75
    # and classification is actually learned better once it is not switched off
    assert unc["cls_loss"] < soft["cls_loss"] - 0.1


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------


def test_cnn_learns_a_planted_patch_from_hdf5_bags(tmp_path: Path) -> None:
    """Patch mode is multiple-instance learning: the label lives in one patch at a random place
    of its image; the attention-pooled model finds it and its attention points at that patch."""
    ppi = 4  # bags of 4 patches keep the test small (the stores use 256)
    xt, yt, _ = planted_bags(120, ppi, 0)
    xv, yv, hot_v = planted_bags(48, ppi, 1)
    x = np.concatenate([xt, xv])
    t = {k: np.concatenate([yt[k], yv[k]]) for k in yt}
    path = write_h5(tmp_path / "patches.h5", x, t, chunks=(ppi, 32, 32, 3))
    keys = {k: f"labels/{k}" for k in t}
    train = H5ArrayDataset(path, "x", keys, indices=range(0, 120 * ppi), patches_per_image=ppi)
    val = H5ArrayDataset(path, "x", keys, indices=range(120 * ppi, 168 * ppi), patches_per_image=ppi)
    seen: list[tuple[int, dict]] = []
    cfg = TrainConfig(
        model="cnn",
        input_mode="patch",
        model_overrides=SMALL_CNN,
        epochs=5,
        batch_size=8,
        lr=3e-3,
        warmup_epochs=1,
        patience=None,
        seed=0,
        noise_std=0.0,
        mixup_alpha=0.0,
    )
    res = train_model(
        cfg,
        train,
        val,
        checkpoint_dir=tmp_path / "ckpt",
        class_weights=class_weights_from_labels(train.target_array("label_h1")),
        on_epoch_end=lambda e, m: seen.append((e, m)),
    )
    hist = res.history
    assert [e for e, _ in seen] == [1, 2, 3, 4, 5] and len(hist) == 5
    assert hist[-1]["train_cls_loss"] < 0.6 * hist[0]["train_cls_loss"]
    assert res.best_metrics["val_accuracy"] > 0.8  # chance is 1/3
    for key in (
        "val_loss",
        "val_mae",
        "val_directional_accuracy",
        "weight_cls_h1",
        "weight_reg_h1",
        "lr",
        "samples_per_s",
        "data_wait_share",
        "cpu_seconds",
    ):
        assert key in seen[-1][1], key
    assert res.confusion_matrix.shape == (3, 3) and res.confusion_matrix.sum() == 48  # one row per image
    preds = res.val_predictions
    assert preds["probs"].shape == (48, 1, 3) and preds["row"].tolist() == list(range(120, 168))  # image ids
    assert abs(np.std(preds["reg_pred"]) / np.std(preds["reg_target"]) - 1) < 0.5  # original units again
    assert res.checkpoint_path.exists() and res.last_checkpoint_path.exists()
    model, ckpt = load_checkpoint_model(res.checkpoint_path)
    assert ckpt["epoch"] == res.best_epoch and ckpt["class_names"] == ["sell", "hold", "buy"]
    assert model.config.mil_dim > 0  # the bag pooling travels in the model spec
    xb = torch.from_numpy(xv[: 8 * ppi]).reshape(8, ppi, 32, 32, 3).permute(0, 1, 4, 2, 3)
    pos = torch.arange(ppi).expand(8, -1)
    res.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(xb, patch_pos=pos)["classification"], res.model(xb, patch_pos=pos)["classification"]
        )
        bags = torch.from_numpy(xv).reshape(48, ppi, 32, 32, 3).permute(0, 1, 4, 2, 3)
        att = model(bags, patch_pos=torch.arange(ppi).expand(48, -1))["patch_attention"]
    torch.testing.assert_close(att.sum(1), torch.ones(48))
    planted_rows = yv["label_h1"][::ppi] != HOLD
    # the attention's favourite patch is the planted one on most Buy / Sell images (chance 1/4)
    assert (att.argmax(1).numpy() == hot_v)[planted_rows].mean() > 0.8


def test_patch_mode_cnn_reads_a_date_t_cell_from_layout_bags(tmp_path: Path) -> None:
    """Issue 14: with the layout, patch-mode MultiScaleCNN embeds each patch by the layout cells it
    holds (a sparse vector per cell), so it learns a rule planted in one feature's image-date cell
    (label = its tercile: a few pixel columns of one patch among 16 noise-filled ones), and its
    attention peaks on that patch. A dense cell table reached 0.60 here (it fits the noise cells)."""
    names = ["macro__control_a", "macro__control_b", *[f"macro__rate_{i}" for i in range(6)], "macro__cpi"]
    spec = build_layout([*names, "price__close"])
    ppi, n = 16, 168  # bags of the top grid row (the stores use all 256 patches)
    rng = np.random.default_rng(0)
    windows = rng.random((n, spec.sessions, spec.n_features), dtype=np.float32)
    v = windows[:, -1, spec.features.index("macro__control_a")]  # rows 0-85 of macro.red: patch 15 has lag 0
    y = np.digitize(v, [1 / 3, 2 / 3])
    x = np.stack([extract_patches(encode(w, spec))[:ppi] for w in windows]).reshape(n * ppi, 32, 32, 3)
    targets = {"label_h1": np.repeat(y, ppi), "return_h1": np.repeat(0.02 * (v - 0.5), ppi).astype(np.float32)}
    train = ArrayDataset(x, targets, indices=range(0, 120 * ppi), patches_per_image=ppi)
    val = ArrayDataset(x, targets, indices=range(120 * ppi, n * ppi), patches_per_image=ppi)
    cfg = TrainConfig(
        model="cnn",
        input_mode="patch",
        model_overrides={"layout": layout_json(spec), "fusion_dim": 32},
        epochs=8,
        batch_size=8,
        lr=3e-3,
        warmup_epochs=1,
        patience=None,
        seed=0,
        noise_std=0.0,
        mixup_alpha=0.0,
    )
    res = train_model(cfg, train, val, checkpoint_dir=tmp_path)
    assert res.best_metrics["val_accuracy"] > 0.8  # chance 1/3
    bags = torch.from_numpy(x[120 * ppi :]).reshape(n - 120, ppi, 32, 32, 3).permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        att = res.model.eval()(bags, patch_pos=torch.arange(ppi).expand(n - 120, -1))["patch_attention"]
    assert (att.argmax(1) == 15).float().mean() > 0.9  # the patch holding the date-t column


def test_vit_learns_a_planted_tile_in_image_mode(tmp_path: Path) -> None:
    xt, yt = planted(512, 64, 0, tile=(32, 0))  # bottom-left patch of a 2×2 grid
    xv, yv = planted(192, 64, 1, tile=(32, 0))
    # default augmentation (noise 0.02, mixup 0.2); mixed targets keep the train CE above 0.2
    cfg = TrainConfig(
        model="vit",
        input_mode="image",
        model_overrides=SMALL_VIT,
        epochs=6,
        batch_size=32,
        lr=2e-3,
        warmup_epochs=1,
        patience=None,
        seed=0,
    )
    res = train_model(cfg, ArrayDataset(xt, yt), ArrayDataset(xv, yv), checkpoint_dir=tmp_path)
    assert res.history[-1]["train_cls_loss"] < 0.5 * res.history[0]["train_cls_loss"]
    assert res.best_metrics["val_accuracy"] > 0.8


def _tiny_run(tmp: Path, **kw) -> TrainConfig:
    base = dict(
        model="cnn",
        input_mode="patch",
        model_overrides=TINY_CNN,
        epochs=4,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=1,
        patience=None,
        seed=5,
        noise_std=0.05,
        mixup_alpha=0.4,
    )
    base.update(kw)
    return TrainConfig(**base)


class _Crash(RuntimeError):
    pass


def test_resume_after_epoch_k_continues_bit_for_bit(tmp_path: Path) -> None:
    xt, yt, _ = planted_bags(24, 4, 0)
    xv, yv, _ = planted_bags(12, 4, 1)
    train, val = ArrayDataset(xt, yt, patches_per_image=4), ArrayDataset(xv, yv, patches_per_image=4)
    cw = class_weights_from_labels(yt["label_h1"])
    cfg = _tiny_run(tmp_path)

    full = train_model(cfg, train, val, checkpoint_dir=tmp_path / "a", class_weights=cw)

    def crash_after_2(epoch: int, metrics: dict) -> None:
        if epoch == 2:
            raise _Crash

    with pytest.raises(_Crash):
        train_model(cfg, train, val, checkpoint_dir=tmp_path / "b", class_weights=cw, on_epoch_end=crash_after_2)
    torch.manual_seed(12345)  # the global RNG is disturbed in between: the checkpoint must restore it
    resumed = train_model(cfg, train, val, checkpoint_dir=tmp_path / "b", class_weights=cw, resume=True)

    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["criterion"]:
        assert torch.equal(a["criterion"][k], b["criterion"][k]), k
    for pid, st in a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg"], b["optimizer"]["state"][pid]["exp_avg"])
    assert [h["val_loss"] for h in full.history] == [h["val_loss"] for h in resumed.history]
    assert [h["train_loss"] for h in full.history] == [h["train_loss"] for h in resumed.history]
    assert full.best_epoch == resumed.best_epoch
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    assert max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa) == 0.0  # best weights too

    with pytest.raises(ConfigError, match="lr"):
        train_model(
            _tiny_run(tmp_path, lr=1e-2), train, val, checkpoint_dir=tmp_path / "b", class_weights=cw, resume=True
        )

    # a checkpoint written before a config field existed resumes at that field's default only
    old = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    del old["config"]["label_smoothing"]
    torch.save(old, tmp_path / "b" / "last.pt")
    with pytest.raises(ConfigError, match="label_smoothing"):
        train_model(
            _tiny_run(tmp_path, label_smoothing=0.2),
            train,
            val,
            checkpoint_dir=tmp_path / "b",
            class_weights=cw,
            resume=True,
        )
    again = train_model(cfg, train, val, checkpoint_dir=tmp_path / "b", class_weights=cw, resume=True)
    assert again.epochs_run == 4

    # weights saved by another version of the model (a layer missing): a ConfigError naming the
    # file and the way out, not torch's RuntimeError halfway through restoring
    saved = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    saved["model"] = {k: v for i, (k, v) in enumerate(saved["model"].items()) if i}
    torch.save(saved, tmp_path / "b" / "last.pt")
    with pytest.raises(ConfigError, match="another version of the model"):
        train_model(cfg, train, val, checkpoint_dir=tmp_path / "b", class_weights=cw, resume=True)


def test_early_stopping_keeps_the_best_epoch(tmp_path: Path) -> None:
    xt, yt, _ = planted_bags(16, 4, 0)
    xv, yv, _ = planted_bags(8, 4, 1)
    # min_delta so large that nothing after epoch 1 counts as an improvement
    cfg = _tiny_run(tmp_path, epochs=10, patience=2, min_delta=100.0)
    res = train_model(
        cfg,
        ArrayDataset(xt, yt, patches_per_image=4),
        ArrayDataset(xv, yv, patches_per_image=4),
        checkpoint_dir=tmp_path,
    )
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    assert torch.load(res.checkpoint_path, weights_only=True)["epoch"] == 1


def test_config_and_data_are_checked(tmp_path: Path) -> None:
    x, t = planted(32, 32, 0)
    with pytest.raises(ConfigError, match="one target per horizon"):
        TrainConfig(horizons=(1, 5))
    with pytest.raises(ConfigError, match="patch"):
        train_model(TrainConfig(input_mode="image"), ArrayDataset(x, t), ArrayDataset(x, t), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="patches_per_image"):  # patch mode reads bags of whole images
        train_model(_tiny_run(tmp_path), ArrayDataset(x, t), ArrayDataset(x, t), checkpoint_dir=tmp_path)
    xb, tb, _ = planted_bags(8, 4, 0)

    def bags(targets: dict) -> ArrayDataset:
        return ArrayDataset(xb, targets, patches_per_image=4)

    bad = dict(tb, label_h1=tb["label_h1"] + 1)
    with pytest.raises(ConfigError, match="class ids"):
        train_model(_tiny_run(tmp_path), bags(bad), bags(tb), checkpoint_dir=tmp_path)
    nan = dict(tb, return_h1=np.where(np.arange(32) // 4 == 3, np.nan, tb["return_h1"]))
    with pytest.raises(ConfigError, match="non-finite"):
        train_model(_tiny_run(tmp_path), bags(nan), bags(tb), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="whole images"):  # a bag cut in half
        train_model(
            _tiny_run(tmp_path),
            ArrayDataset(xb, tb, indices=range(2, 30), patches_per_image=4),
            bags(tb),
            checkpoint_dir=tmp_path,
        )
    assert (SELL, HOLD, BUY) == (0, 1, 2)


def test_label_smoothing_softens_only_the_training_targets(tmp_path: Path, monkeypatch) -> None:
    """Training batches see (1 - e) one-hot + e / 3; validation scores the hard labels."""
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    forward = MultiTaskLoss.forward

    def spy(self, outputs, class_target, reg_target=None):
        seen[self.training].append(class_target.detach().clone())
        return forward(self, outputs, class_target, reg_target)

    monkeypatch.setattr(MultiTaskLoss, "forward", spy)
    xt, yt, _ = planted_bags(16, 4, 0)
    xv, yv, _ = planted_bags(8, 4, 1)
    cfg = _tiny_run(tmp_path, epochs=1, noise_std=0.0, mixup_alpha=0.0, label_smoothing=0.3)
    train_model(
        cfg,
        ArrayDataset(xt, yt, patches_per_image=4),
        ArrayDataset(xv, yv, patches_per_image=4),
        checkpoint_dir=tmp_path,
    )
    train = torch.cat([t.reshape(-1, 3) for t in seen[True]])
    assert train.shape[0] == 16
    np.testing.assert_allclose(train.max(1).values.numpy(), 0.7 + 0.1, atol=1e-6)
    np.testing.assert_allclose(train.min(1).values.numpy(), 0.1, atol=1e-6)
    assert sorted(train.argmax(1).tolist()) == sorted(yt["label_h1"][::4].tolist())
    for val in seen[False]:  # each validation pass: the hard class ids
        assert val.dtype == torch.int64 and sorted(val.reshape(-1).tolist()) == sorted(yv["label_h1"][::4].tolist())
