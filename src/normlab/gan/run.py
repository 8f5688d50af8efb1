"""What a run is made of, shared by training, evaluation and sampling: networks from a config,
and a run folder's config and latest checkpoint loaded back."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import normlab as nl
from normlab.data import Data, load_data
from normlab.gan.checkpoint import CheckpointError, latest_checkpoint
from normlab.gan.config import SCALED_METHODS, TrainConfig
from normlab.gan.models import build_models
from normlab.reparam import fan_in

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"

#: Config fields that define the networks and their training: a checkpoint must match them.
SIGNATURE_FIELDS = (
    "data",
    "resolution",
    "arch",
    "d_method",
    "g_method",
    "scale",
    "z_dim",
    "width",
    "depth",
    "d_width",
    "maxout",
    "g_batchnorm",
    "pack",
    "init_std",
    "init",
    "loss",
    "batch_size",
    "seed",
    "n_dis",
    "lr_d",
    "lr_g",
    "beta1",
    "beta2",
    "lr_decay",
    "ema",
    "gp_weight",
)


def signature(cfg: TrainConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in SIGNATURE_FIELDS}


def load_run_data(cfg: TrainConfig) -> Data:
    return load_data(cfg.data, flatten=cfg.arch == "mlp", resolution=cfg.resolution)


def _apply(model: nn.Module, method: str, scale: float | None) -> None:
    if method == "none":
        return
    kwargs = {"scale": scale} if method in SCALED_METHODS and scale is not None else {}
    nl.apply(model, method, **kwargs)


def _reinit(model: nn.Module, draw: Callable[[nn.Module], None]) -> None:
    """``draw(layer)`` fills the weight of every linear/conv layer of ``model``, in module
    order; their biases are zeroed; BatchNorm keeps its (1, 0) affine init."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                draw(m)
                if m.bias is not None:
                    m.bias.zero_()


def init_normal(model: nn.Module, std: float) -> None:
    """Every linear/conv weight of ``model`` drawn from ``N(0, std^2)``, their biases zero
    (PacGAN's ``IsotropicGaussian(0.02)``)."""
    _reinit(model, lambda m: m.weight.normal_(0.0, std))


def init_he(model: nn.Module) -> None:
    """He's initialisation: every linear/conv weight of ``model`` from ``N(0, 2 / fan_in)``,
    biases zero, drawn as ``nl.apply(model, "eqlr")`` draws its raw weights (a standard normal
    per layer, in module order, here times ``sqrt(2 / fan_in)``): from the same random state
    the weights equal eqlr's initial effective weights (``W_raw * sqrt(2) / sqrt(fan_in)``)."""
    _reinit(model, lambda m: m.weight.normal_(0.0, 1.0).mul_(math.sqrt(2.0 / fan_in(m))))


def build_networks(cfg: TrainConfig, data: Data) -> tuple[nn.Module, nn.Module]:
    """``(G, D)`` of a resolved ``cfg``: seeded init, methods applied, on ``cfg.device``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G, D = build_models(
            cfg.arch,
            data.sample_shape,
            cfg.z_dim,
            cfg.width,
            tanh=data.kind == "images",
            depth=cfg.depth,
            d_width=cfg.d_width,
            maxout=cfg.maxout,
            g_batchnorm=cfg.g_batchnorm,
            pack=cfg.pack,
        )
        if cfg.init_std:
            init_normal(G, cfg.init_std)
            init_normal(D, cfg.init_std)
        if cfg.init == "he":  # where (and in the order) eqlr re-draws its weights
            for net, method in ((D, cfg.d_method), (G, cfg.g_method)):
                if method != "eqlr":  # eqlr draws its own He-scaled weights just below
                    init_he(net)
        _apply(D, cfg.d_method, cfg.scale)
        _apply(G, cfg.g_method, cfg.scale)
        if cfg.d_method == "sn_exact" or cfg.g_method == "sn_exact":
            # The exact norm needs each layer's input shape: one forward in eval mode sets it.
            with torch.no_grad():
                z = torch.zeros(2, cfg.z_dim)
                was = G.training
                G.eval()
                x = G(z)
                G.train(was)
                D.eval()
                D(x)
                D.train()
    return G.to(cfg.device), D.to(cfg.device)


def read_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{str(run_dir)!r} is not a normlab run folder (no {CONFIG_FILE}); "
            f"start one with `normlab train --out {run_dir}`"
        )
    return TrainConfig.from_file(path).resolved()


def check_compatible(payload: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """Raise ``CheckpointError`` if ``payload`` was saved by a run of another kind than ``cfg``."""
    saved = payload.get("signature") or {}
    ours = signature(cfg)
    # A field added after the checkpoint was written held its default then.
    fields = TrainConfig.__dataclass_fields__
    diffs = [
        f"{k}: checkpoint {saved.get(k, fields[k].default)!r}, this run {v!r}"
        for k, v in ours.items()
        if saved.get(k, fields[k].default) != v
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {str(path)!r} comes from another kind of run (another architecture, "
            f"method or setting): {'; '.join(diffs)}"
        )


def load_state(module: nn.Module, state: dict, what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not fit this run's {what} (another architecture or "
            f"method?): {first}"
        ) from None


def load_latest(run_dir: str | Path, cfg: TrainConfig) -> tuple[Path, dict[str, Any]] | None:
    """The newest usable checkpoint, checked against ``cfg``; warns about skipped ones."""
    found = latest_checkpoint(run_dir, map_location=cfg.device)
    if found is None:
        return None
    path, payload, skipped = found
    for msg in skipped:
        warnings.warn(f"{msg}; using the previous checkpoint {path.name}", stacklevel=3)
    check_compatible(payload, cfg, path)
    return path, payload


def generator_for_eval(run_dir: str | Path) -> tuple[TrainConfig, Data, nn.Module, int]:
    """``(cfg, data, G, step)``: the generator (EMA where kept) of the newest checkpoint."""
    cfg = read_config(run_dir)
    found = load_latest(run_dir, cfg)
    if found is None:
        raise FileNotFoundError(f"run {str(run_dir)!r} has no checkpoint yet")
    path, payload = found
    data = load_run_data(cfg)
    G, _ = build_networks(cfg, data)
    state = payload.get("G_ema") or payload["G"]
    load_state(G, state, "generator", path)
    return cfg, data, G.eval(), int(payload["step"])
