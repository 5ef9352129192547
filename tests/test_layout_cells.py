"""LayoutCells (the layout-aware models' stem) against a float64 loop over the layout's cells:
every tile (9-px and 3-px sessions), channels-last and plain NCHW inputs, and its gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finnex_ml.encoding.layout import DEFAULT_ASSIGNMENT, build_layout
from finnex_ml.models import LayoutCells

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
