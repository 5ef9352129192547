"""Quality checks on mega-images. Each is pure and returns ``(passed, details)``.

The spatial and temporal checks re-derive pixel positions from the spec's geometry (row bands,
``px_per_session``, right-aligned sessions) instead of reusing the encoder's index maps, so they
check the encoder rather than repeat it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from finnex_ml.encoding.encoder import decode
from finnex_ml.encoding.layout import LayoutSpec

QAResult = tuple[bool, dict[str, Any]]


class _Geometry(NamedTuple):
    """Pixel positions derived once per spec from its tile geometry (row bands, used columns,
    ``px_per_session``), never from the encoder's maps."""

    unused: np.ndarray  # flat indices of the pixels no tile's used columns cover
    rows: np.ndarray  # intp [R, W*C]: per run of identical image rows, each pixel's cell (L*F = fill)
    row_of: np.ndarray  # intp [H]: the run of each image row
    order: np.ndarray  # feature indices grouped by tile (tiles with features, in spec order)
    starts: np.ndarray  # each such tile's first position in ``order``
    weights: np.ndarray  # int64, per feature in ``order``: pixels per cell (band height x px_per_session)


_GEOMETRY: dict[str, _Geometry] = {}


def _geometry(spec: LayoutSpec) -> _Geometry:
    """Built once per spec: the per-call tile loop and 786k-pixel maps cost more than the checks."""
    key = spec.spec_hash()
    hit = _GEOMETRY.get(key)
    if hit is not None:
        return hit
    h, w, c = spec.shape
    F = spec.n_features
    cell = np.full(spec.shape, spec.sessions * F, dtype=np.intp)  # [window.ravel(), fill] index per pixel
    order, starts, weights = [], [], []
    for t in spec.tiles:
        if not t.features:
            continue
        session = (np.arange(t.used_col0, t.col1) - t.used_col0) // t.px_per_session  # oldest first
        starts.append(len(order))
        for f, (r0, r1) in zip(t.features, t.row_bands):
            fi = spec.feature_index[f]
            cell[r0:r1, t.used_col0 : t.col1, t.channel] = session * F + fi
            order.append(fi)
            weights.append((r1 - r0) * t.px_per_session)
    g2 = cell.reshape(h, w * c)
    run_start = np.ones(h, dtype=bool)
    run_start[1:] = (g2[1:] != g2[:-1]).any(axis=1)
    hit = _Geometry(
        unused=np.flatnonzero(cell == spec.sessions * F),
        rows=np.ascontiguousarray(g2[run_start]),
        row_of=(np.cumsum(run_start) - 1).astype(np.intp),
        order=np.array(order, dtype=np.intp),
        starts=np.array(starts, dtype=np.intp),
        weights=np.array(weights, dtype=np.int64),
    )
    for arr in hit:
        arr.setflags(write=False)
    _GEOMETRY[key] = hit
    return hit


def check_image(image: np.ndarray, spec: LayoutSpec) -> QAResult:
    """dtype float32, shape (512, 512, 3), all finite, values in [0, 1], unused pixels == fill."""
    img = np.asarray(image)
    d: dict[str, Any] = {"dtype": str(img.dtype), "shape": list(img.shape)}
    ok = img.dtype == np.float32 and img.shape == spec.shape
    if not ok:
        return False, d
    lo, hi = img.min(), img.max()  # NaN if any pixel is NaN
    if lo >= 0 and hi <= 1:  # the usual case: all pixels finite and in range, no per-condition passes
        d.update(non_finite=0, min=float(lo), max=float(hi), below_0=0, above_1=0)
    else:
        finite = np.isfinite(img)
        n_finite = int(np.count_nonzero(finite))
        d["non_finite"] = img.size - n_finite
        d["min"] = float(img[finite].min()) if n_finite else None
        d["max"] = float(img[finite].max()) if n_finite else None
        d["below_0"] = int(np.count_nonzero(img < 0))
        d["above_1"] = int(np.count_nonzero(img > 1))
    unused = _geometry(spec).unused
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
    if np.isfinite(win).all() and np.array_equal(img, band_image(win, spec)):
        # the usual case, one compare of the whole image: every band error is 0 (a finite window:
        # inf == inf would hide the NaN error the per-tile path reports)
        return True, {
            "tiles_checked": len(spec.tiles),
            "features_checked": spec.n_features,
            "max_abs_error": 0.0,
            "mismatched": {},
        }
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


def check_window_continuity(prev_window: np.ndarray, window: np.ndarray, spec: LayoutSpec) -> QAResult:
    """``check_temporal_continuity(prev_image, image, spec)`` for two images that passed
    :func:`check_spatial_integrity` against ``prev_window`` and ``window``, from the windows alone.

    A passing image holds exactly ``float32(window[session, f])`` in every pixel of f's band of
    that session, and a tile's bands cover its section's rows; so the pixel comparison is the
    comparison of the windows' cells (``prev[k + 1]`` against ``window[k]``), each cell counted
    ``band height x px_per_session`` times: same verdict and details, without keeping the
    previous 3 MB image or reading either image again.
    """
    a = np.asarray(prev_window, dtype=np.float32)
    b = np.asarray(window, dtype=np.float32)
    if a.shape != (spec.sessions, spec.n_features) or b.shape != a.shape:
        return False, {"error": f"window shapes {a.shape}, {b.shape}"}
    g = _geometry(spec)
    if spec.sessions > 1:
        diff = np.abs(a[1:] - b[:-1])  # [L - 1, F]: the cells both images show
        n_bad = np.add.reduceat(np.count_nonzero(diff, axis=0)[g.order] * g.weights, g.starts)
        worst = np.maximum.reduceat(diff.max(axis=0)[g.order], g.starts)
    else:  # one session: the images share no column
        n_bad, worst = np.zeros(len(g.starts), dtype=np.int64), np.zeros(len(g.starts), dtype=np.float32)
    tiles = [t.name for t in spec.tiles if t.features]
    per_tile = {
        name: {"mismatched_pixels": int(n), "max_abs_diff": float(m)} for name, n, m in zip(tiles, n_bad, worst)
    }
    return not n_bad.any(), {"tiles": per_tile}


def band_image(window: np.ndarray, spec: LayoutSpec) -> np.ndarray:
    """The image :func:`check_spatial_integrity` expects for ``window``, from the spec's geometry
    (not the encoder's maps): every tile's bands hold the window, every other pixel
    ``fill_value``. One gather per run of identical rows, then whole rows copied."""
    g = _geometry(spec)
    h, w, c = spec.shape
    ext = np.empty(spec.sessions * spec.n_features + 1, dtype=np.float32)
    ext[:-1] = np.asarray(window, dtype=np.float32).ravel()
    ext[-1] = spec.fill_value
    out = np.empty(spec.shape, dtype=np.float32)
    # indices in range by construction: mode="clip" skips the bounds check and the copy of ``out``
    np.take(np.take(ext, g.rows, mode="clip"), g.row_of, axis=0, out=out.reshape(h, w * c), mode="clip")
    return out


class SeriesQA:
    """The four image checks of image after image of many series (a cross-section's tickers,
    date after date), with what they share computed once.

    ``check`` gives, per image, exactly what ``check_image``, ``check_spatial_integrity``,
    ``check_feature_preservation`` and ``check_temporal_continuity`` against the series' previous
    image give, under :data:`~finnex_ml.encoding.encoders.QA_CHECKS`' names. For the continuity
    check it keeps, per series, the previous image's window when that image passed the spatial
    check (then the pixels are the window's bands: :func:`check_window_continuity`, or
    :func:`band_image` when only the new image failed), and a copy of the image only when it did
    not; a series' first image is compared with ``previous()`` (e.g. a stored image), if any.
    """

    def __init__(self, spec: LayoutSpec) -> None:
        self.spec = spec
        self._kept: dict[str, tuple[np.ndarray, bool]] = {}  # series -> (window, True) or (image copy, False)

    def check(
        self, series: str, image: np.ndarray, window: np.ndarray, previous: Callable[[], np.ndarray | None]
    ) -> dict[str, QAResult]:
        spec = self.spec
        spatial = check_spatial_integrity(image, spec, window)
        out = {
            "dtype_shape_range": check_image(image, spec),
            "spatial_integrity": spatial,
            "feature_preservation": check_feature_preservation(image, spec, window),
        }
        kept = self._kept.get(series)
        if kept is None:
            before = previous()
            if before is not None:
                out["temporal_continuity"] = check_temporal_continuity(before, image, spec)
        elif kept[1] and spatial[0]:
            out["temporal_continuity"] = check_window_continuity(kept[0], window, spec)
        else:
            before = band_image(kept[0], spec) if kept[1] else kept[0]
            out["temporal_continuity"] = check_temporal_continuity(before, image, spec)
        self._kept[series] = (
            (np.array(window, dtype=np.float32, copy=True), True) if spatial[0] else (np.array(image, copy=True), False)
        )
        return out

    def keep_only(self, series: Iterable[str]) -> None:
        """Forget every series not in ``series`` (not imaged today: its next image continues nothing)."""
        keep = set(series)
        for s in [s for s in self._kept if s not in keep]:
            del self._kept[s]


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
    "SeriesQA",
    "band_image",
    "check_feature_preservation",
    "check_image",
    "check_spatial_integrity",
    "check_temporal_continuity",
    "check_window_continuity",
    "run_qa",
]
