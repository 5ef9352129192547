"""Two costs of the single-stock year that were not the work itself (issue 18), before and after.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_eval_overheads.py [--quick] [--summary-json]

* **Page faults of the image networks** (``finnex_ml.malloc``): ``--steps`` training steps of the
  layout-aware CNN (batch 32 of real mega-images, one thread) in a fresh process with glibc's
  default allocator settings, then in one with ``keep_freed_memory()``; user and system CPU and
  minor page faults of each.
* **Whole-image occlusion** (``finnex_ml.evaluation.interpret``): the occlusion map and gradient
  saliency of one image by the same model, fed a contiguous NCHW copy (before) and the
  channels-last view the trainer and the predictions use (after); CPU seconds of each and the
  largest difference between the maps.

Real images: a few sessions of the planted synthetic world through the features, the default
layout and encoder (``finnex_ml.positive_control.build_control_data``). CPU seconds, not wall:
on a shared machine they compare better.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _summary  # noqa: E402
import numpy as np  # noqa: E402


def _cpu() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _data():
    from finnex_ml.data.synthetic import PlantedSignal
    from finnex_ml.positive_control import build_control_data

    return build_control_data(PlantedSignal("level", 1.0), "2023-09-01", "2023-09-29")


def child(mode: str, steps: int) -> None:
    """Training steps in this process; prints {"user", "sys", "minflt"} of the steps as JSON."""
    if mode == "tuned":
        from finnex_ml.malloc import keep_freed_memory

        assert keep_freed_memory()
    import torch

    from finnex_ml.models import create_model

    torch.set_num_threads(1)
    data = _data()
    torch.manual_seed(0)
    net = create_model("cnn", "small", horizons=(1,), layout=data.spec)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    imgs = np.resize(data.images, (32, *data.images.shape[1:]))
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2)  # the trainer's channels-last view

    def step() -> None:
        out = net(x)
        loss = out["classification"].logsumexp(-1).mean() + out["regression"].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # the first step allocates in both modes; not counted
    u0, s0, f0 = _cpu()
    for _ in range(steps):
        step()
    u1, s1, f1 = _cpu()
    print(json.dumps({"user": u1 - u0, "sys": s1 - s0, "minflt": f1 - f0}))


def occlusion() -> dict:
    import torch

    from finnex_ml.evaluation import interpret as ip
    from finnex_ml.malloc import keep_freed_memory
    from finnex_ml.models import create_model

    keep_freed_memory()
    torch.set_num_threads(1)
    data = _data()
    torch.manual_seed(0)
    model = create_model("cnn", "small", horizons=(1,), layout=data.spec).eval()
    img, fill = data.images[0], np.array([0.5, 0.45, 0.55], dtype=np.float32)

    def maps() -> tuple[np.ndarray, np.ndarray, float]:
        u0, s0, _ = _cpu()
        occ = ip.occlusion_importance(model, img, "image", 2, fill=fill)
        sal = ip.gradient_saliency(model, img, "image", 2)
        u1, s1, _ = _cpu()
        return occ, sal, u1 + s1 - u0 - s0

    after = maps()
    image_tensor, clone = ip._image_tensor, torch.Tensor.clone
    # before: the contiguous NCHW copy of the image, and contiguous copies per occlusion chunk
    ip._image_tensor = lambda image, device: ip._one_image(image, device).permute(0, 3, 1, 2).contiguous()
    torch.Tensor.clone = lambda self, *a, **k: clone(self)
    try:
        before = maps()
    finally:
        ip._image_tensor, torch.Tensor.clone = image_tensor, clone
    return {
        "before_s": before[2],
        "after_s": after[2],
        "occlusion_max_abs_diff": float(np.abs(after[0] - before[0]).max()),
        "occlusion_max_abs": float(np.abs(before[0]).max()),
        "saliency_max_abs_diff": float(np.abs(after[1] - before[1]).max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="3 training steps")
    ap.add_argument("--summary-json", action="store_true")
    ap.add_argument("--child", choices=("default", "tuned"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    steps = 3 if args.quick else args.steps
    if args.child:
        child(args.child, steps)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for mode in ("default", "tuned"):
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        runs[mode] = json.loads(out.strip().splitlines()[-1])
        r = runs[mode]
        print(
            f"{steps} training steps (batch 32, layout-aware CNN), {mode} malloc: user {r['user']:.2f} s, "
            f"system {r['sys']:.2f} s, {r['minflt']:,} minor page faults",
            flush=True,
        )
    cpu = {m: r["user"] + r["sys"] for m, r in runs.items()}
    print(f"training-step CPU, tuned / default: {cpu['tuned'] / cpu['default']:.2f}")
    occ = occlusion()
    print(
        f"occlusion + saliency of one image: NCHW copy {occ['before_s']:.2f} s CPU, channels-last view "
        f"{occ['after_s']:.2f} s CPU ({occ['before_s'] / occ['after_s']:.1f}x less); largest difference: "
        f"occlusion {occ['occlusion_max_abs_diff']:.1e} (values up to {occ['occlusion_max_abs']:.1e}), "
        f"saliency {occ['saliency_max_abs_diff']:.1e}"
    )
    if args.summary_json:
        _summary.emit(
            [
                _summary.row(
                    "training steps, malloc tuned",
                    f"{steps} steps of batch 32, layout-aware CNN, CPU s",
                    cpu["tuned"],
                    "glibc default malloc",
                    cpu["default"],
                    cpu["tuned"] / cpu["default"],
                    "x the CPU of the default (lower = cheaper)",
                ),
                _summary.row(
                    "occlusion + saliency, channels-last",
                    "1 image, layout-aware CNN, CPU s",
                    occ["after_s"],
                    "contiguous NCHW copy",
                    occ["before_s"],
                    occ["after_s"] / occ["before_s"],
                    "x the CPU of the NCHW copy (lower = cheaper)",
                ),
            ]
        )


if __name__ == "__main__":
    main()
