"""Quality checks on mega-images. Each is pure and returns ``(passed, details)``.

The spatial and temporal checks re-derive pixel positions from the spec's geometry (row bands,
``px_per_session``, right-aligned sessions) instead of reusing the encoder's index maps, so they
check the encoder rather than repeat it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finnex_ml.encoding.encoder import decode
from finnex_ml.encoding.layout import LayoutSpec

QAResult = tuple[bool, dict[str, Any]]


_UNUSED: dict[str, np.ndarray] = {}


def _unused_index(spec: LayoutSpec) -> np.ndarray:
    """Flat indices of the pixels no tile's used columns cover, from the spec geometry alone
    (built once per spec: the per-call tile loop and 786k-pixel mask cost more than the check)."""
    key = spec.spec_hash()
    hit = _UNUSED.get(key)
    if hit is None:
        unused = np.ones(spec.shape, dtype=bool)
        for t in spec.tiles:
            s = spec.section(t.section)
            if t.features:
                unused[s.row0 : s.row1, t.used_col0 : t.col1, t.channel] = False
        hit = np.flatnonzero(unused)
        hit.setflags(write=False)
        _UNUSED[key] = hit
    return hit


def check_image(image: np.ndarray, spec: LayoutSpec) -> QAResult:
    """dtype float32, shape (512, 512, 3), all finite, values in [0, 1], unused pixels == fill."""
    img = np.asarray(image)
    d: dict[str, Any] = {"dtype": str(img.dtype), "shape": list(img.shape)}
    ok = img.dtype == np.float32 and img.shape == spec.shape
    if not ok:
        return False, d
    n_finite = int(np.count_nonzero(np.isfinite(img)))
    d["non_finite"] = img.size - n_finite
    if d["non_finite"] == 0:  # the usual case: min/max of all pixels, without copying the finite ones
        d["min"], d["max"] = float(img.min()), float(img.max())
    else:
        finite = np.isfinite(img)
        d["min"] = float(img[finite].min()) if n_finite else None
        d["max"] = float(img[finite].max()) if n_finite else None
    d["below_0"] = int(np.count_nonzero(img < 0))
    d["above_1"] = int(np.count_nonzero(img > 1))
    unused = _unused_index(spec)
    d["unused_pixels"] = int(unused.size)
    d["unused_not_fill"] = int(np.count_nonzero(np.take(img.reshape(-1), unused) != np.float32(spec.fill_value)))
    passed = d["non_finite"] == 0 and d["below_0"] == 0 and d["above_1"] == 0 and d["unused_not_fill"] == 0
    return passed, d


def check_spatial_integrity(image: np.ndarray, spec: LayoutSpec, window: np.ndarray) -> QAResult:
    """Every tile's row band of feature f holds exactly f's normalised window: each
    (band, session) block is uniform and equals ``window[session, f]`` (oldest session left)."""
    img = np.asarray(image, dtype=np.float32)
    win = np.asarray(window, dtype=np.float32)
    if win.shape != (spec.sessions, spec.n_features) or img.shape != spec.shape:
        return False, {"error": f"shapes image {img.shape}, window {win.shape}"}
    bad: dict[str, list[str]] = {}
    worst = 0.0
    L = spec.sessions
    for t in spec.tiles:
        if not t.features:
            continue
        # one array operation per tile instead of one per feature: the expected tile repeats
        # window[:, f] over f's row band and over px_per_session columns per session
        heights = [r1 - r0 for r0, r1 in t.row_bands]
        r0, r1 = t.row_bands[0][0], t.row_bands[-1][1]
        region = img[r0:r1, t.used_col0 : t.col1, t.channel].reshape(r1 - r0, L, t.px_per_session)
        expected = np.repeat(win[:, [spec.feature_index[f] for f in t.features]].T, heights, axis=0)
        row_err = np.abs(region - expected[:, :, None]).max(axis=(1, 2))
        band_err = np.maximum.reduceat(row_err, np.cumsum([0] + heights[:-1]))
        for f, e in zip(t.features, band_err):
            err = float(e)
            worst = max(worst, err)
            if err != 0.0:
                bad.setdefault(t.name, []).append(f)
    return not bad, {
        "tiles_checked": len(spec.tiles),
        "features_checked": spec.n_features,
        "max_abs_error": worst,
        "mismatched": bad,
    }


def check_temporal_continuity(prev_image: np.ndarray, image: np.ndarray, spec: LayoutSpec) -> QAResult:
    """Sliding-window rule for consecutive sessions t-1 and t: in every tile, the session band at
    lag k+1 of image t equals the band at lag k of image t-1 (everything shifts left by
    ``px_per_session`` columns and the newest band enters on the right).

    It holds exactly, not approximately, because the normalised value of a session depends only
    on that session's own trailing window of raw values: it is the same number in every image
    that shows it. A failure means a changed raw row, a different normalisation or layout between
    the two images, or images that are not of consecutive sessions.
    """
    a = np.asarray(prev_image, dtype=np.float32)
    b = np.asarray(image, dtype=np.float32)
    if a.shape != spec.shape or b.shape != spec.shape:
        return False, {"error": f"shapes {a.shape}, {b.shape}"}
    per_tile: dict[str, dict[str, Any]] = {}
    passed = True
    for t in spec.tiles:
        if not t.features:
            continue
        s = spec.section(t.section)
        px = t.px_per_session
        old = a[s.row0 : s.row1, t.used_col0 + px : t.col1, t.channel]
        new = b[s.row0 : s.row1, t.used_col0 : t.col1 - px, t.channel]
        diff = np.abs(old - new)
        n_bad = int((diff != 0).sum())
        per_tile[t.name] = {"mismatched_pixels": n_bad, "max_abs_diff": float(diff.max()) if diff.size else 0.0}
        passed &= n_bad == 0
    return passed, {"tiles": per_tile}


def check_feature_preservation(image: np.ndarray, spec: LayoutSpec, window: np.ndarray, atol: float = 1e-6) -> QAResult:
    """decode(image) equals the normalised window within ``atol`` (float32 storage is exact)."""
    win = np.asarray(window, dtype=np.float64)
    got = decode(image, spec).astype(np.float64)
    if got.shape != win.shape:
        return False, {"error": f"decoded {got.shape} vs window {win.shape}"}
    err = np.abs(got - win)
    per_feature = err.max(axis=0)
    worst = int(np.argmax(per_feature)) if per_feature.size else -1
    max_err = float(per_feature.max()) if per_feature.size else 0.0
    return bool(max_err <= atol), {
        "max_abs_error": max_err,
        "atol": atol,
        "worst_feature": spec.features[worst] if worst >= 0 else None,
        "features_over_atol": [spec.features[j] for j in np.flatnonzero(per_feature > atol)],
    }


def run_qa(
    image: np.ndarray, spec: LayoutSpec, window: np.ndarray | None = None, prev_image: np.ndarray | None = None
) -> dict[str, QAResult]:
    """All checks that the given inputs allow."""
    out = {"image": check_image(image, spec)}
    if window is not None:
        out["spatial_integrity"] = check_spatial_integrity(image, spec, window)
        out["feature_preservation"] = check_feature_preservation(image, spec, window)
    if prev_image is not None:
        out["temporal_continuity"] = check_temporal_continuity(prev_image, image, spec)
    return out


__all__ = [
    "check_feature_preservation",
    "check_image",
    "check_spatial_integrity",
    "check_temporal_continuity",
    "run_qa",
]
