"""``train(cfg, out_dir)``: one GAN run, crash-safe, deterministic on CPU, divergence caught.

One step is ``n_dis`` discriminator updates then one generator update (the SNGAN/BSN
loop), built from ``normlab.gan.steps`` (the functions the ``diagnose`` experiment uses too).
Each D update runs D once on the concatenated real and fake batch, so an SN-family layer
takes exactly one power-iteration step per D update (as in the BSN code); the generator
update, the gradient penalty and the logged input-gradient norms run D in eval mode, which
freezes the power vectors, so logging never changes training.

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

Several processes (``torchrun --nproc_per_node=N -m normlab train ...``): D and G train in
``DistributedDataParallel`` (gloo on CPU, nccl on CUDA); every rank draws the same global
batch and trains on its contiguous chunk of it, so N ranks compute what one process
computes (see ``normlab.gan.distributed`` for the rules). Rank 0 alone writes the run
folder; losses are logged as means over the global batch, the other logged quantities
(sigmas, input-gradient norms) are rank 0's. BatchNorm (in G) normalizes each rank's chunk
with that chunk's statistics and keeps rank 0's running statistics (DDP broadcasts them at
every forward), unless ``sync_bn`` (CUDA only) makes it a SyncBatchNorm over the global batch.

``compile`` runs the training forwards of D and G through ``torch.compile``; ``precision``
``bf16``/``fp16`` runs them under ``torch.autocast`` with float32 master weights (the
normalizations themselves stay float32; fp16 adds a GradScaler per optimizer, CUDA only).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import normlab.reparam as nl
from normlab.diagnostics import Monitor, input_gradient_norm
from normlab.gan import distributed, losses, schedule, steps
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
    "compile",
)


class Diverged(Exception):
    """Raised inside the loop when a quantity is non-finite or exploded."""

    def __init__(self, step: int, layer: str | None, quantity: str, value: float) -> None:
        self.info = {"step": step, "layer": layer, "quantity": quantity, "value": value}
        where = f"layer {layer!r}, " if layer else ""
        super().__init__(f"training diverged at step {step}: {where}{quantity} = {value:g}")

    def __reduce__(self):  # picklable (sent from rank 0 to the other ranks)
        i = self.info
        return (Diverged, (i["step"], i["layer"], i["quantity"], i["value"]))


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
    run: Path, status: str, step: int, final: dict, history: list, divergence, info=None
) -> None:
    body = {
        "status": status,
        "step": step,
        "final": final,
        "history": history,
        "divergence": divergence,
    }
    if info:  # FID/KID: their feature space and scale
        body["metric_info"] = info
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


def _autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` (a no-op context for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _scaler(device: torch.device, precision: str):
    """A GradScaler for fp16 (CUDA); None otherwise."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def _backward_step(loss: Tensor, opt: torch.optim.Optimizer, scaler) -> None:
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def _skip_uniform(gen: torch.Generator, n: int) -> None:
    """Advance ``gen`` past ``n`` uniform draws (CPU draws are sequential: drawing 3 then 7
    values gives the 10 values of one draw), as if other ranks' rows had drawn them."""
    if n:
        torch.rand(n, generator=gen)


@contextmanager
def _agreed(ctx: distributed.Context) -> Iterator[None]:
    """Run a block that may fail on rank 0 only; then every rank raises if rank 0 did."""
    message = None
    try:
        yield
    except Exception as err:
        if not ctx.distributed:
            raise
        message = f"{type(err).__name__}: {err}"
        distributed.broadcast_object(ctx, message)
        raise
    message = distributed.broadcast_object(ctx, message)
    if message is not None:
        raise RuntimeError(f"rank 0 stopped the run: {message}")


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Train one GAN as ``cfg`` says, into the run folder ``out_dir``.

    With ``resume`` the run continues from the newest good checkpoint in ``out_dir`` (a
    folder without one starts afresh); without it, ``out_dir`` must not hold a run yet.
    Started by torchrun (``WORLD_SIZE`` > 1), the processes train one run together with
    DistributedDataParallel and rank 0 writes ``out_dir``.

    ``stop`` (e.g. ``threading.Event().is_set``, set by a signal handler) is asked after
    every step: when it answers True the run writes a checkpoint at the step reached and
    returns with status ``"interrupted"`` (resume it later with ``resume=True``). Under
    torchrun it is not asked (the ranks would have to agree on the step).

    Returns ``{"status": "finished" | "diverged" | "interrupted", "metrics": {final metrics},
    "wall_time": seconds (all sessions of the run), "steps": steps done, "steps_per_sec":
    this session's training speed, "divergence": None | {"step", "layer", "quantity",
    "value"}}`` (on ranks other than 0, ``metrics`` is empty).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    t_start = time.perf_counter()
    cfg = cfg.resolved()
    ctx = distributed.init(cfg.device)
    try:
        return _train(cfg, Path(out_dir), ctx, resume, progress, t_start, should_stop=stop)
    finally:
        distributed.teardown(ctx)


def _train(
    cfg: TrainConfig,
    run: Path,
    ctx: distributed.Context,
    resume: bool,
    progress: bool,
    t_start: float,
    should_stop: Callable[[], bool] | None = None,
) -> dict:
    main = ctx.is_main
    distributed.check_sync_bn(ctx, cfg.sync_bn)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = ctx.device
    rows = distributed.shard(cfg.batch_size, ctx.rank, ctx.world)
    weight = distributed.loss_weight(cfg.batch_size, ctx.rank, ctx.world)

    data = load_run_data(cfg)
    if data.kind == "images" and device.type != "cpu":
        data.images = data.images.to(device)
    evaluator = Evaluator(cfg, data, run) if main else None
    with _agreed(ctx):  # checks before anything is written; every rank hears the verdict
        if main:
            cfg = _check_folder(cfg, run, resume)
            evaluator.prepare()  # a bad inception_weights file fails here
    info = evaluator.metric_info() if main else {}
    if main:
        run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run / CONFIG_FILE, cfg.to_yaml())
    G, D = build_networks(cfg, data)
    G = distributed.convert_sync_bn(G, ctx, cfg.sync_bn)
    G.train()
    D.train()
    # Fused Adam: one kernel for all of a model's tensors. The same update as the per-tensor
    # loop up to rounding; on the ring's small MLPs, where each step is a few hundred tiny ops,
    # it takes 9% off a GAN iteration (0.908 [0.896, 0.918]; stacked digits 0.948), measured by
    # benchmarks/bench_optimizer.py.
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, cfg.beta2), fused=True)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, cfg.beta2), fused=True)
    ema = EMA(G, cfg.ema) if cfg.ema > 0 else None
    # The same global batches and latents on every rank; each trains on its rows of them.
    stream = data.stream(cfg.batch_size, seed=cfg.seed)
    z_gen = torch.Generator().manual_seed(cfg.seed + 1)
    gp_gen = torch.Generator().manual_seed(cfg.seed + 2)
    # Nothing in training draws from the global generators; they are seeded (and saved) anyway,
    # so that anything a user adds stays reproducible (seed + rank: different on each rank).
    distributed.seed_rank(cfg.seed, ctx.rank)

    start, history, wall_before = 0, [], 0.0
    found = None
    with _agreed(ctx):
        if main:
            # On the CPU when other ranks receive it (each copies it to its device).
            if resume:
                found = load_latest(run, cfg.replace(device="cpu") if ctx.distributed else cfg)
            clean_temporary(run)
            if found is None and list_checkpoints(run):
                raise RuntimeError(
                    f"{str(run)!r} holds checkpoints of another run (resume not asked, or its "
                    f"config.yaml is missing); choose an empty output folder"
                )
    found = distributed.broadcast_object(ctx, found)
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
        if ctx.rank:
            distributed.seed_rank(cfg.seed + int(ck["step"]), ctx.rank)
        start, history, wall_before = int(ck["step"]), list(ck["history"]), float(ck["wall_time"])

    # The modules that train: DDP wrappers (N ranks), compiled (compile). G, D stay the
    # plain modules: checkpoints, EMA, logging and evaluation use them.
    d_train = distributed.wrap(D, ctx)
    g_train = distributed.wrap(G, ctx)
    g_fake, d_judge = G, D  # the fakes of D's step (no grad); D in G's step (eval, frozen)
    if cfg.compile:
        d_train, g_train = torch.compile(d_train), torch.compile(g_train)
        g_fake, d_judge = torch.compile(G), torch.compile(D)
    amp = _autocast(device, cfg.precision)
    scaler_d, scaler_g = _scaler(device, cfg.precision), _scaler(device, cfg.precision)
    if found is not None and scaler_d is not None and ck.get("scalers"):
        scaler_d.load_state_dict(ck["scalers"]["d"])
        scaler_g.load_state_dict(ck["scalers"]["g"])

    def global_value(loss: Tensor) -> float:
        """The loss of the global batch (the weighted per-rank losses, averaged)."""
        return (
            distributed.mean_over_ranks(ctx, loss * weight).item()
            if ctx.distributed
            else (loss.item())
        )

    def checkpoint(step: int) -> None:
        _check_weights(step, ("G", G), ("D", D))
        # BatchNorm running statistics follow each rank's chunk between G's DDP forwards
        # (which broadcast rank 0's): take rank 0's, then every tensor must agree.
        distributed.broadcast_buffers(ctx, G)
        distributed.check_in_sync(ctx, G=G, D=D)
        if not main:
            return
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
        if scaler_d is not None:
            payload["scalers"] = {"d": scaler_d.state_dict(), "g": scaler_g.state_dict()}
        save_checkpoint(run, step, payload, keep=cfg.keep_checkpoints)

    if found is None:
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

    logger = _Logger(run, start) if main else None
    monitor = Monitor(D, every=cfg.log_every, prefix="D", keep_records=False) if main else None
    if monitor is not None:
        monitor.pause()  # on only for the logged D step: its hooks cost 3% of a ring8 step
    check_loss_each_step = device.type == "cpu"
    divergence = None
    status = "finished"
    step = start
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc=f"{cfg.method} {cfg.data}",
            unit="step",
            leave=False,
            dynamic_ncols=True,
        )

    def gp_alpha(real: Tensor) -> Tensor:
        """WGAN-GP's interpolation weights of this rank's rows of the global batch."""
        _skip_uniform(gp_gen, rows.start)
        alpha = losses.interpolation_weights(real, gp_gen)
        _skip_uniform(gp_gen, cfg.batch_size - rows.stop)
        return alpha

    t_loop = time.perf_counter()
    try:
        for step in range(start + 1, cfg.steps + 1):
            if cfg.lr_decay != "none":  # issue 16: a schedule computed from the step alone
                factor = schedule.lr_factor(cfg.lr_decay, step, cfg.steps)
                schedule.set_lr(opt_d, cfg.lr_d * factor)
                schedule.set_lr(opt_g, cfg.lr_g * factor)
            log_now = step % cfg.log_every == 0
            rec = None
            for k in range(cfg.n_dis):
                real = stream.next()[rows].to(device, non_blocking=True)
                z = torch.randn(cfg.batch_size, cfg.z_dim, generator=z_gen)[rows].to(device)
                with torch.no_grad(), amp:
                    fake = g_fake(z)
                last = k == cfg.n_dis - 1
                if log_now and last and main:
                    # D's slopes in eval (no power step), its weights computed once for both.
                    with steps.eval_mode(D), nl.cached():
                        slopes = {
                            **_stats(input_gradient_norm(D, real), "grad_real"),
                            **_stats(input_gradient_norm(D, fake.to(real.dtype)), "grad_fake"),
                        }
                if log_now and last and main:
                    monitor.resume()
                step_d = steps.d_step_loss(
                    d_train,
                    D,
                    real,
                    fake,
                    cfg.loss,
                    amp=amp,
                    gp_weight=cfg.gp_weight,
                    gp_interpolation=gp_alpha,
                )
                loss_d, d_real, d_fake = step_d.loss, step_d.real_logits, step_d.fake_logits
                opt_d.zero_grad(set_to_none=True)
                if scaler_d is None:
                    (loss_d * weight if weight != 1.0 else loss_d).backward()
                else:
                    scaler_d.scale(loss_d * weight).backward()
                if check_loss_each_step or (log_now and last):
                    value_d = global_value(loss_d)
                    if _bad(value_d, MAX_ABS_LOSS):
                        raise Diverged(step, None, "loss_d", value_d)
                if log_now and last and main:
                    means = torch.stack([d_real.mean(), d_fake.mean()]).tolist()
                    with torch.random.fork_rng(devices=[]):  # the Monitor draws its own vectors
                        rec = monitor.record(
                            step, loss_d=value_d, d_real=means[0], d_fake=means[1], **slopes
                        )
                    monitor.pause()
                if scaler_d is None:
                    opt_d.step()
                else:
                    scaler_d.step(opt_d)
                    scaler_d.update()

            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=z_gen)[rows].to(device)
            loss_g = steps.g_step_loss(g_train, d_judge, D, z, cfg.loss, amp=amp)
            opt_g.zero_grad(set_to_none=True)
            _backward_step(loss_g * weight if weight != 1.0 else loss_g, opt_g, scaler_g)
            if ema is not None:
                ema.update()
            if check_loss_each_step or rec is not None or (log_now and ctx.distributed):
                value_g = global_value(loss_g)
                if _bad(value_g, MAX_ABS_LOSS):
                    raise Diverged(step, None, "loss_g", value_g)

            if log_now:
                stop = None
                if rec is not None:
                    rec["loss_g"] = value_g
                    rec["time"] = wall_before + time.perf_counter() - t_start
                    try:
                        _check_record(rec)
                        _check_weights(step, ("G", G), ("D", D))
                    except Diverged as err:
                        stop = err
                if ctx.distributed:  # rank 0's verdict holds on every rank
                    stop = distributed.broadcast_object(ctx, stop)
                if stop is not None:
                    raise stop
                if rec is not None:
                    logger.log(rec)
                    if bar is not None:
                        bar.set_postfix(
                            loss_d=f"{rec['loss_d']:.3f}",
                            loss_g=f"{rec['loss_g']:.3f}",
                            refresh=False,
                        )
            final = step == cfg.steps
            if main and (final or (cfg.eval_every and step % cfg.eval_every == 0)):
                metrics = evaluator(g_eval)
                history.append({"step": step, **metrics})
                logger.metrics(step, metrics)
                _write_metrics(
                    run, "finished" if final else "running", step, metrics, history, None, info
                )
            if main and (final or (cfg.sample_every and step % cfg.sample_every == 0)):
                pictures(step, final)
            if final or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                checkpoint(step)
            if bar is not None:
                bar.update(1)
            if should_stop and not ctx.distributed and step < cfg.steps and should_stop():
                if not (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    checkpoint(step)  # the step reached, unless just written
                status = "interrupted"
                break
    except Diverged as err:
        status = "diverged"
        divergence = err.info
        if main:
            warnings.warn(f"{err}; the run stops, keeping its last good checkpoint", stacklevel=3)
    finally:
        if monitor is not None:
            monitor.close()
        if logger is not None:
            logger.close()
        if bar is not None:
            bar.close()
    loop_time = time.perf_counter() - t_loop
    done = step - start

    final_metrics: dict = {}
    if status == "diverged" and main:
        # Final metrics: those of the last good checkpoint's generator.
        found = load_latest(run, cfg)
        assert found is not None
        path, ck = found
        load_state(g_eval, ck["G_ema"] or ck["G"], "generator", path)
        history = list(ck["history"])
        final_metrics = evaluator(g_eval)
        final_metrics = {**final_metrics, "checkpoint_step": int(ck["step"])}
        _write_metrics(run, "diverged", step, final_metrics, history, divergence, info)
    elif main:
        final_metrics = history[-1] if history and history[-1]["step"] == cfg.steps else {}
        final_metrics = {k: v for k, v in final_metrics.items() if k != "step"}
        if start >= cfg.steps:  # nothing left to do: report what the run holds
            _write_metrics(run, "finished", start, final_metrics, history, None, info)
    return {
        "status": status,
        "metrics": final_metrics,
        "wall_time": wall_before + time.perf_counter() - t_start,
        "steps": step,
        "steps_per_sec": done / loop_time if loop_time > 0 and done else 0.0,
        "divergence": divergence,
    }
