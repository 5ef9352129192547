"""Whole-image occlusion and saliency on an NCHW copy (before issue 18) and on the channels-last view.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_interpret.py [--quick] [--summary-json]

``finnex_ml.evaluation.interpret`` used to feed the model a contiguous NCHW copy of the image
(and contiguous copies per occlusion chunk); the trainer and ``image_outputs`` feed the
channels-last view of the stored HWC array, on which the layout-aware stem's column pooling is
one vectorised pass. This measures the occlusion map and gradient saliency of ``--images``
images by the same layout-aware CNN both ways, in one process: CPU seconds, minor page faults,
and the largest difference between the maps. Real images: a few sessions of the planted
synthetic world through the features, the default layout and encoder
(``finnex_ml.positive_control.build_control_data``). CPU seconds, not wall: on a shared
machine they compare better.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _summary  # noqa: E402
import numpy as np  # noqa: E402


def _usage() -> tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 image")
    ap.add_argument("--summary-json", action="store_true")
    args = ap.parse_args()
    n = 1 if args.quick else args.images

    import torch

    from finnex_ml.data.synthetic import PlantedSignal
    from finnex_ml.evaluation import interpret as ip
    from finnex_ml.models import create_model
    from finnex_ml.positive_control import build_control_data

    torch.set_num_threads(1)
    data = build_control_data(PlantedSignal("level", 1.0), "2023-09-01", "2023-09-29")
    torch.manual_seed(0)
    model = create_model("cnn", "small", horizons=(1,), layout=data.spec).eval()
    images, fill = data.images[:n], np.array([0.5, 0.45, 0.55], dtype=np.float32)

    def maps() -> tuple[list[np.ndarray], list[np.ndarray], float, int]:
        c0, f0 = _usage()
        occ = [ip.occlusion_importance(model, img, "image", 2, fill=fill) for img in images]
        sal = [ip.gradient_saliency(model, img, "image", 2) for img in images]
        c1, f1 = _usage()
        return occ, sal, c1 - c0, f1 - f0

    maps()  # warm-up: first-call allocations and kernel selection count for neither
    after = maps()
    image_tensor, clone = ip._image_tensor, torch.Tensor.clone
    # before: the contiguous NCHW copy of the image, and contiguous copies per occlusion chunk
    ip._image_tensor = lambda image, device: ip._one_image(image, device).permute(0, 3, 1, 2).contiguous()
    torch.Tensor.clone = lambda self, *a, **k: clone(self)
    try:
        before = maps()
    finally:
        ip._image_tensor, torch.Tensor.clone = image_tensor, clone
    occ_diff = max(float(np.abs(a - b).max()) for a, b in zip(after[0], before[0], strict=True))
    occ_max = max(float(np.abs(b).max()) for b in before[0])
    sal_diff = max(float(np.abs(a - b).max()) for a, b in zip(after[1], before[1], strict=True))
    for name, m in (("NCHW copy (before)", before), ("channels-last view (after)", after)):
        print(f"{name}: {m[2]:.2f} s CPU, {m[3]:,} minor page faults for {n} image(s)", flush=True)
    print(
        f"{before[2] / after[2]:.1f}x less CPU; largest difference: occlusion {occ_diff:.1e} (values up to "
        f"{occ_max:.1e}), saliency {sal_diff:.1e}"
    )
    if args.summary_json:
        _summary.emit(
            [
                _summary.row(
                    "occlusion + saliency, channels-last view",
                    f"{n} image(s), layout-aware CNN small, CPU s (maps differ by at most {max(occ_diff, sal_diff):.0e})",
                    after[2],
                    "contiguous NCHW copy",
                    before[2],
                    after[2] / before[2],
                    "x the CPU of the NCHW copy (lower = cheaper)",
                )
            ]
        )


if __name__ == "__main__":
    main()
