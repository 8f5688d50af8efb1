"""Weight normalization experiment: Salimans & Kingma's (2016) claims at CPU size.

``W = g * v / ||v||`` per output unit. The paper's claims, each measured here:

1. ``training``: WN trains faster than the standard parametrization under the same optimizer, and
   WN combined with mean-only batch normalization (subtract the batch mean of each pre-activation,
   a running mean at test time; no division by the standard deviation) is the best variant. A
   small CNN on the bundled digits (convs ``channels``, 3x3, strides ``1, 2, 2, 1``, ReLU, global
   average pool, linear), trained with Adam at the same learning rate over ``seeds``, variants:

   - ``plain``: PyTorch's default init, no normalization;
   - ``wn_noinit``: :func:`normlab.weight_norm` on every layer, registered on the plain init
     (same function, only the parametrization differs);
   - ``wn``: WN plus :func:`normlab.data_init` (the paper's data-dependent init);
   - ``wn_mobn``: WN + data init + mean-only batch norm after each conv (convs without bias);
   - ``bn``: full BatchNorm after each conv (the reference the paper compares with).

   Reported: the training loss (mean of the last ``log_every`` mini-batch losses) along
   training, steps to reach ``target_loss``, the final test accuracy.
2. ``data_init``: per layer, the per-unit mean and standard deviation of the pre-activations
   before and after :func:`normlab.data_init`, on the init batch (the first ``init_batch``
   training images) and on the held-out test images. The paper's init makes them 0 and 1 on the
   init batch.
3. ``conditioning``: the paper argues that separating length from direction conditions the
   optimisation better (and that ``||v||`` grows under gradient steps, making the effective step
   on the direction decrease). Measured along SGD trajectories (momentum 0.9) of the same CNN in
   the plain and the WN parametrization (WN registered on the plain init, so both start from the
   same function): the top eigenvalue of the loss's Hessian w.r.t. all parameters (power
   iteration on Hessian-vector products, on a fixed batch) and the spread (max/min over layers)
   of the relative gradient ``||dL/dtheta_l|| / ||theta_l||`` (``theta = W`` plain, ``v`` WN).
   These use a plain-autograd formula of WN written here (:func:`functional_forward`), not
   normlab's layers, whose second derivatives are not relied on.

Outputs: ``wn.json`` and ``wn.png``.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normlab as nl
from normlab.experiments._common import (
    accuracy,
    band,
    load_digits_split,
    save_figure,
    seed_everything,
    single_thread,
    write_json,
)

VARIANTS = ("plain", "wn_noinit", "wn", "wn_mobn", "bn")
STRIDES = (1, 2, 2, 1)


@dataclass
class WNConfig:
    channels: tuple[int, ...] = (16, 32, 32, 32)
    lr: float = 3e-3  # Adam, the same for every variant (the paper's CIFAR rate)
    batch_size: int = 64
    epochs: int = 12
    log_every: int = 5
    target_loss: float = 0.2
    init_batch: int = 256
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # conditioning
    cond_steps: int = 200
    cond_lr: float = 0.05
    cond_checkpoints: int = 5
    cond_batch: int = 512
    power_iters: int = 20

    @classmethod
    def quick(cls, seed: int = 0) -> WNConfig:
        return cls(
            channels=(8, 16, 16, 16),
            epochs=2,
            seeds=[seed, seed + 1],
            cond_steps=10,
            cond_checkpoints=2,
            cond_batch=128,
            power_iters=5,
        )


class MeanOnlyBatchNorm2d(nn.Module):
    """``y = x - mean_batch[x] + b`` per channel; the running mean replaces the batch mean in eval.

    The paper's mean-only batch normalization: centres the pre-activations (no division by their
    standard deviation, so no noise in their scale), and carries the bias the conv lacks.
    """

    def __init__(self, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            mean = x.mean(dim=(0, 2, 3))
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
        else:
            mean = self.running_mean
        return x - mean.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class CNN(nn.Module):
    """conv(3x3)-[norm]-ReLU per entry of ``channels`` (strides 1, 2, 2, 1), avg pool, linear."""

    def __init__(self, channels: tuple[int, ...], norm: str = "none") -> None:
        super().__init__()
        if norm not in ("none", "bn", "mobn"):
            raise ValueError(f"unknown norm {norm!r}; choose one of: none, bn, mobn")
        if len(channels) > len(STRIDES):
            raise ValueError(f"at most {len(STRIDES)} conv layers, got channels={channels}")
        layers: list[nn.Module] = []
        c_in = 1
        for c, stride in zip(channels, STRIDES):
            layers.append(nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=norm == "none"))
            if norm == "bn":
                layers.append(nn.BatchNorm2d(c))
            elif norm == "mobn":
                layers.append(MeanOnlyBatchNorm2d(c))
            layers.append(nn.ReLU())
            c_in = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def weight_layers(model: nn.Module) -> list[nn.Module]:
    """The conv and linear layers in forward order."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def build(variant: str, cfg: WNConfig, seed: int, init_x: Tensor) -> nn.Module:
    """The variant's model, seeded; WN variants get :func:`normlab.weight_norm` on every layer."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    torch.manual_seed(seed)
    norm = {"plain": "none", "wn_noinit": "none", "wn": "none", "wn_mobn": "mobn", "bn": "bn"}
    model = CNN(cfg.channels, norm[variant])
    if variant.startswith("wn"):
        nl.apply(model, "wn")
    if variant in ("wn", "wn_mobn"):
        nl.data_init(model, init_x)
    return model


# -- 1. training speed -------------------------------------------------------------------


def train_variant(variant: str, seed: int, cfg: WNConfig, data: tuple[Tensor, ...]) -> dict:
    x_tr, y_tr, x_te, y_te = data
    model = build(variant, cfg, seed, x_tr[: cfg.init_batch])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = seed_everything(seed)
    curve: list[float] = []
    window: list[float] = []
    steps_to_target = None
    step = 0
    start = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(x_tr) - cfg.batch_size + 1, cfg.batch_size):
            j = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x_tr[j]), y_tr[j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            window.append(loss.item())
            if len(window) == cfg.log_every:
                curve.append(statistics.fmean(window))
                window = []
                if steps_to_target is None and curve[-1] < cfg.target_loss:
                    steps_to_target = step
    return {
        "seed": seed,
        "loss_curve": curve,
        "final_train_loss": curve[-1],
        "steps_to_target": steps_to_target,
        "test_acc": accuracy(model, x_te, y_te),
        "seconds": time.perf_counter() - start,
    }


# -- 2. data-dependent init ----------------------------------------------------------------


@torch.no_grad()
def preactivation_stats(model: nn.Module, x: Tensor) -> list[dict[str, float]]:
    """Per conv/linear layer: the per-unit mean and std of its output (the pre-activation)."""
    outs: list[Tensor] = []
    handles = [
        m.register_forward_hook(lambda m, i, o: outs.append(o.detach()))
        for m in weight_layers(model)
    ]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    stats = []
    for o in outs:
        dims = [0] if o.dim() == 2 else [0, 2, 3]
        mean, std = o.mean(dim=dims), o.std(dim=dims, unbiased=False)
        stats.append(
            {
                "std_mean": float(std.mean()),
                "std_min": float(std.min()),
                "std_max": float(std.max()),
                "abs_mean_mean": float(mean.abs().mean()),
            }
        )
    return stats


def part_data_init(cfg: WNConfig, data: tuple[Tensor, ...], seed: int) -> dict[str, Any]:
    x_tr, _, x_te, _ = data
    init_x = x_tr[: cfg.init_batch]
    torch.manual_seed(seed)
    model = CNN(cfg.channels, "none")
    nl.apply(model, "wn")
    before = {"init_batch": preactivation_stats(model, init_x), "held_out": None}
    before["held_out"] = preactivation_stats(model, x_te)
    nl.data_init(model, init_x)
    after = {
        "init_batch": preactivation_stats(model, init_x),
        "held_out": preactivation_stats(model, x_te),
    }
    return {"before": before, "after": after, "init_batch_size": len(init_x)}


# -- 3. conditioning -----------------------------------------------------------------------


def plain_params(cfg: WNConfig, seed: int) -> list[Tensor]:
    """``[W1, b1, ..., W_fc, b_fc]`` of the plain CNN of ``seed`` (PyTorch's default init)."""
    torch.manual_seed(seed)
    model = CNN(cfg.channels, "none")
    out: list[Tensor] = []
    for m in weight_layers(model):
        out += [m.weight.detach().clone(), m.bias.detach().clone()]
    return out


def to_wn(params: list[Tensor]) -> list[Tensor]:
    """``[v, g, b]`` per layer with ``v = W`` and ``g = ||W||`` per output unit: same function."""
    out: list[Tensor] = []
    for w, b in zip(params[::2], params[1::2]):
        g = w.flatten(1).norm(dim=1)
        out += [w.clone(), g, b.clone()]
    return out


def wn_weight(v: Tensor, g: Tensor) -> Tensor:
    """``W = g * v / ||v||`` with the norm over every dim but 0 (plain autograd)."""
    norm = v.flatten(1).norm(dim=1)
    return v * (g / norm).view(-1, *([1] * (v.dim() - 1)))


def functional_forward(params: list[Tensor], x: Tensor, wn: bool) -> Tensor:
    """The :class:`CNN` (no norm layers) as a function of its parameters, plain or WN."""
    k = 3 if wn else 2
    layers = [params[i : i + k] for i in range(0, len(params), k)]
    for n, p in enumerate(layers):
        w = wn_weight(p[0], p[1]) if wn else p[0]
        b = p[-1]
        if n == len(layers) - 1:
            return F.linear(x.mean(dim=(2, 3)), w, b)
        x = F.relu(F.conv2d(x, w, b, stride=STRIDES[n], padding=1))
    raise ValueError("no layers")  # pragma: no cover


def top_hessian_eigenvalue(loss_fn, params: list[Tensor], iters: int, seed: int = 0) -> float:
    """Largest-magnitude eigenvalue of the Hessian of ``loss_fn(params)``: power iteration on
    Hessian-vector products (double backward), the Rayleigh quotient of the last vector."""
    params = [p.detach().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(loss_fn(params), params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    vec = [torch.randn(p.shape, generator=gen) for p in params]
    norm = math.sqrt(sum(float(v.square().sum()) for v in vec))
    vec = [v / norm for v in vec]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=vec, retain_graph=True)
        lam = float(sum((h * v).sum() for h, v in zip(hv, vec)))
        norm = math.sqrt(sum(float(h.square().sum()) for h in hv))
        if norm == 0:
            return 0.0
        vec = [h / norm for h in hv]
    return lam


def relative_gradients(loss_fn, params: list[Tensor], wn: bool) -> list[float]:
    """Per layer ``||dL/dtheta|| / ||theta||``, ``theta`` the weight (plain) or ``v`` (WN)."""
    params = [p.detach().requires_grad_(True) for p in params]
    grads = torch.autograd.grad(loss_fn(params), params)
    k = 3 if wn else 2
    return [float(grads[i].norm() / params[i].detach().norm()) for i in range(0, len(params), k)]


def part_conditioning(cfg: WNConfig, data: tuple[Tensor, ...]) -> dict[str, Any]:
    x_tr, y_tr = data[0], data[1]
    xb, yb = x_tr[: cfg.cond_batch], y_tr[: cfg.cond_batch]
    marks = sorted(
        {
            round(i * cfg.cond_steps / (cfg.cond_checkpoints - 1))
            for i in range(cfg.cond_checkpoints)
        }
    )
    runs: dict[str, list[dict]] = {"plain": [], "wn": []}
    for seed in cfg.seeds:
        for name in runs:
            wn = name == "wn"
            params = plain_params(cfg, seed)
            if wn:
                params = to_wn(params)
            params = [p.requires_grad_(True) for p in params]
            opt = torch.optim.SGD(params, lr=cfg.cond_lr, momentum=0.9)
            gen = torch.Generator().manual_seed(seed)
            checkpoints = []
            losses = []

            def fixed_loss(ps: list[Tensor], wn: bool = wn) -> Tensor:
                return F.cross_entropy(functional_forward(ps, xb, wn), yb)

            for step in range(cfg.cond_steps + 1):
                if step in marks:
                    with torch.no_grad():
                        loss_now = fixed_loss(params).item()
                    checkpoints.append(
                        {
                            "step": step,
                            "loss": loss_now,
                            "top_eigenvalue": top_hessian_eigenvalue(
                                fixed_loss, params, cfg.power_iters, seed
                            ),
                            "relative_gradients": relative_gradients(fixed_loss, params, wn),
                        }
                    )
                    rg = checkpoints[-1]["relative_gradients"]
                    checkpoints[-1]["gradient_spread"] = max(rg) / min(rg)
                if step == cfg.cond_steps:
                    break
                j = torch.randint(len(x_tr), (cfg.batch_size,), generator=gen)
                loss = F.cross_entropy(functional_forward(params, x_tr[j], wn), y_tr[j])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            runs[name].append({"seed": seed, "checkpoints": checkpoints, "losses": losses})
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        rows = []
        for c in range(len(marks)):
            eig = [r["checkpoints"][c]["top_eigenvalue"] for r in rs]
            spread = [r["checkpoints"][c]["gradient_spread"] for r in rs]
            loss = [r["checkpoints"][c]["loss"] for r in rs]
            rows.append(
                {
                    "step": marks[c],
                    "top_eigenvalue_mean": statistics.fmean(eig),
                    "top_eigenvalue_min": min(eig),
                    "top_eigenvalue_max": max(eig),
                    "gradient_spread_mean": statistics.fmean(spread),
                    "gradient_spread_min": min(spread),
                    "gradient_spread_max": max(spread),
                    "loss_mean": statistics.fmean(loss),
                }
            )
        summary[name] = rows
    return {"runs": runs, "by_checkpoint": summary, "optimizer": f"SGD lr {cfg.cond_lr} m 0.9"}


# -- the experiment -------------------------------------------------------------------------


def run(
    out: Path | str | None = None,
    quick: bool = False,
    seed: int = 0,
    config: WNConfig | None = None,
    variants: tuple[str, ...] = VARIANTS,
) -> dict[str, Any]:
    """Run the weight-normalization experiment; write ``wn.json`` and ``wn.png`` into ``out``."""
    if config is None:
        config = WNConfig.quick(seed) if quick else WNConfig(seeds=[seed, seed + 1, seed + 2])
    cfg = config
    data = load_digits_split(0)
    start = time.perf_counter()
    with single_thread():
        runs = {v: [train_variant(v, s, cfg, data) for s in cfg.seeds] for v in variants}
        init = part_data_init(cfg, data, seed)
        cond = part_conditioning(cfg, data)
    summary: dict[str, Any] = {}
    for v, rs in runs.items():
        reached = [r["steps_to_target"] for r in rs if r["steps_to_target"] is not None]
        finals = [r["final_train_loss"] for r in rs]
        summary[v] = {
            "mean_final_train_loss": statistics.fmean(finals),
            "min_final_train_loss": min(finals),
            "max_final_train_loss": max(finals),
            "mean_steps_to_target": statistics.fmean(reached) if reached else None,
            "seeds_reaching_target": len(reached),
            "mean_test_acc": statistics.fmean(r["test_acc"] for r in rs),
            "per_seed_final_train_loss": finals,
        }
    result: dict[str, Any] = {
        "experiment": "wn",
        "config": asdict(cfg),
        "summary": summary,
        "runs": runs,
        "data_init": init,
        "conditioning": cond,
        "seconds": time.perf_counter() - start,
    }
    result["claims"] = _claims(result, cfg)
    if out is not None:
        out = Path(out)
        write_json(out / "wn.json", result)
        _plot(result, out / "wn.png")
    return result


def _overlap(a: dict, b: dict) -> bool:
    return (
        a["min_final_train_loss"] <= b["max_final_train_loss"]
        and b["min_final_train_loss"] <= a["max_final_train_loss"]
    )


def _claims(result: dict[str, Any], cfg: WNConfig) -> dict[str, Any]:
    s = result["summary"]
    claims: dict[str, Any] = {}
    notes = []
    if {"plain", "wn"} <= s.keys():
        faster = s["wn"]["mean_final_train_loss"] < s["plain"]["mean_final_train_loss"]
        sep = faster and not _overlap(s["wn"], s["plain"])
        claims["final_train_loss_plain"] = s["plain"]["mean_final_train_loss"]
        claims["final_train_loss_wn"] = s["wn"]["mean_final_train_loss"]
        claims["wn_trains_faster_than_plain (outside the seed range)"] = bool(sep)
        if not sep:
            notes.append("WN vs plain: not reproduced at this size (seed ranges overlap).")
    if {"wn", "wn_mobn"} <= s.keys():
        best = min(s, key=lambda v: s[v]["mean_final_train_loss"])
        claims["final_train_loss_wn_mobn"] = s["wn_mobn"]["mean_final_train_loss"]
        claims["fastest_variant"] = best
        claims["wn_mobn_is_fastest"] = bool(best == "wn_mobn")
        if best != "wn_mobn":
            notes.append(f"WN + mean-only BN is not the fastest here ({best} is).")
    after = result["data_init"]["after"]["init_batch"]
    before = result["data_init"]["before"]["init_batch"]
    claims["preactivation_std_per_layer_before_init"] = [r["std_mean"] for r in before]
    claims["preactivation_std_per_layer_after_init"] = [r["std_mean"] for r in after]
    claims["data_init_unit_std_on_init_batch (all units within 1e-3)"] = bool(
        all(abs(r["std_min"] - 1) < 1e-3 and abs(r["std_max"] - 1) < 1e-3 for r in after)
    )
    held = result["data_init"]["after"]["held_out"]
    claims["preactivation_std_per_layer_after_init_held_out"] = [r["std_mean"] for r in held]
    cond = result["conditioning"]["by_checkpoint"]
    claims["top_hessian_eigenvalue_plain_by_checkpoint"] = [
        r["top_eigenvalue_mean"] for r in cond["plain"]
    ]
    claims["top_hessian_eigenvalue_wn_by_checkpoint"] = [
        r["top_eigenvalue_mean"] for r in cond["wn"]
    ]
    claims["gradient_spread_plain_by_checkpoint"] = [
        r["gradient_spread_mean"] for r in cond["plain"]
    ]
    claims["gradient_spread_wn_by_checkpoint"] = [r["gradient_spread_mean"] for r in cond["wn"]]
    lower_eig = all(
        w["top_eigenvalue_max"] < p["top_eigenvalue_min"]
        for w, p in zip(cond["wn"][1:], cond["plain"][1:])
    )
    claims["wn_lowers_top_eigenvalue_after_training (outside the seed range)"] = bool(lower_eig)
    if not lower_eig:
        notes.append(
            "Top Hessian eigenvalue: WN is not lower than plain at every later checkpoint "
            "outside the seed range."
        )
    lower_spread = all(
        w["gradient_spread_mean"] < p["gradient_spread_mean"]
        for w, p in zip(cond["wn"], cond["plain"])
    )
    claims["wn_narrows_gradient_spread (mean, every checkpoint)"] = bool(lower_spread)
    if not lower_spread:
        notes.append(
            "Gradient-scale spread across layers: WN does not narrow it at every checkpoint."
        )
    if notes:
        claims["note"] = " ".join(notes)
    return claims


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cfg = result["config"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.4))
    ax = axes[0, 0]
    for v, rs in result["runs"].items():
        t = torch.tensor([r["loss_curve"] for r in rs])
        steps = [(i + 1) * cfg["log_every"] for i in range(t.shape[1])]
        band(
            ax,
            steps,
            t.mean(0).tolist(),
            t.min(0).values.tolist(),
            t.max(0).values.tolist(),
            label=v,
        )
    ax.set_yscale("log")
    ax.set_xlabel("Adam step")
    ax.set_ylabel("training loss (mean, band min..max over seeds)")
    ax.set_title(f"digits CNN, Adam lr {cfg['lr']:g}")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    init = result["data_init"]
    n = len(init["after"]["init_batch"])
    xs = list(range(1, n + 1))
    for when, st in (("before", "o--"), ("after", "s-")):
        for where, alpha in (("init_batch", 1.0), ("held_out", 0.5)):
            rows = init[when][where]
            mean = [r["std_mean"] for r in rows]
            err = [
                [m - r["std_min"] for m, r in zip(mean, rows)],
                [r["std_max"] - m for m, r in zip(mean, rows)],
            ]
            ax.errorbar(
                xs, mean, yerr=err, fmt=st, alpha=alpha, capsize=3, label=f"{when}, {where}"
            )
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xlabel("layer")
    ax.set_ylabel("per-unit std of pre-activation (mean, min..max)")
    ax.set_title("nl.data_init: unit variance layer by layer")
    ax.legend(fontsize=7)

    cond = result["conditioning"]["by_checkpoint"]
    ax = axes[1, 0]
    for name, st in (("plain", "o-"), ("wn", "s-")):
        rows = cond[name]
        steps = [r["step"] for r in rows]
        stats = [[r[f"top_eigenvalue_{s}"] for r in rows] for s in ("mean", "min", "max")]
        band(ax, steps, *stats, st, label=name)
    ax.set_xlabel(f"SGD step ({result['conditioning']['optimizer']})")
    ax.set_ylabel("top Hessian eigenvalue (band over seeds)")
    ax.set_title("curvature along training, same init")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    for name, st in (("plain", "o-"), ("wn", "s-")):
        rows = cond[name]
        steps = [r["step"] for r in rows]
        stats = [[r[f"gradient_spread_{s}"] for r in rows] for s in ("mean", "min", "max")]
        band(ax, steps, *stats, st, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("max/min over layers of ||grad|| / ||param||")
    ax.set_title("spread of per-layer gradient scales")
    ax.legend(fontsize=8)
    save_figure(fig, path)
