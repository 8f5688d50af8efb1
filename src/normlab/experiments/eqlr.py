"""Equalized learning rate experiment: why scaling the weights *down* at run time equalizes speed.

Question (seed 000): ProGAN stores ``W_raw ~ N(0, 1)`` and uses ``W_eff = W_raw * c`` with
``c = gain / sqrt(fan_in)`` at every forward. Why should that help, when He's initialisation gives
the same ``W_eff`` at step 0? Answer (seed 001, ProGAN section 4.1): Adam and RMSProp divide each
update by the running scale of its gradient, so every stored parameter moves by about ``lr`` per
step whatever its scale. A He-initialised weight has scale ``c``, so its *relative* update
``||dW_eff|| / ||W_eff||`` is about ``lr / c = lr * sqrt(fan_in) / gain``: layers of large fan-in
move much faster than layers of small fan-in. With equalized lr the stored parameter has scale 1
in every layer, so the relative update is about ``lr`` everywhere. Under plain SGD the update is
``lr * gradient``, not scale-free, and the argument does not apply: equalized lr then multiplies
each layer's effective learning rate by ``c^2 = gain^2 / fan_in`` (the step on ``W_raw`` is ``c``
times the effective weight's gradient, and ``W_eff`` moves ``c`` times that).

Three parts:

1. ``relative_update``: a LeakyReLU MLP on the bundled digits with fan-ins ``64, 1024, 4, 128``
   (:attr:`EqlrConfig.widths`), He init versus equalized lr from the *same* initial effective
   weights, the same batches; per layer and per step ``||W_eff(t+1) - W_eff(t)|| /
   ||W_eff(t)||`` under Adam (ProGAN's betas ``(0, 0.99)``) and under SGD. The log-log slope of
   the mean relative update against fan-in: 0.5 predicted for Adam + He, 0 for Adam + eqlr.
2. ``lr_multiplier``: StyleGAN's mapping network (``lr_multiplier=0.01``): two copies of an
   MLP (``mapping_layers`` hidden layers of width ``mapping_width``, then 10 outputs, all of
   fan-in 64) with the same initial effective weights, one with multiplier 1 and one with 0.01,
   trained by Adam on the same batches; the ratio of their relative updates (0.01 predicted:
   the raw weight has scale ``1/lr_mul`` and its coefficient ``lr_mul * c``).
3. ``training``: the MLP of part 1 trained to classify the digits with Adam at each learning
   rate of ``train_lrs``, He versus eqlr, over ``seeds``: training-loss curves (mean and band of
   min..max over seeds) and the final loss against the learning rate.

Outputs: ``eqlr.json``, ``eqlr.png`` and ``eqlr_weights.pt`` (the effective weights before and
after the first step of each part-1 run, so the relative update can be recomputed by hand).
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

PARAMS = ("he", "eqlr")
OPTIMIZERS = ("adam", "sgd")
#: LeakyReLU slope (ProGAN's) and its He gain sqrt(2 / (1 + slope^2)).
SLOPE = 0.2
GAIN = math.sqrt(2.0 / (1.0 + SLOPE**2))


@dataclass
class EqlrConfig:
    widths: tuple[int, ...] = (64, 1024, 4, 128, 10)  # fan-ins 64, 1024, 4, 128
    adam_lr: float = 1e-3
    adam_betas: tuple[float, float] = (0.0, 0.99)  # ProGAN's
    sgd_lr: float = 1e-2
    steps: int = 50  # steps whose relative updates are measured (parts 1 and 2)
    batch_size: int = 64
    mapping_layers: int = 4
    mapping_width: int = 64
    lr_multiplier: float = 0.01
    train_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    train_epochs: int = 20
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])

    @classmethod
    def quick(cls, seed: int = 0) -> EqlrConfig:
        return cls(steps=8, train_lrs=(1e-3, 1e-2), train_epochs=2, seeds=[seed, seed + 1])


def fan_ins(cfg: EqlrConfig) -> list[int]:
    return list(cfg.widths[:-1])


def build_mlp(widths: tuple[int, ...], param: str, seed: int, lr_multiplier: float = 1.0):
    """LeakyReLU(0.2) MLP; every weight's effective init is ``N(0, (gain / sqrt(fan_in))^2)``.

    ``param="eqlr"``: :func:`normlab.equalized_lr` on every Linear (gain ``GAIN``, 1 on the last
    layer, ProGAN's toRGB convention). ``param="he"``: plain Linear layers holding the *same*
    effective weights (copied from the eqlr build of the same seed), biases zero.
    """
    if param not in PARAMS:
        raise ValueError(f"unknown parametrization {param!r}; choose one of: {', '.join(PARAMS)}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    n = len(widths) - 1
    for i in range(n):
        lin = nn.Linear(widths[i], widths[i + 1])
        gain = 1.0 if i == n - 1 else GAIN
        layers.append(nl.equalized_lr(lin, gain=gain, lr_multiplier=lr_multiplier))
        if i < n - 1:
            layers.append(nn.LeakyReLU(SLOPE))
    model = nn.Sequential(*layers)
    if param == "eqlr":
        return model
    plain: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features)
            with torch.no_grad():
                lin.weight.copy_(m.weight)
                lin.bias.copy_(m.bias)
            plain.append(lin)
        else:
            plain.append(m)
    return nn.Sequential(*plain)


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model if isinstance(m, nn.Linear)]


def _optimizer(name: str, model: nn.Module, lr: float, cfg: EqlrConfig) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.adam_betas)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")


def _batches(x: Tensor, batch: int, steps: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(len(x), generator=gen)
        out += [perm[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]
    return out[:steps]


def relative_updates(
    model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, idx: list[Tensor]
) -> tuple[list[list[float]], list[tuple[Tensor, Tensor]]]:
    """Per step and layer ``||W_eff(t+1) - W_eff(t)|| / ||W_eff(t)||`` (cross-entropy steps).

    Returns ``(rel[step][layer], first)`` with ``first[layer] = (W_eff before, after)`` of step 1.
    """
    layers = linears(model)
    rel: list[list[float]] = []
    first: list[tuple[Tensor, Tensor]] = []
    for t, i in enumerate(idx):
        before = [m.weight.detach().clone() for m in layers]
        loss = F.cross_entropy(model(x[i]), y[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        after = [m.weight.detach().clone() for m in layers]
        rel.append([float((a - b).norm() / b.norm()) for a, b in zip(after, before)])
        if t == 0:
            first = list(zip(before, after))
    return rel, first


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    lx = [math.log(v) for v in xs]
    ly = [math.log(v) for v in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def part_relative_update(cfg: EqlrConfig, data: tuple[Tensor, ...], seed: int):
    x, y = data[0], data[1]
    idx = _batches(x, cfg.batch_size, cfg.steps, seed)
    runs: dict[str, Any] = {}
    weights: dict[str, Any] = {}
    for opt_name in OPTIMIZERS:
        lr = cfg.adam_lr if opt_name == "adam" else cfg.sgd_lr
        for param in PARAMS:
            model = build_mlp(cfg.widths, param, seed)
            opt = _optimizer(opt_name, model, lr, cfg)
            rel, first = relative_updates(model, opt, x, y, idx)
            per_layer = [statistics.fmean(r[k] for r in rel) for k in range(len(rel[0]))]
            key = f"{opt_name}_{param}"
            runs[key] = {
                "optimizer": opt_name,
                "param": param,
                "lr": lr,
                "rel_update_per_step": rel,
                "mean_rel_update": per_layer,
                "first_rel_update": rel[0],
                "spread": max(per_layer) / min(per_layer),
                "slope_vs_fan_in": loglog_slope(fan_ins(cfg), per_layer),
            }
            weights[key] = first
    # Predictions from the update rules, for the first step. Adam's first step is
    # lr * sign(grad) on the stored parameter (m / sqrt(v) = g / |g|), so
    # ||dW_eff|| / ||W_eff|| = lr * coef * sqrt(numel) / ||W_eff||, coef = 1 (he) or
    # gain / sqrt(fan_in) (eqlr).
    n = len(cfg.widths) - 1
    coefs = [(1.0 if i == n - 1 else GAIN) / math.sqrt(f) for i, f in enumerate(fan_ins(cfg))]
    for param in PARAMS:
        key = f"adam_{param}"
        runs[key]["first_rel_update_predicted"] = [
            cfg.adam_lr * (1.0 if param == "he" else c) * math.sqrt(b.numel()) / float(b.norm())
            for c, (b, _) in zip(coefs, weights[key])
        ]
    # SGD: same batch and same effective weights, so the effective weight's gradient is the
    # same; eqlr's effective step is coef^2 times He's.
    runs["sgd_eqlr"]["first_step_ratio_to_he"] = [
        float((a - b).norm() / (a2 - b2).norm())
        for (b, a), (b2, a2) in zip(weights["sgd_eqlr"], weights["sgd_he"])
    ]
    runs["sgd_eqlr"]["first_step_ratio_predicted"] = [c**2 for c in coefs]
    return runs, weights


def part_lr_multiplier(cfg: EqlrConfig, data: tuple[Tensor, ...], seed: int) -> dict[str, Any]:
    """Mapping MLP (64 -> width x layers -> 10) with multiplier 1 and ``cfg.lr_multiplier``."""
    x, y = data[0], data[1]
    idx = _batches(x, cfg.batch_size, cfg.steps, seed + 1)
    widths = (x.shape[1],) + (cfg.mapping_width,) * cfg.mapping_layers + (10,)
    out: dict[str, Any] = {}
    for mul in (1.0, cfg.lr_multiplier):
        model = build_mlp(widths, "eqlr", seed, lr_multiplier=mul)
        w0 = [m.weight.detach().clone() for m in linears(model)]
        opt = _optimizer("adam", model, cfg.adam_lr, cfg)
        rel, _ = relative_updates(model, opt, x, y, idx)
        w1 = [m.weight.detach() for m in linears(model)]
        out[str(mul)] = {
            "initial_weight_norm": [float(w.norm()) for w in w0],
            "mean_rel_update": [statistics.fmean(r[k] for r in rel) for k in range(len(w0))],
            "rel_distance_after_steps": [float((b - a).norm() / a.norm()) for a, b in zip(w0, w1)],
        }
    slow, fast = out[str(cfg.lr_multiplier)], out["1.0"]
    out["ratio_mean_rel_update"] = [
        s / f for s, f in zip(slow["mean_rel_update"], fast["mean_rel_update"])
    ]
    out["ratio_rel_distance"] = [
        s / f for s, f in zip(slow["rel_distance_after_steps"], fast["rel_distance_after_steps"])
    ]
    out["same_initial_weights"] = bool(
        all(
            math.isclose(a, b, rel_tol=1e-5)
            for a, b in zip(slow["initial_weight_norm"], fast["initial_weight_norm"])
        )
    )
    return out


def train_once(
    cfg: EqlrConfig, param: str, lr: float, seed: int, data: tuple[Tensor, ...]
) -> dict[str, Any]:
    x_tr, y_tr, x_te, y_te = data
    model = build_mlp(cfg.widths, param, seed)
    opt = _optimizer("adam", model, lr, cfg)
    gen = seed_everything(seed)
    curve: list[float | None] = []
    diverged = False
    for _ in range(cfg.train_epochs):
        perm = torch.randperm(len(x_tr), generator=gen)
        losses = []
        for i in range(0, len(x_tr) - cfg.batch_size + 1, cfg.batch_size):
            j = perm[i : i + cfg.batch_size]
            loss = F.cross_entropy(model(x_tr[j]), y_tr[j])
            if not torch.isfinite(loss):
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if diverged:
            break
        curve.append(statistics.fmean(losses))
    curve += [None] * (cfg.train_epochs - len(curve))
    return {
        "param": param,
        "lr": lr,
        "seed": seed,
        "train_loss_curve": curve,
        "final_train_loss": curve[-1],
        "test_acc": None if diverged else accuracy(model, x_te, y_te),
        "diverged": diverged,
    }


def part_training(cfg: EqlrConfig, data: tuple[Tensor, ...]) -> dict[str, Any]:
    runs = [
        train_once(cfg, p, lr, s, data) for p in PARAMS for lr in cfg.train_lrs for s in cfg.seeds
    ]
    summary: dict[str, Any] = {}
    for p in PARAMS:
        rows = []
        for lr in cfg.train_lrs:
            rs = [r for r in runs if r["param"] == p and r["lr"] == lr]
            finals = [r["final_train_loss"] for r in rs]
            ok = [f for f in finals if f is not None]
            rows.append(
                {
                    "lr": lr,
                    "mean_final_train_loss": statistics.fmean(ok) if ok else None,
                    "min_final_train_loss": min(ok) if ok else None,
                    "max_final_train_loss": max(ok) if ok else None,
                    "diverged": sum(f is None for f in finals),
                    "mean_test_acc": statistics.fmean(
                        r["test_acc"] for r in rs if r["test_acc"] is not None
                    )
                    if ok
                    else None,
                }
            )
        summary[p] = rows
    return {"runs": runs, "by_lr": summary}


def run(
    out: Path | str | None = None,
    quick: bool = False,
    seed: int = 0,
    config: EqlrConfig | None = None,
) -> dict[str, Any]:
    """Run the equalized-lr experiment; write ``eqlr.json``, ``eqlr.png``, ``eqlr_weights.pt``."""
    if config is None:
        config = EqlrConfig.quick(seed) if quick else EqlrConfig(seeds=[seed, seed + 1, seed + 2])
    cfg = config
    if cfg.widths[0] != 64 or cfg.widths[-1] != 10:
        raise ValueError(f"widths must start at 64 (digits) and end at 10, got {cfg.widths}")
    data = load_digits_split(0, image=False)
    start = time.perf_counter()
    with single_thread():
        rel_runs, weights = part_relative_update(cfg, data, seed)
        mult = part_lr_multiplier(cfg, data, seed)
        training = part_training(cfg, data)
    result: dict[str, Any] = {
        "experiment": "eqlr",
        "config": asdict(cfg),
        "fan_ins": fan_ins(cfg),
        "relative_update": rel_runs,
        "lr_multiplier": mult,
        "training": training,
        "seconds": time.perf_counter() - start,
    }
    result["summary"] = _summary(result)
    result["claims"] = _claims(result, cfg)
    if out is not None:
        out = Path(out)
        write_json(out / "eqlr.json", result)
        torch.save(
            {k: [{"before": b, "after": a} for b, a in v] for k, v in weights.items()},
            out / "eqlr_weights.pt",
        )
        _plot(result, out / "eqlr.png")
    return result


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, r in result["relative_update"].items():
        summary[key] = {"spread_max_over_min": r["spread"], "slope_vs_fan_in": r["slope_vs_fan_in"]}
    for p, rows in result["training"]["by_lr"].items():
        ok = [r for r in rows if r["mean_final_train_loss"] is not None]
        best = min(ok, key=lambda r: r["mean_final_train_loss"]) if ok else None
        summary[f"train_{p}"] = {
            "best_lr": best["lr"] if best else None,
            "best_mean_final_train_loss": best["mean_final_train_loss"] if best else None,
            "best_mean_test_acc": best["mean_test_acc"] if best else None,
        }
    return summary


def _claims(result: dict[str, Any], cfg: EqlrConfig) -> dict[str, Any]:
    ru = result["relative_update"]
    mult = result["lr_multiplier"]
    claims: dict[str, Any] = {
        "adam_he_slope_vs_fan_in (0.5 predicted)": ru["adam_he"]["slope_vs_fan_in"],
        "adam_eqlr_slope_vs_fan_in (0 predicted)": ru["adam_eqlr"]["slope_vs_fan_in"],
        "adam_he_spread_across_layers": ru["adam_he"]["spread"],
        "adam_eqlr_spread_across_layers": ru["adam_eqlr"]["spread"],
        "adam_eqlr_equal_across_layers (spread < 1.5)": bool(ru["adam_eqlr"]["spread"] < 1.5),
        "sgd_he_slope_vs_fan_in": ru["sgd_he"]["slope_vs_fan_in"],
        "sgd_eqlr_slope_vs_fan_in": ru["sgd_eqlr"]["slope_vs_fan_in"],
        "sgd_eqlr_spread_across_layers": ru["sgd_eqlr"]["spread"],
        "sgd_eqlr_not_equal (spread > 2)": bool(ru["sgd_eqlr"]["spread"] > 2),
        f"lr_multiplier_ratio_of_rel_update (predicted {cfg.lr_multiplier:g})": statistics.fmean(
            mult["ratio_mean_rel_update"]
        ),
        "lr_multiplier_ratio_of_distance_moved": statistics.fmean(mult["ratio_rel_distance"]),
    }
    s = result["summary"]
    he, eq = s["train_he"], s["train_eqlr"]
    if (
        he["best_mean_final_train_loss"] is not None
        and eq["best_mean_final_train_loss"] is not None
    ):
        claims["train_best_loss_he"] = he["best_mean_final_train_loss"]
        claims["train_best_loss_eqlr"] = eq["best_mean_final_train_loss"]
        rows = result["training"]["by_lr"]
        best = min(he["best_mean_final_train_loss"], eq["best_mean_final_train_loss"])
        good = {
            p: [
                r["lr"]
                for r in rows[p]
                if r["max_final_train_loss"] is not None
                and not r["diverged"]
                and r["max_final_train_loss"] < 2 * best + 0.05
            ]
            for p in PARAMS
        }
        claims["train_lrs_within_2x_of_best_loss"] = good
        eq_wins = eq["best_mean_final_train_loss"] < he["best_mean_final_train_loss"]
        band = [
            r for p in PARAMS for r in rows[p] if r["lr"] == (eq if p == "eqlr" else he)["best_lr"]
        ]
        overlap = (
            band[0]["min_final_train_loss"] <= band[1]["max_final_train_loss"]
            and band[1]["min_final_train_loss"] <= band[0]["max_final_train_loss"]
        )
        claims["eqlr_reaches_lower_loss_at_best_lr (outside the seed range)"] = bool(
            eq_wins and not overlap
        )
        if not eq_wins or overlap:
            claims["note"] = (
                "At each parametrization's best learning rate, the final training losses over "
                "seeds overlap (or He's is lower): at this size equalized lr does not train to a "
                "better loss; its effect is which learning rates work (see "
                "train_lrs_within_2x_of_best_loss and the figure)."
            )
    return claims


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7.4))
    fan = result["fan_ins"]
    ru = result["relative_update"]
    ax = axes[0, 0]
    styles = {"adam_he": "o-", "adam_eqlr": "s-", "sgd_he": "o--", "sgd_eqlr": "s--"}
    order = sorted(range(len(fan)), key=lambda i: fan[i])
    for key, st in styles.items():
        ys = ru[key]["mean_rel_update"]
        ax.plot(
            [fan[i] for i in order],
            [ys[i] for i in order],
            st,
            label=f"{key} (slope {ru[key]['slope_vs_fan_in']:.2f})",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fan-in of the layer")
    ax.set_ylabel("||dW_eff|| / ||W_eff|| per step (mean)")
    ax.set_title("relative update per layer (same init, same batches)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    mult = result["lr_multiplier"]
    mul = result["config"]["lr_multiplier"]
    for key, st in (("1.0", "o-"), (str(mul), "s-")):
        ys = mult[key]["mean_rel_update"]
        ax.plot(range(1, len(ys) + 1), ys, st, label=f"lr_multiplier={key}")
    ax.set_yscale("log")
    ax.set_xlabel("mapping layer")
    ax.set_ylabel("||dW_eff|| / ||W_eff|| per step (mean)")
    ratio = statistics.fmean(mult["ratio_mean_rel_update"])
    ax.set_title(f"StyleGAN mapping: ratio {ratio:.4f} (Adam)")
    ax.legend(fontsize=8)

    rows = result["training"]["by_lr"]
    ax = axes[1, 0]
    for p, st in (("he", "o-"), ("eqlr", "s-")):
        lrs = [r["lr"] for r in rows[p] if r["mean_final_train_loss"] is not None]
        mean = [
            r["mean_final_train_loss"] for r in rows[p] if r["mean_final_train_loss"] is not None
        ]
        lo = [r["min_final_train_loss"] for r in rows[p] if r["mean_final_train_loss"] is not None]
        hi = [r["max_final_train_loss"] for r in rows[p] if r["mean_final_train_loss"] is not None]
        band(ax, lrs, mean, lo, hi, st, alpha=0.25, label=p)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Adam learning rate")
    ax.set_ylabel("final training loss (band: min..max over seeds)")
    ax.set_title(f"digits MLP, {result['config']['train_epochs']} epochs")
    ax.legend(fontsize=8)

    ax = axes[1, 1]
    s = result["summary"]
    runs = result["training"]["runs"]
    for p in PARAMS:
        for lr in sorted({s["train_he"]["best_lr"], s["train_eqlr"]["best_lr"]} - {None}):
            curves = [r["train_loss_curve"] for r in runs if r["param"] == p and r["lr"] == lr]
            if any(None in c for c in curves):
                continue
            t = torch.tensor(curves)
            ep = list(range(1, t.shape[1] + 1))
            mean, lo, hi = t.mean(0).tolist(), t.min(0).values.tolist(), t.max(0).values.tolist()
            band(ax, ep, mean, lo, hi, label=f"{p}, lr {lr:g}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (mean, band min..max)")
    ax.set_title("curves at each parametrization's best lr")
    ax.legend(fontsize=8)
    save_figure(fig, path)
