"""One command that checks normlab on a GPU: correctness against the CPU, mixed precision,
torch.compile, host syncs, speed, and a short training run of every method.

    python benchmarks/gpu_check.py                       # CUDA, at most ~10 minutes on one GPU
    python benchmarks/gpu_check.py --device cpu --quick  # the CI smoke run (tiny sizes)

For every method of ``normlab.METHODS``, on the SNGAN/BSN standard CNN discriminator
(``normlab.gan.models``, 32x32x3, width 64; ``--quick``: width 8):

1. **device == CPU.** The same network (a deep copy) runs one training forward (one power
   step) and a backward on the same batch on the CPU and on ``--device``, in float32 with
   TF32 off. Reported: the relative error ``||a - b|| / ||b||`` of the effective weights
   (read in eval mode after the step; all layers' as one vector), the outputs, and the
   gradients of all parameters (one vector). Tolerances: 1e-5 weights, 1e-4 outputs, 1e-4
   gradients (float32 sums in another order, cuDNN's algorithms).
2. **bf16 / fp16 autocast.** Forward and backward under ``torch.autocast`` against float32:
   outputs within 5e-2 (bf16, 8-bit mantissa) / 5e-3 (fp16), gradients within 1.5e-1 /
   5e-2 (see ``TOL``; the plain network's row is the reference), everything finite, and
   every parameter, gradient and buffer (power vectors) still float32.
3. **torch.compile.** The compiled network (inductor; ``--quick``: the ``eager`` backend,
   which checks dynamo's capture without a C++ build) against eager: outputs and gradients
   within 1e-4.
4. **No host sync.** A whole GAN iteration (bench_step's ``Stepper``: G's fake batch, D
   update, G update through frozen D, Adam steps) after two warm-up iterations, run under
   ``torch.cuda.set_sync_debug_mode("error")``: any operation that waits for the device
   (``.item()``, ``nonzero``, a blocking copy) fails it. CUDA only; 'n/a' elsewhere.
5. **Speed.** bench_step's interleaved timing against the baked plain twin (``x plain``,
   the median of per-round ratios) for the D step and the whole GAN iteration at batch 64
   and 256, with PyTorch's ``spectral_norm`` as a reference row (``x torch_sn``: the
   method's ratio over PyTorch SN's, D step).
6. **Training.** ``normlab.gan.trainer.train`` of the standard CNN GAN on CIFAR-shaped
   synthetic data (32x32x3 colour blobs, an ``npz:`` file), a few hundred steps per method
   (``--quick``: 3): status, steps/s and the final FID on the run's own feature network
   (one network shared by all methods; for comparing methods within this check only).

It prints one table and writes every figure to ``--json`` (default ``gpu_check.json``).
The exit status is 1 if a check (1-4) fails, a training run does not finish, or a timing
cannot run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import normlab as nl
from bench_step import Stepper, build, measure

#: Relative-error tolerances (``||a - b|| / ||b||``) of each check.
#: Errors of weights and gradients are over all of a network's tensors concatenated.
#: Autocast: bf16 keeps 8 mantissa bits (unit roundoff 3.9e-3), fp16 11 (4.9e-4). Measured on
#: the CPU (width 8, batch 4): the plain network (method none) is off by 1.5e-2 / 7e-3
#: (bf16 outputs / gradients) and 6e-4 / 3.4e-3 (fp16); the worst method, eqlr, by
#: 1.9e-2 / 8e-2 and 2.3e-3 / 2.9e-2. The bounds are about twice the worst measured.
TOL = {
    "device_weights": 1e-5,
    "device_outputs": 1e-4,
    "device_grads": 1e-4,
    "bf16_outputs": 5e-2,
    "bf16_grads": 1.5e-1,
    "fp16_outputs": 5e-3,
    "fp16_grads": 5e-2,
    "compile_outputs": 1e-4,
    "compile_grads": 1e-4,
}
RESOLUTION = 32
#: Baseline rows of the timing (not normlab methods).
TORCH_SN = "torch_sn"


def rel_err(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (``||a - b||`` when ``b`` is zero)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def weighted_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def discriminator(method: str, width: int) -> nn.Module:
    """bench_step's standard CNN D with ``method`` (width 64 there; narrower when asked)."""
    if width == 64:
        return build(method, RESOLUTION)
    from normlab.gan.models import StandardCNNDiscriminator

    torch.manual_seed(0)
    d = StandardCNNDiscriminator(resolution=RESOLUTION, channels=3, width=width)
    nl.apply(d, method)
    if method == "sn_exact":  # the exact norm needs to see the input shape once
        d(torch.zeros(1, 3, RESOLUTION, RESOLUTION))
    return d


def forward_backward(
    d: nn.Module, x: Tensor, autocast: torch.dtype | None = None
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """One training-mode forward (one power step) and backward of the hinge-like loss
    ``mean(D(x))``; returns ``(outputs, effective weights read in eval mode, gradients)``."""
    d.train()
    d.zero_grad(set_to_none=True)
    device_type = x.device.type
    with torch.autocast(device_type, dtype=autocast or torch.float32, enabled=autocast is not None):
        out = d(x)
    out.float().mean().backward()
    d.eval()
    with torch.no_grad():
        weights = {n: m.weight.detach().clone() for n, m in weighted_layers(d).items()}
    d.train()
    grads = {n: p.grad.detach().clone() for n, p in d.named_parameters() if p.grad is not None}
    return out.detach().float(), weights, grads


def rel_err_all(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """``rel_err`` of all of ``a``'s tensors against ``b``'s, as one concatenated vector
    (infinite when they name different tensors)."""
    if a.keys() != b.keys():
        return math.inf
    if not b:
        return 0.0
    flat = lambda d: torch.cat([d[k].detach().double().cpu().flatten() for k in b])  # noqa: E731
    return rel_err(flat(a), flat(b))


def check_device(method: str, device: torch.device, width: int, batch: int) -> dict[str, Any]:
    """The CPU and ``device`` copies of one network after one step on one batch."""
    torch.manual_seed(1)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION)
    # Two builds from one seed (not a deep copy: a copy of an sn_exact layer does not carry
    # the kept product that starts the original's next power step, so the two differ).
    cpu = discriminator(method, width)
    try:
        dev = discriminator(method, width).to(device)
        out_c, w_c, g_c = forward_backward(cpu, x)
        out_d, w_d, g_d = forward_backward(dev, x.to(device))
    except RuntimeError as err:
        return {"ok": False, "error": str(err).splitlines()[0]}
    res = {
        "weights": rel_err_all(w_d, w_c),
        "outputs": rel_err(out_d, out_c),
        "grads": rel_err_all(g_d, g_c),
    }
    res["ok"] = all(res[k] <= TOL[f"device_{k}"] for k in ("weights", "outputs", "grads"))
    return res


def _float32_state(d: nn.Module) -> bool:
    tensors = [*d.parameters(), *(p.grad for p in d.parameters() if p.grad is not None)]
    tensors += [b for b in d.buffers() if b.is_floating_point()]
    return all(t.dtype == torch.float32 for t in tensors)


def check_autocast(
    method: str, device: torch.device, width: int, batch: int, dtype: torch.dtype
) -> dict[str, Any]:
    """Autocast forward/backward against float32 on the same network and batch."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    torch.manual_seed(1)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=device)
    ref = discriminator(method, width).to(device)
    low = discriminator(method, width).to(device)
    try:
        out_r, _, g_r = forward_backward(ref, x)
        out_l, _, g_l = forward_backward(low, x, autocast=dtype)
    except RuntimeError as err:  # e.g. a dtype this device's autocast does not support
        return {"ok": False, "error": str(err).splitlines()[0]}
    finite = bool(torch.isfinite(out_l).all()) and all(
        bool(torch.isfinite(g).all()) for g in g_l.values()
    )
    res = {
        "outputs": rel_err(out_l, out_r),
        "grads": rel_err_all(g_l, g_r),
        "finite": finite,
        "float32_state": _float32_state(low),
    }
    res["ok"] = (
        finite
        and res["float32_state"]
        and res["outputs"] <= TOL[f"{name}_outputs"]
        and res["grads"] <= TOL[f"{name}_grads"]
    )
    return res


def check_compile(
    method: str, device: torch.device, width: int, batch: int, backend: str
) -> dict[str, Any]:
    """``torch.compile(D)`` against eager D (two copies of one network, same batch)."""
    torch.manual_seed(1)
    x = torch.randn(batch, 3, RESOLUTION, RESOLUTION, device=device)
    eager = discriminator(method, width).to(device)
    compiled_copy = discriminator(method, width).to(device)
    compiled = torch.compile(compiled_copy, backend=backend)
    t0 = time.perf_counter()
    try:
        out_e, _, g_e = forward_backward(eager, x)
        compiled_copy.train()
        compiled_copy.zero_grad(set_to_none=True)
        out_c = compiled(x)
        out_c.float().mean().backward()
    except Exception as err:  # a compiler failure is a finding, not a crash of the check
        return {"ok": False, "error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
    g_c = {n: p.grad for n, p in compiled_copy.named_parameters() if p.grad is not None}
    res = {
        "outputs": rel_err(out_c, out_e),
        "grads": rel_err_all(g_c, g_e),
        "compile_s": time.perf_counter() - t0,
        "backend": backend,
    }
    res["ok"] = res["outputs"] <= TOL["compile_outputs"] and res["grads"] <= TOL["compile_grads"]
    return res


def check_no_sync(method: str, device: torch.device, batch: int) -> dict[str, Any]:
    """A whole GAN iteration under ``set_sync_debug_mode("error")`` (CUDA), after warm-up."""
    if device.type != "cuda":
        return {"ok": None, "result": "n/a"}
    torch.manual_seed(0)
    try:
        st = Stepper(method, batch, RESOLUTION, full=True, device=device)
        st.sync = False
        for _ in range(2):
            st.step()  # Adam's state, cuDNN's algorithm choice, lazily built buffers
    except Exception as err:
        return {"ok": False, "result": f"error: {type(err).__name__}: {str(err).splitlines()[0]}"}
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        st.step()
        return {"ok": True, "result": "none"}
    except RuntimeError as err:
        return {"ok": False, "result": str(err).splitlines()[0]}
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize(device)


def timing(
    methods: list[str], device: torch.device, batches: list[int], steps: int, warmup: int
) -> dict[str, Any]:
    """bench_step's ``measure`` (method over its baked twin) for the D step and the whole
    iteration at each batch; PyTorch's SN as a reference row of the D step."""
    out: dict[str, Any] = {}
    for batch in batches:
        for full in (False, True):
            rows = methods if full else [TORCH_SN, *methods]
            table: dict[str, Any] = {}
            for m in rows:  # one at a time: a method that fails here leaves the others' rows
                try:
                    med, base, ratio, interval, _ = measure(
                        [m], batch, steps, warmup, RESOLUTION, full, device=str(device)
                    )
                except Exception as err:
                    table[m] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
                    continue
                table[m] = {
                    "ms": med[m] * 1e3,
                    "plain_ms": base[m] * 1e3,
                    "x_plain": ratio[m],
                    "ci95": list(interval[m]),
                }
                sn_ratio = table.get(TORCH_SN, {}).get("x_plain")
                if not full and sn_ratio:
                    table[m]["x_torch_sn"] = ratio[m] / sn_ratio
            out[f"{'iter' if full else 'dstep'}@{batch}"] = {
                m: table[m] for m in [*methods, TORCH_SN] if m in table
            }
    return out


def synthetic_cifar(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` CIFAR-shaped images (32x32x3 uint8): a few soft colour blobs on a colour
    gradient, so the data has structure a generator can learn (and a feature net can see)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:RESOLUTION, 0:RESOLUTION].astype(np.float32) / (RESOLUTION - 1)
    images = np.empty((n, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n)
    palette = rng.uniform(0, 1, size=(10, 3)).astype(np.float32)
    for i in range(n):
        base = palette[labels[i]]
        img = base * (0.5 + 0.5 * yy[..., None]) + (1 - base) * 0.3 * xx[..., None]
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.2, 0.8, size=2)
            r = rng.uniform(0.08, 0.2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
            img = img * (1 - blob[..., None]) + rng.uniform(0, 1, size=3) * blob[..., None]
        img += rng.normal(0, 0.03, size=img.shape)
        images[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    np.savez(path, images=images, labels=labels)
    return path


def train_runs(
    methods: list[str], device: torch.device, work: Path, steps: int, n_images: int, quick: bool
) -> dict[str, Any]:
    """A short ``normlab.gan.trainer.train`` of each method on synthetic CIFAR-shaped data."""
    from normlab.gan.config import TrainConfig
    from normlab.gan.trainer import train

    data = synthetic_cifar(work / "synthetic_cifar.npz", n_images)
    base = TrainConfig(
        data=f"npz:{data}",
        arch="cnn",
        steps=steps,
        batch_size=8 if quick else 64,
        width=8 if quick else 64,
        log_every=max(1, steps // 4),
        eval_every=0,
        ckpt_every=0,
        eval_samples=64 if quick else 1000,
        feature_cache=str(work / "feature_net.pt"),
        device=str(device),
    )
    out = {}
    for m in methods:
        t0 = time.perf_counter()
        try:
            res = train(base.replace(method=m), work / m, progress=False)
        except Exception as err:
            out[m] = {"status": "failed", "error": f"{type(err).__name__}: {err}", "ok": False}
            continue
        out[m] = {
            "status": res["status"],
            "steps": res["steps"],
            "steps_per_sec": res["steps_per_sec"],
            "wall_s": time.perf_counter() - t0,
            "metrics": res["metrics"],
            "ok": res["status"] == "finished",
        }
    return out


def _fmt(x: float | None, spec: str = ".1e") -> str:
    return "-" if x is None else format(x, spec)


def _mark(res: dict[str, Any] | None) -> str:
    if res is None:
        return "-"
    if res.get("ok") is None:
        return "n/a"
    return "ok" if res["ok"] else "FAIL"


def table(report: dict[str, Any]) -> str:
    """The one table: a row per method (and PyTorch SN's timing row)."""
    timing_keys = list(report["timing"])
    head = ["method", "w err", "out err", "grad err", "dev", "bf16", "fp16", "compile", "sync"]
    head += [f"{k} x plain" for k in timing_keys]
    dstep = [k for k in timing_keys if k.startswith("dstep")]
    head += [f"{k} x torch_sn" for k in dstep]
    head += ["train", "steps/s", "fid"]
    rows = []
    for m in [*report["methods"], TORCH_SN]:
        r = report["checks"].get(m, {})
        dev = r.get("device")
        tr = report["training"].get(m)
        row = [
            m,
            _fmt(dev and dev["weights"]),
            _fmt(dev and dev["outputs"]),
            _fmt(dev and dev["grads"]),
            _mark(dev),
            _mark(r.get("bf16")),
            _mark(r.get("fp16")),
            _mark(r.get("compile")),
            r["sync"]["result"] if "sync" in r else "-",
        ]
        for k in timing_keys:
            t = report["timing"][k].get(m)
            row.append(_fmt(t and t.get("x_plain"), ".3f") if not (t and "error" in t) else "err")
        for k in dstep:
            t = report["timing"][k].get(m)
            row.append(_fmt(t and t.get("x_torch_sn"), ".3f"))
        fid = (tr or {}).get("metrics", {}).get("fid")
        row += [
            (tr or {}).get("status", "-"),
            _fmt(tr and tr.get("steps_per_sec"), ".1f"),
            _fmt(fid, ".3g"),
        ]
        rows.append(row)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), "-" * len(line(head)), *(line(r) for r in rows)])


def run_check(args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device")
        # Agreement is checked in true float32 (TF32 would round inputs to 10-bit mantissas).
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    methods = args.methods.split(",") if args.methods else list(nl.METHODS)
    bad = [m for m in methods if m not in nl.METHODS]
    if bad:
        raise SystemExit(f"gpu_check: unknown method(s) {bad}; choose from {list(nl.METHODS)}")
    quick = args.quick
    width = 8 if quick else 64
    batch = 4 if quick else 32
    backend = "eager" if quick else "inductor"
    report: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "normlab": nl.__version__,
        "quick": quick,
        "tolerances": TOL,
        "methods": methods,
        "checks": {},
        "timing": {},
        "training": {},
    }
    t_start = time.perf_counter()
    for m in methods:
        progress(f"checks: {m}")
        r = report["checks"].setdefault(m, {})
        r["device"] = check_device(m, device, width, batch)
        r["bf16"] = check_autocast(m, device, width, batch, torch.bfloat16)
        r["fp16"] = check_autocast(m, device, width, batch, torch.float16)
        r["compile"] = check_compile(m, device, width, batch, backend)
        r["sync"] = check_no_sync(m, device, 4 if quick else 64)
    if not args.skip_timing:
        progress("timing")
        batches = [2] if quick else [64, 256]
        steps, warmup = (1, 0) if quick else (args.timing_steps, 5)
        report["timing"] = timing(methods, device, batches, steps, warmup)
    if not args.skip_training:
        progress("training")
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            report["training"] = train_runs(
                methods,
                device,
                Path(tmp),
                steps=3 if quick else args.train_steps,
                n_images=64 if quick else 5000,
                quick=quick,
            )
    report["wall_s"] = time.perf_counter() - t_start
    failed = [
        f"{m}: {part}"
        for m, r in report["checks"].items()
        for part, res in r.items()
        if res.get("ok") is False
    ]
    failed += [f"{m}: training" for m, r in report["training"].items() if not r["ok"]]
    failed += [
        f"{m}: timing {k}"
        for k, rows in report["timing"].items()
        for m, r in rows.items()
        if "error" in r
    ]
    report["failed"] = failed
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu, ...")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run)")
    parser.add_argument("--methods", default=None, help="comma-separated (default: all)")
    parser.add_argument("--json", type=Path, default=Path("gpu_check.json"), help="output file")
    parser.add_argument("--timing-steps", type=int, default=30, help="timed rounds (30)")
    parser.add_argument("--train-steps", type=int, default=300, help="training steps (300)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args(argv)

    def progress(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_check(args, progress)
    print(
        f"normlab {report['normlab']}, torch {report['torch']}, {report['device_name']} "
        f"({report['device']}){', quick' if args.quick else ''}: {report['wall_s']:.0f} s"
    )
    print(table(report))
    print("tolerances (relative error): " + ", ".join(f"{k} {v:g}" for k, v in TOL.items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"json: {args.json}")
    if report["failed"]:
        print("FAILED: " + "; ".join(report["failed"]))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
