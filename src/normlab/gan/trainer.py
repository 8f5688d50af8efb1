"""``train(cfg, out_dir)``: one GAN run, crash-safe, deterministic on CPU, divergence caught.

One step is ``n_dis`` discriminator updates then one generator update (the SNGAN/BSN
loop). Each D update runs D once on the concatenated real and fake batch, so an SN-family
layer takes exactly one power-iteration step per D update (as in the BSN code); the
generator update, the gradient penalty and the logged input-gradient norms run D in eval
mode, which freezes the power vectors, so logging never changes training.

The run folder::

    config.yaml      the resolved config
    log.jsonl        one record per logged step: losses, D logits, D input-gradient norms
                     (mean/min/max, real and fake), per-layer sigmas etc. (``Monitor``)
    tb/              TensorBoard scalars of the same, plus the metrics
    checkpoints/     step_XXXXXXXX.pt (+ .sha256), the newest ``keep_checkpoints``
    samples/         step_XXXXXX.png and final.png (scatter over the mixture, or an image grid)
    metrics.json     {"status", "step", "final": {...}, "history": [{"step", ...}], "divergence"}

Resuming (``resume=True``) restores everything a step depends on from the newest good
checkpoint (models and their power vectors, optimizers, EMA, every RNG, the data
position), so a run interrupted any number of times ends with the same weights, bit for
bit on CPU, as one that never stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from normlab.diagnostics import Monitor, input_gradient_norm
from normlab.gan import losses
from normlab.gan.checkpoint import (
    atomic_write_text,
    clean_temporary,
    list_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from normlab.gan.config import TrainConfig
from normlab.gan.ema import EMA
from normlab.gan.evaluate import Evaluator
from normlab.gan.run import (
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    build_networks,
    load_latest,
    load_run_data,
    load_state,
    signature,
)
from normlab.gan.sample import SAMPLE_SEED_OFFSET, save_samples

#: A layer whose sigma (largest singular value of its effective weight) exceeds this has exploded.
MAX_SIGMA = 1e4
#: A D input-gradient norm or effective-weight gradient norm above this has exploded.
MAX_GRAD_NORM = 1e6
#: A loss whose magnitude exceeds this has exploded (NaN/Inf always count).
MAX_ABS_LOSS = 1e6
#: Samples in the pictures written during training.
SAMPLE_PICTURE_N = {"mixture": 1000, "images": 64}
#: Config fields a resumed run may change (they do not affect the weights).
RESUMABLE_CHANGES = (
    "steps",
    "log_every",
    "eval_every",
    "ckpt_every",
    "sample_every",
    "eval_samples",
    "keep_checkpoints",
    "device",
    "threads",
    "inception_weights",
    "feature_cache",
)


class Diverged(Exception):
    """Raised inside the loop when a quantity is non-finite or exploded."""

    def __init__(self, step: int, layer: str | None, quantity: str, value: float) -> None:
        self.info = {"step": step, "layer": layer, "quantity": quantity, "value": value}
        where = f"layer {layer!r}, " if layer else ""
        super().__init__(f"training diverged at step {step}: {where}{quantity} = {value:g}")


def _bad(value: float, limit: float) -> bool:
    return not math.isfinite(value) or abs(value) > limit


def _check_weights(step: int, *nets: tuple[str, nn.Module]) -> None:
    for prefix, net in nets:
        for name, p in net.named_parameters():
            if not torch.isfinite(p).all():
                bad = float(p.detach()[~torch.isfinite(p.detach())].flatten()[0])
                raise Diverged(step, f"{prefix}.{name}", "weight", bad)


def _check_record(rec: dict[str, Any]) -> None:
    step = rec["step"]
    for key in ("loss_d", "loss_g"):
        if key in rec and _bad(rec[key], MAX_ABS_LOSS):
            raise Diverged(step, None, key, rec[key])
    for key in ("grad_real_max", "grad_fake_max"):
        if key in rec and _bad(rec[key], MAX_GRAD_NORM):
            raise Diverged(step, "D input", key, rec[key])
    for layer, qs in rec.get("layers", {}).items():
        for q, limit in (
            ("sigma", MAX_SIGMA),
            ("sigma_t", MAX_SIGMA),
            ("weight_grad_norm", MAX_GRAD_NORM),
        ):
            if q in qs and _bad(qs[q], limit):
                raise Diverged(step, f"D.{layer}", q, qs[q])


def _stats(x: Tensor, prefix: str) -> dict[str, float]:
    v = torch.stack([x.mean(), x.min(), x.max()]).tolist()
    return {f"{prefix}_mean": v[0], f"{prefix}_min": v[1], f"{prefix}_max": v[2]}


class _Logger:
    """log.jsonl (truncated to the resumed step) and TensorBoard (purged past it)."""

    def __init__(self, run: Path, start_step: int) -> None:
        self.path = run / LOG_FILE
        if self.path.exists():
            keep = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= start_step:
                        keep.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    break  # a line cut by a crash: drop it and what follows
            atomic_write_text(self.path, "".join(keep))
        self.fh = self.path.open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run / "tb"), purge_step=start_step + 1 if start_step else None)

    def log(self, rec: dict[str, Any]) -> None:
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()
        step = rec["step"]
        for key, val in rec.items():
            if key not in ("step", "layers") and isinstance(val, int | float):
                self.tb.add_scalar(f"train/{key}", val, step)
        for layer, qs in rec.get("layers", {}).items():
            for q, val in qs.items():
                self.tb.add_scalar(f"D/{q}/{layer}", val, step)

    def metrics(self, step: int, metrics: dict[str, Any]) -> None:
        for key, val in metrics.items():
            if isinstance(val, int | float):
                self.tb.add_scalar(f"metrics/{key}", val, step)
        self.tb.flush()

    def close(self) -> None:
        self.fh.close()
        self.tb.close()


def _write_metrics(
    run: Path, status: str, step: int, final: dict, history: list, divergence
) -> None:
    body = {
        "status": status,
        "step": step,
        "final": final,
        "history": history,
        "divergence": divergence,
    }
    atomic_write_text(run / METRICS_FILE, json.dumps(body, indent=1) + "\n")


def _check_folder(cfg: TrainConfig, run: Path, resume: bool) -> TrainConfig:
    """Check the folder against the config (nothing is written); returns the config the run uses."""
    cfg_file = run / CONFIG_FILE
    if cfg_file.exists():
        if not resume:
            raise ValueError(
                f"{str(run)!r} already holds a run; continue it with resume (normlab train "
                f"--resume --out {run}) or choose another output folder"
            )
        saved = TrainConfig.from_file(cfg_file).resolved()
        changed = [
            k
            for k in TrainConfig.field_names()
            if getattr(saved, k) != getattr(cfg, k) and k not in RESUMABLE_CHANGES
        ]
        if changed:
            raise ValueError(
                f"cannot resume {str(run)!r} with different settings: "
                + "; ".join(
                    f"{k}: run has {getattr(saved, k)!r}, asked {getattr(cfg, k)!r}"
                    for k in changed
                )
                + f". Only these may change on resume: {', '.join(RESUMABLE_CHANGES)}"
            )
    return cfg


def train(
    cfg: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict:
    """Train one GAN as ``cfg`` says, into the run folder ``out_dir``.

    With ``resume`` the run continues from the newest good checkpoint in ``out_dir`` (a
    folder without one starts afresh); without it, ``out_dir`` must not hold a run yet.

    Returns ``{"status": "finished" | "diverged", "metrics": {final metrics}, "wall_time":
    seconds (all sessions of the run), "steps": steps done, "steps_per_sec": this session's
    training speed, "divergence": None | {"step", "layer", "quantity", "value"}}``.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    t_start = time.perf_counter()
    cfg = cfg.resolved()
    run = Path(out_dir)
    cfg = _check_folder(cfg, run, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)

    data = load_run_data(cfg)
    if data.kind == "images" and device.type != "cpu":
        data.images = data.images.to(device)
    evaluator = Evaluator(cfg, data, run)
    evaluator.prepare()  # a bad inception_weights file fails here, before anything is written
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run / CONFIG_FILE, cfg.to_yaml())
    G, D = build_networks(cfg, data)
    G.train()
    D.train()
    opt_d = torch.optim.Adam(
        D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), foreach=True
    )
    opt_g = torch.optim.Adam(
        G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), foreach=True
    )
    ema = EMA(G, cfg.ema) if cfg.ema > 0 else None
    stream = data.stream(cfg.batch_size, seed=cfg.seed)
    z_gen = torch.Generator().manual_seed(cfg.seed + 1)
    gp_gen = torch.Generator().manual_seed(cfg.seed + 2)
    # Nothing in training draws from the global generators; they are seeded (and saved) anyway,
    # so that anything a user adds stays reproducible.
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # noqa: NPY002
    random.seed(cfg.seed)

    start, history, wall_before = 0, [], 0.0
    found = load_latest(run, cfg) if resume else None
    clean_temporary(run)
    if found is not None:
        path, ck = found
        load_state(G, ck["G"], "generator", path)
        load_state(D, ck["D"], "discriminator", path)
        opt_d.load_state_dict(ck["opt_d"])
        opt_g.load_state_dict(ck["opt_g"])
        if ema is not None:
            load_state(ema.model, ck["G_ema"], "EMA generator", path)
        stream.load_state_dict(ck["data"])
        z_gen.set_state(ck["rng"]["z"])
        gp_gen.set_state(ck["rng"]["gp"])
        set_rng_state(ck["rng"])
        start, history, wall_before = int(ck["step"]), list(ck["history"]), float(ck["wall_time"])

    def checkpoint(step: int) -> None:
        _check_weights(step, ("G", G), ("D", D))
        payload = {
            "signature": signature(cfg),
            "config": cfg.to_dict(),
            "G": G.state_dict(),
            "D": D.state_dict(),
            "G_ema": ema.state_dict() if ema is not None else None,
            "opt_d": opt_d.state_dict(),
            "opt_g": opt_g.state_dict(),
            "data": stream.state_dict(),
            "rng": {**rng_state(), "z": z_gen.get_state(), "gp": gp_gen.get_state()},
            "history": history,
            "wall_time": wall_before + time.perf_counter() - t_start,
        }
        save_checkpoint(run, step, payload, keep=cfg.keep_checkpoints)

    if found is None:
        if list_checkpoints(run):
            raise RuntimeError(
                f"{str(run)!r} holds checkpoints of another run (resume not asked, or its "
                f"config.yaml is missing); choose an empty output folder"
            )
        checkpoint(0)  # the run always has a good checkpoint to fall back to

    g_eval = ema.model if ema is not None else G
    sample_z = torch.Generator().manual_seed(cfg.seed + SAMPLE_SEED_OFFSET)
    sample_z = torch.randn(SAMPLE_PICTURE_N[data.kind], cfg.z_dim, generator=sample_z).to(device)

    def pictures(step: int, final: bool = False) -> None:
        was = g_eval.training
        g_eval.eval()
        with torch.no_grad():
            x = g_eval(sample_z).float().cpu()
        g_eval.train(was)
        title = f"{cfg.data} {cfg.method} step {step}"
        save_samples(x, data, run / "samples" / f"step_{step:06d}.png", title)
        if final:
            save_samples(x, data, run / "samples" / "final.png", title)

    logger = _Logger(run, start)
    monitor = Monitor(D, every=cfg.log_every, prefix="D", keep_records=False)
    check_loss_each_step = device.type == "cpu"
    divergence = None
    status = "finished"
    step = start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc=f"{cfg.method} {cfg.data}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )
    t_loop = time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            log_now = step % cfg.log_every == 0
            rec = None
            for k in range(cfg.n_dis):
                real = stream.next().to(device, non_blocking=True)
                z = torch.randn(cfg.batch_size, cfg.z_dim, generator=z_gen).to(device)
                with torch.no_grad():
                    fake = G(z)
                last = k == cfg.n_dis - 1
                if log_now and last:
                    D.eval()
                    slopes = {
                        **_stats(input_gradient_norm(D, real), "grad_real"),
                        **_stats(input_gradient_norm(D, fake), "grad_fake"),
                    }
                    D.train()
                logits = D(torch.cat([real, fake]))
                d_real, d_fake = logits[: real.shape[0]], logits[real.shape[0] :]
                loss_d = losses.d_loss(cfg.loss, d_real, d_fake)
                if cfg.loss == "wgan-gp":
                    D.eval()
                    loss_d = loss_d + cfg.gp_weight * losses.gradient_penalty(D, real, fake, gp_gen)
                    D.train()
                opt_d.zero_grad(set_to_none=True)
                loss_d.backward()
                if check_loss_each_step and _bad(loss_d.item(), MAX_ABS_LOSS):
                    raise Diverged(step, None, "loss_d", loss_d.item())
                if log_now and last:
                    means = torch.stack([d_real.mean(), d_fake.mean(), loss_d]).tolist()
                    with torch.random.fork_rng(devices=[]):  # the Monitor draws its own vectors
                        rec = monitor.record(
                            step, loss_d=means[2], d_real=means[0], d_fake=means[1], **slopes
                        )
                opt_d.step()

            D.eval()
            D.requires_grad_(False)
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=z_gen).to(device)
            loss_g = losses.g_loss(cfg.loss, D(G(z)))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            D.requires_grad_(True)
            D.train()
            if ema is not None:
                ema.update()
            if check_loss_each_step and _bad(loss_g.item(), MAX_ABS_LOSS):
                raise Diverged(step, None, "loss_g", loss_g.item())

            if rec is not None:
                rec["loss_g"] = loss_g.item()
                rec["time"] = wall_before + time.perf_counter() - t_start
                _check_record(rec)
                _check_weights(step, ("G", G), ("D", D))
                logger.log(rec)
                if bar is not None:
                    bar.set_postfix(
                        loss_d=f"{rec['loss_d']:.3f}", loss_g=f"{rec['loss_g']:.3f}", refresh=False
                    )
            final = step == cfg.steps
            if final or (cfg.eval_every and step % cfg.eval_every == 0):
                metrics = evaluator(g_eval)
                history.append({"step": step, **metrics})
                logger.metrics(step, metrics)
                _write_metrics(
                    run, "finished" if final else "running", step, metrics, history, None
                )
            if final or (cfg.sample_every and step % cfg.sample_every == 0):
                pictures(step, final)
            if final or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                checkpoint(step)
            if bar is not None:
                bar.update(1)
    except Diverged as err:
        status = "diverged"
        divergence = err.info
        warnings.warn(f"{err}; the run stops, keeping its last good checkpoint", stacklevel=2)
    finally:
        monitor.close()
        logger.close()
        if bar is not None:
            bar.close()
    loop_time = time.perf_counter() - t_loop
    done = step - start

    if status == "diverged":
        # Final metrics: those of the last good checkpoint's generator.
        found = load_latest(run, cfg)
        assert found is not None
        path, ck = found
        load_state(g_eval, ck["G_ema"] or ck["G"], "generator", path)
        history = list(ck["history"])
        final_metrics = evaluator(g_eval)
        final_metrics = {**final_metrics, "checkpoint_step": int(ck["step"])}
        _write_metrics(run, "diverged", step, final_metrics, history, divergence)
    else:
        final_metrics = history[-1] if history and history[-1]["step"] == cfg.steps else {}
        final_metrics = {k: v for k, v in final_metrics.items() if k != "step"}
        if start >= cfg.steps:  # nothing left to do: report what the run holds
            _write_metrics(run, "finished", start, final_metrics, history, None)
    return {
        "status": status,
        "metrics": final_metrics,
        "wall_time": wall_before + time.perf_counter() - t_start,
        "steps": step,
        "steps_per_sec": done / loop_time if loop_time > 0 and done else 0.0,
        "divergence": divergence,
    }
