"""``TrainConfig``: every setting of one GAN run, with defaults, YAML files and overrides.

Every field has a default; ``None`` in a field marked *derived* means "pick from the
data and architecture", which ``resolved()`` fills in (a run folder's ``config.yaml``
holds the resolved values). Files are read with ``yaml.safe_load``; an unknown key is
rejected naming it and listing the valid ones; a value of the wrong type is rejected.

    cfg = TrainConfig.from_file("configs/digits.yaml").with_overrides(["steps=500", "method=bssn"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from normlab.data.mixtures import MIXTURES
from normlab.gan.models import ARCHS
from normlab.gan.schedule import LR_SCHEDULES
from normlab.reparam import D_ONLY_METHODS, DEFAULT_SCALE, METHODS, SCALED_METHODS

#: The initialisations ``init`` accepts.
INITS = ("default", "he")
#: The losses ``loss`` accepts.
LOSSES = ("hinge", "ns", "wgan-gp")
#: The precisions ``precision`` accepts: float32, or autocast to bfloat16 / float16.
PRECISIONS = ("fp32", "bf16", "fp16")


#: The mixtures' schedule (grid25 only trains longer).
_MIXTURE_PRESET: dict[str, Any] = {
    "arch": "mlp",
    "steps": 2000,
    "batch_size": 256,
    "n_dis": 2,
    "lr_d": 5e-4,
    "lr_g": 2e-4,
    "beta2": 0.9,
    "width": 64,
    "z_dim": 16,
    "eval_samples": 2500,
    "eval_every": 250,
}

#: Settings tuned for the bundled data, on top of the defaults (``TrainConfig.preset``). The
#: 2-D mixtures: an SN-constrained MLP discriminator is weak (its slopes shrink layer by layer,
#: Lin et al.'s vanishing gradients), so with the paper's 1:1 schedule SN's generator wanders
#: without settling on the ring in a few thousand steps (seed 0, 2k steps: 0-3 modes). A faster
#: D (TTUR: lr_d > lr_g, beta2 0.9), two D updates per G update and width 64 let SN cover all 8
#: ring modes in 2k steps (seed 0: 8 modes, 11% of samples high quality), while the same schedule
#: without normalization collapses onto 1 mode: tuned on one seed, sweep for your own study.
#: Digits: the paper's 1:1 schedule (width 32, bssn, 1,500 steps) collapsed onto one digit; the
#: same D-favouring schedule at width 16 gave varied digits (SN, 1,500 steps: FID 160 on the
#: digit features, recall 0.65).
#: ring8 (what ``normlab compare`` and ``make demo`` run), retuned for issue 16 on seed 0: the
#: 2k-step preset stopped SN while its high-quality fraction was still rising (11% at 2k). For
#: SN (HQ at 3k / 4k steps): the first lrs 34% / 57% (EMA 0.99); twice the lrs with EMA 0.99
#: 51% / 68%; 4-5x the lrs 34% / 65%; a linear decay to 0 over 4k steps 13% / 18% (the HQ rise
#: needs the lr). Batch 1024 52-59% at 2.5k at 1.4x the time of a step (batch 256: 35%), 512
#: 40%; one D update per G update 0% HQ; EMA 0.999 2% at 2.5k; G BatchNorm 42% at 2.5k; width
#: 128 1%. z_dim: 2 (PacGAN's) gives SN 64% at 2.5k but the unnormalized GAN then covers all 8
#: modes too (62-75% HQ, seeds 0-1), 4 and 8 keep its collapse (3 modes) with SN at 38% / 50%
#: (8: 74% at 4k, BSSN 76%), against 68% at z_dim 16: kept at 16. So: twice the first lrs, EMA
#: 0.99 of G for evaluation, evaluations every 500 (the converged check looks at the last 3).
#: At 4k steps (3 seeds: SN 70% HQ, BSSN 72%) HQ still rose by 4-8 points from 3.5k to 4k.
#: Width 32 follows width 64's HQ curve (SN seed 0: 70% / 81% at 4k / 6k against 68% / 80%)
#: at 3/4 of the time, so the preset trains 8k steps at width 32 (``make demo``: none / sn /
#: bssn x 3 seeds in 4 min 22 s on 2 cores; SN 83% HQ, BSSN 85%, the 6 SN-family runs converged,
#: no normalization 3.3 modes, mode-hopping). Batch 512 (1.08x the time of a step) rises faster
#: (SN seed 1: 85% at 8k against 80%) but lets the unnormalized GAN cover 3-7 modes; a linear
#: lr decay over the last 40% gives the same HQ (79% at 8k), flatter. PacGAN's level (>= 95%
#: HQ, 400k steps) is not reached at this budget: SN reaches 88%, BSSN (c 2) 92% at 10k steps.
_RING8_PRESET: dict[str, Any] = {
    **_MIXTURE_PRESET,
    "steps": 8000,
    "width": 32,
    "lr_d": 1e-3,
    "lr_g": 4e-4,
    "ema": 0.99,
    "eval_every": 500,
}

#: Stacked digits: the digits' schedule with the small discriminator of Unrolled GAN / PacGAN's
#: Table 3 (D's channels 1/4 of G's: d_width 4 against width 16), where mode collapse shows;
#: 1,000 steps so that ``normlab compare --data stacked-digits`` over 7 methods x 3 seeds fits in
#: 20 minutes on 2 cores (18 min 18 s measured; about 80 ms of CPU a step); longer studies pass
#: ``--steps``. FID/KID/PRDC on 2,000 samples, modes and KL on 26,000 (the protocol), every
#: 1,000 steps (an evaluation takes about 16 s on one core, 5 of them classifying the 26,000).
#: Set ``d_width=8`` for PacGAN's D = 1/2 G, ``d_width=16`` for a balanced D.
PRESETS: dict[str, dict[str, Any]] = {
    "ring8": _RING8_PRESET,
    "grid25": {**_MIXTURE_PRESET, "steps": 3000},
    "digits": {
        "arch": "cnn",
        "steps": 3000,
        "width": 16,
        "batch_size": 64,
        "z_dim": 128,
        "n_dis": 2,
        "lr_d": 5e-4,
        "lr_g": 2e-4,
        "beta2": 0.9,
        "log_every": 50,
        "eval_every": 500,
    },
    "stacked-digits": {
        "arch": "cnn",
        "steps": 1000,
        "width": 16,
        "d_width": 4,
        "batch_size": 64,
        "z_dim": 128,
        "n_dis": 2,
        "lr_d": 5e-4,
        "lr_g": 2e-4,
        "beta2": 0.9,
        "log_every": 50,
        "eval_every": 1000,
        "eval_samples": 2000,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run; defaults: ring8, MLPs, SN on D, hinge loss, Adam(2e-4, 0.5, 0.999)."""

    #: ``ring8``, ``grid25``, ``digits``, ``stacked-digits``, ``folder:PATH``, ``npz:PATH`` or
    #: ``cifar10:PATH``.
    data: str = "ring8"
    #: Centre-crop and resize images to this size (None: keep them as they are).
    resolution: int | None = None
    #: ``mlp``, ``cnn`` or ``resnet``; derived: ``mlp`` for 2-D mixtures, ``cnn`` for images.
    arch: str | None = None
    #: One of ``normlab.METHODS``.
    method: str = "sn"
    #: Method on D / on G; derived from ``method``: SN family on D only, eqlr and wn on both.
    d_method: str | None = None
    g_method: str | None = None
    #: The constant ``c`` of ssn/bssn (derived: ``normlab.DEFAULT_SCALE``); other methods take none.
    scale: float | None = None
    #: ``hinge`` (the paper's), ``ns`` (non-saturating) or ``wgan-gp``.
    loss: str = "hinge"
    #: Weight of WGAN-GP's gradient penalty.
    gp_weight: float = 10.0
    #: Generator updates (each after ``n_dis`` discriminator updates).
    steps: int = 2000
    #: Derived: 256 for mixtures, 64 for images.
    batch_size: int | None = None
    lr_d: float = 2e-4
    lr_g: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    n_dis: int = 1
    #: Latent size; derived: 16 for mlp, 128 for cnn and resnet.
    z_dim: int | None = None
    #: MLP hidden units / CNN base channels / ResNet D channels (G: twice); derived: 128, 64, 128.
    width: int | None = None
    #: D's width alone (MLP units / CNN base channels / ResNet channels); None: ``width``. The
    #: small-D regime of Unrolled GAN and PacGAN's Table 3 (D = 1/4 or 1/2 of G): ``width / 4``.
    d_width: int | None = None
    #: Hidden layers of the mlp generator and discriminator.
    depth: int = 3
    #: Pieces of each maxout unit of the mlp discriminator (PacGAN: 5), which then has 3
    #: maxout layers of ``d_width`` units; 0: LeakyReLU layers.
    maxout: int = 0
    #: BatchNorm before each ReLU of the mlp generator (PacGAN's generator).
    g_batchnorm: bool = False
    #: PacGAN packing: D judges ``pack`` samples concatenated (``batch_size`` counts samples,
    #: so PacGAN's batch of 100 packs is ``batch_size = 100 * pack``).
    pack: int = 1
    #: Std of a normal initialisation of every weight of G and D, biases zero (PacGAN: 0.02);
    #: 0: PyTorch's default initialisation.
    init_std: float = 0.0
    #: ``default``: PyTorch's (or ``init_std``'s) initialisation; ``he``: every linear/conv
    #: weight of G and D from ``N(0, 2 / fan_in)``, biases zero, drawn as equalized lr draws
    #: its raw weights (so with the same seed the initial effective weights equal eqlr's):
    #: the ablation that separates eqlr's init from its runtime scaling. Networks under eqlr
    #: keep their own draw, so ``--methods none,eqlr --set init=he`` pairs equal inits.
    init: str = "default"
    #: Learning-rate schedule of both optimizers over ``steps``: ``none``, ``linear`` (to 0),
    #: ``cosine`` (``normlab.gan.schedule``).
    lr_decay: str = "none"
    #: EMA decay of G's weights for evaluation and samples; 0 turns EMA off.
    ema: float = 0.0
    seed: int = 0
    #: Every how many steps to log losses, per-layer sigmas and input-gradient norms.
    log_every: int = 20
    #: Every how many steps to compute the metrics (0: only at the end).
    eval_every: int = 500
    #: Every how many steps to write a checkpoint (0: only at the end).
    ckpt_every: int = 500
    #: Every how many steps to write a sample PNG (0: only at the end).
    sample_every: int = 0
    #: Generated samples per evaluation; derived: 2500 for mixtures (PacGAN), 1000 for images.
    eval_samples: int | None = None
    #: Checkpoints kept (the newest ones); at least 2, so a corrupt newest one has a fallback.
    keep_checkpoints: int = 2
    #: ``cpu``, ``cuda``, ``cuda:1``, ... (bit-exact resume is guaranteed on CPU).
    device: str = "cpu"
    #: torch intra-op threads (0: torch's default).
    threads: int = 0
    #: pytorch-fid's Inception-v3 weights file: image metrics on its features instead of a
    #: feature network trained on the data.
    inception_weights: str | None = None
    #: Where the feature network for image metrics is cached (None: ``feature_net.pt`` in the
    #: run folder). Runs on the same data can share one file.
    feature_cache: str | None = None
    #: Run the training forwards of D and G through ``torch.compile``.
    compile: bool = False
    #: ``fp32``; ``bf16`` or ``fp16``: forwards under ``torch.autocast`` with float32 master
    #: weights (normalizations stay float32); ``fp16`` needs CUDA (it uses a GradScaler).
    precision: str = "fp32"
    #: Under torchrun on CUDA: G's BatchNorm as SyncBatchNorm (statistics of the global batch
    #: instead of each rank's chunk).
    sync_bn: bool = False

    # -- construction ----------------------------------------------------------------------
    def __post_init__(self) -> None:
        hints = _hints()
        for f in fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._validate()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "config") -> TrainConfig:
        """A config from ``values``; unknown keys are rejected."""
        if not isinstance(values, dict):
            raise TypeError(
                f"{where} must be a mapping of keys to values, got {type(values).__name__}"
            )
        _check_keys(values, where)
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None

    @classmethod
    def preset(cls, data: str, **overrides: Any) -> TrainConfig:
        """The tuned starting point for ``data`` (``PRESETS``; paper defaults for other data),
        with ``overrides``. ``configs/<name>.yaml`` hold the same values."""
        return cls.from_dict({"data": data, **PRESETS.get(data, {}), **overrides}, where="preset")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        """A config from a YAML file (``yaml.safe_load``; nothing in it is executed)."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {str(p)!r} does not exist")
        try:
            values = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(p)!r} is not valid YAML: {err}") from None
        return cls.from_dict(values or {}, where=f"config file {str(p)!r}")

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides`` (validated like the constructor's arguments)."""
        _check_keys(overrides, "override")
        return dataclasses.replace(self, **overrides)

    def with_overrides(self, items: list[str] | tuple[str, ...]) -> TrainConfig:
        """A copy with ``["key=value", ...]`` applied; values are parsed as YAML scalars."""
        values: dict[str, Any] = {}
        for item in items:
            key, sep, raw = str(item).partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"override {item!r} must look like key=value")
            _check_keys({key: None}, "override")
            values[key] = parse_value(raw)
        return self.replace(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, in field order (what ``config.yaml`` holds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # -- derived values ----------------------------------------------------------------------
    @property
    def is_mixture(self) -> bool:
        return self.data in MIXTURES

    def resolved(self) -> TrainConfig:
        """A copy with every derived (None) field filled in."""
        mixture = self.is_mixture
        arch = self.arch or ("mlp" if mixture else "cnn")
        d_method, g_method = self.d_method, self.g_method
        if d_method is None:
            d_method = self.method
        if g_method is None:
            g_method = "none" if self.method in D_ONLY_METHODS else self.method
        scale = self.scale
        if scale is None and (d_method in SCALED_METHODS or g_method in SCALED_METHODS):
            scale = DEFAULT_SCALE
        return dataclasses.replace(
            self,
            arch=arch,
            d_method=d_method,
            g_method=g_method,
            scale=scale,
            batch_size=self.batch_size or (256 if mixture else 64),
            z_dim=self.z_dim or (16 if arch == "mlp" else 128),
            width=self.width or {"mlp": 128, "cnn": 64, "resnet": 128}[arch],
            eval_samples=self.eval_samples or (2500 if mixture else 1000),
        )

    def _validate(self) -> None:
        def choice(name: str, value: Any, options: tuple[str, ...]) -> None:
            if value is not None and value not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")

        choice("arch", self.arch, ARCHS)
        choice("init", self.init, INITS)
        choice("method", self.method, METHODS)
        choice("d_method", self.d_method, METHODS)
        choice("g_method", self.g_method, METHODS)
        choice("loss", self.loss, LOSSES)
        choice("precision", self.precision, PRECISIONS)
        choice("lr_decay", self.lr_decay, LR_SCHEDULES)
        cuda = self.device.startswith("cuda")
        if self.precision == "fp16" and not cuda:
            raise ValueError(
                f"precision fp16 needs a CUDA device (its GradScaler runs there); got "
                f"device {self.device!r}: use precision bf16 on the CPU"
            )
        if self.sync_bn and not cuda:
            raise ValueError(
                f"sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU kernel); got "
                f"device {self.device!r}. On CPU ranks BatchNorm uses each rank's chunk"
            )
        if not self.data:
            raise ValueError("data must not be empty")
        positive = [
            "steps",
            "lr_d",
            "lr_g",
            "n_dis",
            "batch_size",
            "z_dim",
            "width",
            "d_width",
            "resolution",
            "eval_samples",
            "log_every",
            "depth",
            "pack",
        ]
        for name in positive:
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive, got {v!r}")
        if self.maxout == 1 or self.maxout < 0:
            raise ValueError(
                f"maxout must be 0 (LeakyReLU discriminator) or at least 2 pieces, got "
                f"{self.maxout!r}"
            )
        if self.batch_size is not None and self.batch_size % self.pack:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of pack {self.pack}: D judges "
                f"packs of {self.pack} samples; PacGAN's batch of 100 packs is batch_size "
                f"{100 * self.pack}"
            )
        arch = self.arch or ("mlp" if self.is_mixture else "cnn")
        mlp_only = [k for k, v in (("maxout", self.maxout), ("g_batchnorm", self.g_batchnorm)) if v]
        if arch != "mlp" and mlp_only:
            raise ValueError(
                f"{', '.join(mlp_only)} are options of the mlp architecture; arch is {arch!r}"
            )
        if self.pack > 1 and self.loss == "wgan-gp":
            raise ValueError(
                f"pack={self.pack} does not work with loss wgan-gp: its gradient penalty is taken "
                "per sample, not per pack of samples; use loss hinge or ns with packing"
            )
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"init_std must be >= 0 (0: default init), got {self.init_std!r}")
        if self.init != "default" and self.init_std:
            raise ValueError(
                f"init={self.init!r} and init_std={self.init_std!r} both set the weights' "
                "initialisation: leave init_std at 0 or init at 'default'"
            )
        for name in ("eval_every", "ckpt_every", "sample_every", "seed", "threads", "gp_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("beta1", "beta2", "ema"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {v!r}")
        if self.inception_weights and self.is_mixture:
            raise ValueError(
                f"inception_weights is for image data; {self.data!r} is a 2-D mixture, whose "
                f"metrics need no feature network"
            )
        if self.keep_checkpoints < 2:
            raise ValueError(f"keep_checkpoints must be at least 2, got {self.keep_checkpoints}")
        if self.scale is not None:
            if not (math.isfinite(self.scale) and self.scale > 0):
                raise ValueError(f"scale must be a positive number, got {self.scale!r}")
            d = self.d_method or self.method
            g = self.g_method or ("none" if self.method in D_ONLY_METHODS else self.method)
            if d not in SCALED_METHODS and g not in SCALED_METHODS:
                raise ValueError(
                    f"scale={self.scale:g} is only used by {' and '.join(SCALED_METHODS)}; "
                    f"method {self.method!r} (D: {d}, G: {g}) takes none: leave scale unset"
                )


# -- typing helpers --------------------------------------------------------------------------
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_keys(values: dict[str, Any], where: str) -> None:
    valid = TrainConfig.field_names()
    for key in values:
        if key not in valid:
            raise ValueError(f"unknown {where} key {key!r}; valid keys: {', '.join(valid)}")


def parse_value(raw: str) -> Any:
    """A command-line value as a YAML scalar: ``1e-4`` -> float, ``null``/``none`` -> None."""
    raw = raw.strip()
    if raw.lower() in ("none", "null", "~", ""):
        return None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, str | int | float | bool) else raw


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, str(tp)
    )


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the field's type ``hint`` (``X`` or ``X | None``)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        if base is str:  # ``--set method=none``: the word, which parse_value read as null
            return "none"
        raise TypeError(f"{name} must be {_type_name(base)}, got None")
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise TypeError(f"{name} must be {_type_name(base)}, got {value!r}")
        return float(value)
    if base is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                return int(value)
            raise TypeError(f"{name} must be {_type_name(base)}, got {value!r}")
        return value
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be {_type_name(base)}, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be {_type_name(base)}, got {value!r}")
        return value
    raise AssertionError(f"unhandled type {hint!r} for {name}")  # pragma: no cover


__all__ = [
    "D_ONLY_METHODS",
    "LOSSES",
    "PRECISIONS",
    "PRESETS",
    "SCALED_METHODS",
    "TrainConfig",
    "parse_value",
]
