"""The ``normlab diagnose`` study: Lin et al.'s analysis, one short GAN run per method.

For each method the standard CNN discriminator (same initial raw weights for every
method) is trained briefly with hinge loss and Adam against the standard CNN generator
on the bundled 8x8 digits, while a ``Monitor`` records per-layer sigmas, weight scales and
effective-weight gradients, and ``input_gradient_norm`` the slopes on real and fake
batches. ``lr_bound_study`` compares ``max_stable_lr`` with the divergence threshold that
a short sweep of full-batch heavy-ball gradient descent finds.

The loop is the few lines it needs, built from the lab's own D-step and G-step
(``normlab.gan.steps``): D runs once on the real and fake batch in training mode (one power
step per D update), and the G step runs D frozen in eval mode, as ``normlab train`` does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normlab.reparam as reparam
from normlab.diagnostics.fisher import max_stable_lr
from normlab.diagnostics.input_grad import input_gradient_norm
from normlab.diagnostics.monitor import Monitor
from normlab.gan import models, steps

#: The methods ``normlab diagnose`` compares by default.
DEFAULT_METHODS: tuple[str, ...] = ("none", "sn", "sn_exact", "bsn", "bssn", "eqlr", "wn")
ARCHS: tuple[str, ...] = ("cnn", "resnet")


@dataclass
class DiagnoseConfig:
    """Settings of one ``diagnose`` study (the command's flags)."""

    arch: str = "cnn"
    methods: tuple[str, ...] = DEFAULT_METHODS
    steps: int = 300
    every: int = 10
    batch_size: int = 64
    width: int = 16
    z_dim: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    scale: float = reparam.DEFAULT_SCALE
    seed: int = 0
    data: str = "digits"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        self.methods = tuple(self.methods)
        if not self.methods:
            raise ValueError("give at least one method")
        bad = [m for m in self.methods if m not in reparam.METHODS]
        if bad:
            raise ValueError(
                f"unknown method(s) {', '.join(map(repr, bad))}; "
                f"choose from: {', '.join(reparam.METHODS)}"
            )
        for name in ("steps", "every", "batch_size", "width", "z_dim"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "steps" else 1)
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]


# -- data -------------------------------------------------------------------------------
def load_digits_images() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 digits as ``(N, 1, 8, 8)`` floats in ``[-1, 1]``, and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(np.asarray(d.images, dtype=np.float32)).unsqueeze(1) / 8.0 - 1.0
    return x, torch.from_numpy(np.asarray(d.target, dtype=np.int64))


def load_images(spec: str) -> Tensor:
    """Images ``(N, C, r, r)`` in ``[-1, 1]``: ``digits`` or any ``normlab.data`` image spec."""
    if spec == "digits":
        return load_digits_images()[0]
    from normlab.data import load_data

    data = load_data(spec)
    if data.kind != "images" or data.images is None:
        raise ValueError(f"diagnose needs images, and {spec!r} is not an image source")
    return data.images


# -- models ------------------------------------------------------------------------------
def build(arch: str, shape: tuple[int, ...], width: int, z_dim: int) -> tuple[nn.Module, nn.Module]:
    """``(G, D)`` of ``arch`` for images of ``shape = (C, r, r)``."""
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % 8:
        raise ValueError(f"diagnose needs square images with a side multiple of 8, got {shape}")
    c, r = shape[0], shape[1]
    if arch == "cnn":
        return (
            models.StandardCNNGenerator(z_dim, r, c, width),
            models.StandardCNNDiscriminator(r, c, width),
        )
    g_cls = getattr(models, "ResNetGenerator", None)
    d_cls = getattr(models, "ResNetDiscriminator", None)
    if g_cls is None or d_cls is None:
        raise ValueError("this version of normlab has no ResNet models; use --arch cnn")
    return g_cls(z_dim, r, c, 2 * width), d_cls(r, c, width)


def _apply(D: nn.Module, method: str, scale: float) -> nn.Module:
    if method == "none":
        return D
    if reparam.REGISTRY[method].takes_scale:
        return reparam.apply(D, method, scale=scale)
    return reparam.apply(D, method)


# -- one run -----------------------------------------------------------------------------
def train_one(
    method: str,
    images: Tensor,
    cfg: DiagnoseConfig,
    progress: Callable[[str, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the GAN ``cfg.steps`` D/G steps under ``method`` on D; return the Monitor records.

    Records are taken at step 0 (the gradients of the first D loss, at initialization),
    every ``cfg.every`` steps and at the last step. Each carries ``loss_d``, ``loss_g``
    (of the previous G step) and the input-gradient norms of D on the recorded real and
    fake batches (``grad_x_{real,fake}_{mean,max}``, D read without a power step).
    """
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    G, D = build(cfg.arch, tuple(images.shape[1:]), cfg.width, cfg.z_dim)
    G.to(device)
    D.to(device)
    with torch.no_grad():  # exact SN needs to see its input shapes before its first weight
        D(images[:2].to(device))
    _apply(D, method, cfg.scale)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=cfg.betas)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=cfg.betas)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n = images.shape[0]
    loss_g = math.nan
    with Monitor(D, every=1) as mon:
        for step in range(cfg.steps + 1):
            idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
            real = images[idx].to(device)
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(device)
            with torch.no_grad():
                fake = G(z)
            opt_d.zero_grad(set_to_none=True)
            loss_d = steps.d_step_loss(D, D, real, fake, "hinge").loss
            loss_d.backward()
            if step % cfg.every == 0 or step == cfg.steps:
                with steps.eval_mode(D), reparam.cached():
                    s_real = input_gradient_norm(D, real)
                    s_fake = input_gradient_norm(D, fake)
                mon.record(
                    step,
                    loss_d=float(loss_d.detach()),
                    loss_g=loss_g,
                    grad_x_real_mean=float(s_real.mean()),
                    grad_x_real_max=float(s_real.max()),
                    grad_x_fake_mean=float(s_fake.mean()),
                    grad_x_fake_max=float(s_fake.max()),
                )
                if progress is not None:
                    progress(method, step)
            opt_d.step()
            if step == cfg.steps:
                break
            opt_g.zero_grad(set_to_none=True)
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(device)
            lg = steps.g_step_loss(G, D, D, z, "hinge")
            lg.backward()
            opt_g.step()
            loss_g = float(lg.detach())
    return mon.records


# -- summary: the numbers the figures show and the tests assert on ----------------------
def _ratio(values: list[float]) -> float:
    """max / min of positive values; nan when any is zero (e.g. a saturated hinge loss)."""
    lo = min(values)
    return max(values) / lo if lo > 0 else math.nan


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method numbers of the analysis, from its Monitor records.

    Gradient norms are those of D's loss w.r.t. each layer's effective weight:

    * ``grad_spread``: max / min over layers, the median over the records after
      initialization (records where D's hinge loss is saturated, all gradients zero, are
      skipped); ``grad_spread_init`` / ``grad_spread_final``: at step 0 / the last step;
    * ``grad_max``: the largest per-layer gradient norm of the run;
    * ``first_layers_grad``: the first two layers' gradient norm, averaged over the records
      after initialization (``..._init``: at step 0);
    * ``bound_init`` / ``bound_max``: the Lipschitz bound at step 0 / its largest value,
      ``bound_growth`` their ratio; ``max_input_grad``: the largest measured
      ``||grad_x D(x)||``; ``bound_holds``: measured <= bound at every record
      (``max_bound_ratio``: the largest measured / bound).
    """
    names = list(records[0]["layers"])
    later = records[1:] or records

    def grads(r: dict) -> list[float]:
        return [r["layers"][k]["weight_grad_norm"] for k in names]

    spreads = [_ratio(grads(r)) for r in later]
    spreads = [x for x in spreads if math.isfinite(x)]
    ratios = []
    for r in records:
        meas = max(r["grad_x_real_max"], r["grad_x_fake_max"])
        ratios.append(meas / r["lipschitz_bound"] if r["lipschitz_bound"] > 0 else math.inf)
    finite = [x for x in ratios if math.isfinite(x)]
    bounds = [r["lipschitz_bound"] for r in records]
    return {
        "grad_spread": float(np.median(spreads)) if spreads else math.nan,
        "grad_spread_init": _ratio(grads(records[0])),
        "grad_spread_final": _ratio(grads(records[-1])),
        "grad_max": max(max(grads(r)) for r in records),
        "first_layers_grad": float(np.mean([x for r in later for x in grads(r)[:2]])),
        "first_layers_grad_init": float(np.mean(grads(records[0])[:2])),
        "bound_init": bounds[0],
        "bound_max": max(bounds),
        "bound_growth": max(bounds) / bounds[0] if bounds[0] > 0 else math.inf,
        "max_input_grad": max(max(r["grad_x_real_max"], r["grad_x_fake_max"]) for r in records),
        "max_bound_ratio": max(finite) if finite else math.nan,
        "bound_holds": len(finite) == len(ratios) and all(x <= 1.0 for x in finite),
    }


def diagnose(
    out_dir: str | Path,
    cfg: DiagnoseConfig | None = None,
    *,
    progress: Callable[[str, int], None] | None = None,
    figures: bool = True,
) -> dict[str, Any]:
    """Run the study, write ``diagnose.json`` and the figures into ``out_dir``; return the result.

    The result (and file) holds ``config``, ``methods[method] = {"records", "summary",
    "seconds"}``, ``figures`` (file names) and ``notes``.
    """
    cfg = cfg or DiagnoseConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = load_images(cfg.data)
    result: dict[str, Any] = {"config": asdict(cfg), "methods": {}, "notes": []}
    if cfg.arch == "resnet":
        result["notes"].append(
            "lipschitz_bound multiplies the layers' operator norms as in a chain; the ResNet's "
            "residual sums and sum pooling make it no upper bound there"
        )
    for method in cfg.methods:
        t0 = time.perf_counter()
        records = train_one(method, images, cfg, progress)
        result["methods"][method] = {
            "records": records,
            "summary": summarize(records),
            "seconds": time.perf_counter() - t0,
        }
    result["figures"] = []
    if figures:
        from normlab.experiments import diagnose_plots as plots

        result["figures"] = plots.diagnose_figures(result, out)
    write_json(out / "diagnose.json", result)
    return result


def write_json(path: Path, obj: Any) -> None:
    """JSON with non-finite floats kept (``NaN``, ``Infinity``), as Python's json reads them."""
    path.write_text(json.dumps(obj, indent=1, allow_nan=True), encoding="utf-8")


# -- the learning-rate bound --------------------------------------------------------------
class _Classifier(nn.Module):
    """The standard CNN discriminator's body with a 10-way head (optionally BN after convs)."""

    def __init__(self, shape: tuple[int, ...], width: int, batchnorm: bool, classes: int) -> None:
        super().__init__()
        c, r = shape[0], shape[1]
        body = models.StandardCNNDiscriminator(r, c, width)
        layers: list[nn.Module] = []
        for m in body.features:
            layers.append(m)
            if batchnorm and isinstance(m, nn.Conv2d):
                layers.append(nn.BatchNorm2d(m.out_channels))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(body.head.in_features, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def lr_bound_models(
    shape: tuple[int, ...], width: int, classes: int
) -> dict[str, Callable[[], nn.Module]]:
    """Constructors of the models of the ``--lr-bound`` study, by name."""
    d = int(np.prod(shape))
    return {
        "mlp": lambda: nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, 64),
            nn.Tanh(),
            nn.Linear(64, 64),
            nn.Tanh(),
            nn.Linear(64, classes),
        ),
        "cnn": lambda: _Classifier(shape, width, False, classes),
        "cnn_bn": lambda: _Classifier(shape, width, True, classes),
    }


def _gd_run(
    make: Callable[[], nn.Module],
    x: Tensor,
    y: Tensor,
    lr: float,
    momentum: float,
    steps: int,
    seed: int,
) -> tuple[bool, float, nn.Module]:
    """Full-batch heavy-ball GD (``torch.optim.SGD``) for ``steps``: ``(diverged, loss, net)``.

    Diverged: the loss became non-finite (or 1000x the initial loss) on the way, or ended
    above the initial loss. A rate within the bound can raise the loss for a few steps
    (momentum overshoots) but ends below where it started; above it the loss grows
    exponentially.
    """
    torch.manual_seed(seed)
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
    loss0 = math.nan
    for i in range(steps):
        opt.zero_grad(set_to_none=True)
        lt = F.cross_entropy(net(x), y)
        loss = float(lt.detach())
        if i == 0:
            loss0 = loss
        if not math.isfinite(loss) or loss > 1e3 * max(loss0, 1e-8):
            return True, loss, net
        lt.backward()
        opt.step()
    with torch.no_grad():
        loss = float(F.cross_entropy(net(x), y))
    return (not math.isfinite(loss)) or loss > loss0, loss, net


def lr_bound_study(
    *,
    momentum: float = 0.9,
    n_samples: int = 256,
    steps: int = 100,
    resolution: float = 2**0.25,
    width: int = 16,
    seed: int = 0,
    names: Sequence[str] = ("mlp", "cnn", "cnn_bn"),
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """``max_stable_lr`` vs the measured divergence threshold of heavy-ball GD on digits.

    For each model (10-class cross-entropy on a fixed subset of ``n_samples`` digits,
    full batch): the estimate ``2 (1 + mu) / lambda_max`` at initialization; then the
    threshold, found by doubling / halving from the estimate until a run of ``steps``
    steps diverges above a rate that does not, and bisecting (in log scale) down to a
    factor ``resolution``: ``threshold`` is the geometric mean of the two rates
    (``ratio = threshold / estimate``). ``lambda_final`` is the Fisher's top eigenvalue at
    the end of the largest stable run, and ``lr_final = 2 (1 + mu) / lambda_final``: the
    curvature training reached at that rate (progressive sharpening moves it toward the
    rate's own bound).
    """
    x_all, y_all = load_digits_images()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x_all.shape[0], generator=gen)[:n_samples]
    x, y = x_all[idx], y_all[idx]
    makers = lr_bound_models(tuple(x.shape[1:]), width, 10)
    out: dict[str, Any] = {
        "momentum": momentum,
        "n_samples": n_samples,
        "steps": steps,
        "models": {},
    }
    for name in names:
        make = makers[name]
        torch.manual_seed(seed)
        lr_est, lam = max_stable_lr(make(), F.cross_entropy, [(x, y)], momentum=momentum)
        probes: list[dict[str, Any]] = []
        nets: dict[float, nn.Module] = {}

        def probe(lr: float, make=make, probes=probes, nets=nets, name=name, lr_est=lr_est) -> bool:
            div, final, net = _gd_run(make, x, y, lr, momentum, steps, seed)
            probes.append({"lr": lr, "factor": lr / lr_est, "diverged": div, "final_loss": final})
            if not div:
                nets[lr] = net
            if progress is not None:
                progress(name, lr / lr_est)
            return div

        lo, hi = None, None  # largest stable, smallest diverging rate
        if probe(lr_est):
            hi = lr_est
            lr = lr_est
            for _ in range(30):
                lr /= 2
                if not probe(lr):
                    lo = lr
                    break
                hi = lr
        else:
            lo = lr_est
            lr = lr_est
            for _ in range(30):
                lr *= 2
                if probe(lr):
                    hi = lr
                    break
                lo = lr
        while lo is not None and hi is not None and hi / lo > resolution:
            mid = math.sqrt(lo * hi)
            if probe(mid):
                hi = mid
            else:
                lo = mid
        thr = (
            math.sqrt(lo * hi)
            if lo is not None and hi is not None
            else (math.inf if hi is None else 0.0)
        )
        entry: dict[str, Any] = {
            "lambda_max": lam,
            "lr_estimate": lr_est,
            "threshold": thr,
            "ratio": thr / lr_est,
            "largest_stable": lo,
            "smallest_diverging": hi,
        }
        if lo is not None:
            lr_fin, lam_fin = max_stable_lr(nets[lo], F.cross_entropy, [(x, y)], momentum=momentum)
            entry.update(lambda_final=lam_fin, lr_final=lr_fin)
        entry["sweep"] = sorted(probes, key=lambda p: p["lr"])
        out["models"][name] = entry
    return out
