"""LayoutCells (the layout-aware models' stem) against a float64 loop over the layout's cells:
every tile (9-px and 3-px sessions), channels-last and plain NCHW inputs, and its gradient; and
PatchCells (the patch-mode stem: the cells inside each 32x32 patch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finnex_ml.encoding.encoder import encode
from finnex_ml.encoding.layout import DEFAULT_ASSIGNMENT, build_layout
from finnex_ml.models import LayoutCells, PatchCells, image_to_bag

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec():
    # a few names per pattern of the default assignment: every tile gets features
    names = [p.replace("*", f"f{i}") for pats in DEFAULT_ASSIGNMENT.values() for p in pats for i in range(4)]
    spec = build_layout(list(dict.fromkeys(names)))
    assert all(t.features for t in spec.tiles)
    assert {t.px_per_session for t in spec.tiles} == {3, 9}
    return spec


def reference_cells(x: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """``[B, F, L]`` cell means in float64 from ``[B, H, W, C]`` images, and the weight of each pixel
    in the sum of all cells (the gradient of ``cells.sum()``)."""
    L = spec.sessions
    out = np.zeros((x.shape[0], spec.n_features, L))
    weight = np.zeros(x.shape[1:])
    for t in spec.tiles:
        for f, (a, b) in zip(t.features, t.row_bands):
            i = spec.features.index(f)
            for s in range(L):
                c0, c1 = t.session_cols(L - 1 - s)  # session index L-1 is the image date (lag 0)
                out[:, i, s] = x[:, a:b, c0:c1, t.channel].astype(np.float64).mean(axis=(1, 2))
                weight[a:b, c0:c1, t.channel] += 1.0 / ((b - a) * (c1 - c0))
    return out, weight


def test_cells_equal_the_float64_cell_means(spec) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((3, *spec.shape), dtype=np.float32)  # stored NHWC, values in [0, 1]
    want, weight = reference_cells(x, spec)
    cells = LayoutCells(spec.to_dict())
    nhwc = torch.from_numpy(x).permute(0, 3, 1, 2)  # the trainer's channels-last view
    got = cells(nhwc)
    assert got.shape == (3, spec.n_features, spec.sessions)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)
    nchw = nhwc.contiguous()  # a plain NCHW tensor takes the copying path: same values
    np.testing.assert_allclose(cells(nchw).numpy(), want, rtol=0, atol=1e-6)
    # differentiable (saliency spreads over whole cells): d sum(cells) / d pixel = 1 / cell size
    xg = torch.from_numpy(x).requires_grad_(True)
    cells(xg.permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(xg.grad.numpy(), np.broadcast_to(weight, x.shape), rtol=0, atol=1e-7)
    assert (weight == 0).any() and (weight > 0).sum() > 0.9 * weight.size  # padding columns get none


def test_each_cell_is_its_own_pixels(spec) -> None:
    # one lit cell per tile: exactly that (feature, session) is non-zero
    cells = LayoutCells(spec.to_dict())
    for t in spec.tiles:
        (a, b), f = t.row_bands[-1], t.features[-1]
        c0, c1 = t.session_cols(3)
        x = np.zeros((1, *spec.shape), np.float32)
        x[0, a:b, c0:c1, t.channel] = 1.0
        got = cells(torch.from_numpy(x).permute(0, 3, 1, 2))[0].numpy()
        hot = np.argwhere(np.abs(got) > 1e-6)
        assert hot.tolist() == [[spec.features.index(f), spec.sessions - 1 - 3]], t.name
        assert got[tuple(hot[0])] == pytest.approx(1.0, abs=1e-6)


def test_patch_cells_are_the_cells_inside_each_patch(spec) -> None:
    rng = np.random.default_rng(1)
    window = rng.random((spec.sessions, spec.n_features), dtype=np.float32)
    image = torch.from_numpy(encode(window, spec)).permute(2, 0, 1)[None]  # [1, 3, 512, 512]
    pc = PatchCells(spec.to_dict())
    bag = image_to_bag(image)  # [1, 256, 3, 32, 32], patch k at grid index k
    pos = torch.arange(256)[None]
    means = pc(bag, pos)[0]  # [256, K]
    used = pc.inv_count > 0
    # every slot of every patch holds one cell's value: cell = feature * sessions + session
    cells = pc.slot_cell[used]
    want = window[(cells % spec.sessions).numpy(), (cells // spec.sessions).numpy()]
    np.testing.assert_allclose(means[used].numpy(), want, rtol=0, atol=1e-5)  # float32 sums of up to 288 pixels
    assert torch.equal(torch.unique(cells), torch.arange(spec.n_features * spec.sessions))  # no cell left out
    # the date-t cell of the first macro.red feature sits in the right-most patch of its rows
    t = spec.tiles[0]
    f, (a, _) = spec.features.index(t.features[0]), t.row_bands[0]
    p = (a // 32) * 16 + 15
    assert f * spec.sessions + spec.sessions - 1 in pc.slot_cell[p][used[p]].tolist()
    # bags with their own positions (a subset, shuffled) read the same cells of the same patches
    noise = torch.rand(2, 3, 512, 512)
    full = pc(image_to_bag(noise), torch.arange(256).expand(2, -1))
    pick = torch.stack([torch.randperm(256)[:40] for _ in range(2)])
    sub = pc(torch.stack([image_to_bag(noise[i : i + 1])[0, pick[i]] for i in range(2)]), pick)
    torch.testing.assert_close(sub, torch.stack([full[i, pick[i]] for i in range(2)]))
    # cell means from the patches' parts, weighted by their pixels, are LayoutCells' cell means
    sums = full * torch.where(used, 1.0 / pc.inv_count.clamp_min(1e-12), 0.0)
    total = torch.zeros(2, spec.n_features * spec.sessions).index_add_(1, pc.slot_cell.flatten(), sums.flatten(1))
    count = torch.zeros(spec.n_features * spec.sessions).index_add_(
        0, pc.slot_cell.flatten(), torch.where(used, 1.0 / pc.inv_count.clamp_min(1e-12), 0.0).flatten()
    )
    torch.testing.assert_close((total / count).view(2, spec.n_features, -1), LayoutCells(spec.to_dict())(noise))
