"""Layout ablations: images with one kind of structure destroyed, for training-time ablations.

Each function returns an ``[n, 512, 512, 3]`` float32 copy built through the layout (decode the
window, alter it, encode it again), so an ablated image is still a valid mega-image of the same
spec: only the structure under test is gone.

* :func:`shuffle_history` permutes the sessions before the image date (lags 1..L-1) with a fresh
  permutation per image; lag 0 stays in place. A rule on date-t values survives it, a temporal
  pattern does not.
* :func:`permute_features` applies one fixed permutation to the feature rows (a permuted layout):
  every image still holds every feature's values, but in another feature's band, tile, section
  and channel. A model that relies on the layout's semantics loses; one that only needs a
  consistent position does not.
* :func:`blank_tiles` sets the cells of every tile of a section or channel to the fill value.
"""

from __future__ import annotations

import numpy as np

from finnex_ml.encoding.encoder import decode, encode
from finnex_ml.encoding.layout import LayoutSpec


def _rewrite(images: np.ndarray, spec: LayoutSpec, alter) -> np.ndarray:
    out = np.empty_like(images, dtype=np.float32)
    for i, image in enumerate(images):
        encode(alter(i, decode(image, spec)), spec, out=out[i])
    return out


def shuffle_history(images: np.ndarray, spec: LayoutSpec, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    L = spec.sessions

    def alter(_: int, window: np.ndarray) -> np.ndarray:
        order = np.concatenate([rng.permutation(L - 1), [L - 1]])  # row L-1 is the image date
        return window[order]

    return _rewrite(images, spec, alter)


def permute_features(images: np.ndarray, spec: LayoutSpec, seed: int = 0) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(spec.n_features)
    return _rewrite(images, spec, lambda _, window: window[:, perm])


def blank_tiles(
    images: np.ndarray, spec: LayoutSpec, *, section: str | None = None, channel: int | None = None
) -> np.ndarray:
    if (section is None) == (channel is None):
        raise ValueError("blank one section or one channel")
    cols = [
        spec.feature_index[f]
        for t in spec.tiles
        for f in t.features
        if (section is not None and t.section == section) or (channel is not None and t.channel == channel)
    ]

    def alter(_: int, window: np.ndarray) -> np.ndarray:
        window = window.copy()
        window[:, cols] = spec.fill_value
        return window

    return _rewrite(images, spec, alter)


__all__ = ["blank_tiles", "permute_features", "shuffle_history"]
