"""Check facemtl's GPU paths for real and measure them: detector parity and speed, mixed-precision training
(with a SIGKILL and resume), evaluation, and network throughput, each against the CPU in the same run.

Needs a data folder in the real layouts; where the real data cannot go, make one with
``tools/make_synthetic_data.py`` (then the training figures say nothing about accuracy, only that the code
runs and how fast).

    python tools/cuda_check.py --data DIR --out DIR [--device cuda] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from facemtl.analyzer import FaceAnalyzer
from facemtl.batch import collect_files
from facemtl.detect.detector import FaceDetector
from facemtl.evaluate.suite import evaluate_model, headline
from facemtl.io import load_image
from facemtl.model.multitask import ModelConfig, MultiTaskNet, load_model

ROOT = Path(__file__).resolve().parent.parent


def median_time(fn: Any, repeats: int, sync: bool) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def detector_check(photos: list[np.ndarray], device: str) -> dict[str, Any]:
    """Same faces on the CPU and the device (box IoU), and photos/s for a list of 16 on each."""
    from torchvision.ops import box_iou
    cpu, dev = FaceDetector(device="cpu"), FaceDetector(device=device)
    a, b = cpu.detect(photos), dev.detect(photos)
    matched, total, worst = 0, 0, 1.0
    for fa, fb in zip(a, b):
        total += max(len(fa), len(fb))
        if fa and fb:
            iou = box_iou(torch.tensor(np.array([f.box for f in fa])), torch.tensor(np.array([f.box for f in fb])))
            best = iou.max(dim=1).values
            matched += int((best >= 0.9).sum())
            worst = min(worst, float(best.min()))
    batch = (photos * 16)[:16]
    out = {"photos": len(photos), "faces_cpu": sum(map(len, a)), "faces_device": sum(map(len, b)),
           "faces_matched_iou0.9": matched, "faces_either": total, "worst_iou": worst}
    for name, det, sync in (("cpu", cpu, False), (device, dev, True)):
        out[f"photos_per_s_list16_{name}"] = 16 / median_time(lambda: det.detect(batch), 3, sync)
    return out


def write_config(path: Path, data: Path, trunk: str, size: int, epochs: int, steps: int) -> Path:
    """A small joint config over all three datasets in ``data`` (cache beside the runs)."""
    path.write_text(f"""
[model]
trunk = "{trunk}"
input_size = {size}
identity_margin = 0.3
identity_from = "embedding"
[data]
root = "{data}"
cache_dir = "{path.parent / 'cache'}"
identity_val_per_id = 1
[train]
epochs = {epochs}
steps_per_epoch = {steps}
identities_per_batch = 8
images_per_identity = 4
others_per_batch = 32
checkpoint_every = 2
num_workers = 4
weighting = "uncertainty"
""")
    return path


def train_check(config: Path, out: Path, kill_after_s: float | None) -> dict[str, Any]:
    """Train (optionally SIGKILL once a checkpoint exists, then resume) and read what the run logged."""
    cmd = [sys.executable, "-m", "facemtl.cli", "train", "--config", str(config), "--out", str(out)]
    log = open(out.parent / f"{out.name}.log", "w")
    killed = False
    t0 = time.time()
    if kill_after_s is not None:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None and not ((out / "checkpoint.pt").exists() and time.time() - t0 > kill_after_s):
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    text = (out.parent / f"{out.name}.log").read_text(errors="replace")
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()] if (out / "log.csv").exists() else []
    result: dict[str, Any] = {"rc": done.returncode, "killed_and_resumed": killed and "resumed at" in text,
                              "wall_s": time.time() - t0, "header": next((ln for ln in text.splitlines()
                                                                           if "facemtl train:" in ln), "")}
    if len(rows) > 2:
        first, last = (dict(zip(rows[0], r)) for r in (rows[1], rows[-1]))
        result["untrained_val"] = {k: v for k, v in first.items() if k.startswith("val_")}
        result["last_epoch"] = {k: v for k, v in last.items() if k.startswith(("val_", "samples_per_s", "epoch"))}
    if done.returncode == 0:
        model = load_model(out / "model.pt")
        result["model_loads"] = model.config.trunk
    else:
        result["log_tail"] = text[-3000:]
    return result


def net_throughput(trunk: str, size: int, device: str, batch: int) -> dict[str, float]:
    """Forward+backward and inference samples/s of the multi-task network: fp32, and on a GPU autocast
    fp16/bf16 too."""
    dev = torch.device(device)
    net = MultiTaskNet(ModelConfig(trunk=trunk, input_size=size, num_identities=390)).to(dev)
    net = net.to(memory_format=torch.channels_last)
    x = (torch.rand(batch, 3, size, size, device=dev) * 255).contiguous(memory_format=torch.channels_last)
    sync = dev.type == "cuda"
    out: dict[str, float] = {}
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16} if sync else {"fp32": None}
    for name, dtype in dtypes.items():
        ctx = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype else (lambda: torch.autocast(dev.type,
                                                                                                    enabled=False))

        def step() -> None:
            with ctx():
                y = net(x)
            sum(v.float().mean() for v in y.values()).backward()

        def infer() -> None:
            with torch.inference_mode(), ctx():
                net(x)
        reps = 10 if sync else 2
        out[f"train_{name}"] = batch / median_time(step, reps, sync)
        out[f"infer_{name}"] = batch / median_time(infer, reps, sync)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="training steps per epoch")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)

    def step(name: str, fn: Any) -> None:
        t0 = time.time()
        try:
            report[name] = fn()
        except Exception as exc:  # a failed check is a finding to report, and the others still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"== {name} ({time.time() - t0:.0f} s): {json.dumps(report[name])[:1500]}", flush=True)
        (args.out / "cuda_check.json").write_text(json.dumps(report, indent=1))

    photos = [load_image(f) for f in collect_files([args.data / "celeba_wild" / "test"])[:15]]
    big = cv2.resize(photos[0], (6000, 4000), interpolation=cv2.INTER_LINEAR)
    step("detector", lambda: detector_check(photos + [big], args.device))
    runs = args.out / "runs"
    runs.mkdir(exist_ok=True)
    step("train_deepid2_64", lambda: train_check(write_config(runs / "d.toml", args.data, "deepid2", 64, args.epochs,
                                                                             args.steps),
                                                 runs / "deepid2", kill_after_s=None))
    step("train_resnet_112_kill_resume", lambda: train_check(
        write_config(runs / "r.toml", args.data, "resnet", 112, args.epochs, args.steps), runs / "resnet", kill_after_s=5.0))

    def evaluate() -> dict[str, float]:
        analyzer = FaceAnalyzer(model=runs / "resnet" / "model.pt", device=args.device)
        return headline(evaluate_model(analyzer, args.data, cache_dir=runs / "cache", out_dir=runs / "eval"))
    step("evaluate_resnet_on_device", evaluate)
    for trunk, size in (("deepid2", 64), ("resnet", 112)):
        step(f"net_{trunk}_{size}_{args.device}_b256", lambda: net_throughput(trunk, size, args.device, 256))
        step(f"net_{trunk}_{size}_cpu_b64", lambda: net_throughput(trunk, size, "cpu", 64))


if __name__ == "__main__":
    main()
