"""Class Normalization for zero-shot learning (Skorokhodov & Elhoseiny, ICLR 2021).

A zero-shot model maps each class's attribute vector ``a_c`` to a prototype ``p_c`` in the feature
space of the images, and scores an image feature ``z`` against every class by ``<z, p_c>``. The
paper (``universome/class-norm``) shows that three things keep the variance of that model's signals
at the right scale, and uses all of them in a plain MLP:

- *normalize + scale* logits: ``s * cos(z, p_c)`` with ``s = 5`` (eq. 5);
- *attribute normalization*: ``a / ||a|| * sqrt(d_a)`` (eq. 6; so every class's attributes have the
  same norm);
- *class standardization* (eq. 9): standardize each hidden unit across the classes of the batch
  (the rows of the attribute matrix), with running statistics at test time, where the model is
  applied to the unseen classes;
- a *variance-preserving init* of the last layer (eq. 10): ``Var[W] = 1 / (d_hidden * d_proto)``
  (uniform on ``[-b, b]``, ``b = sqrt(3 Var)``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassNormMLP", "ClassStandardization", "normalize_attributes"]


def normalize_attributes(attrs: Tensor, eps: float = 1e-12) -> Tensor:
    """Attribute normalization: each row rescaled to norm ``sqrt(d)`` (``a / ||a|| * sqrt(d)``)."""
    return attrs / attrs.norm(dim=-1, keepdim=True).clamp_min(eps) * math.sqrt(attrs.shape[-1])


class ClassStandardization(nn.Module):
    """Standardize each feature across the classes of the batch (eq. 9 of the paper).

    Input ``(num_classes, num_features)``: one row per class (the hidden features of the class
    attributes). Training: ``(h - mean_c h) / sqrt(var_c h + eps)`` with the unbiased variance over
    the classes, and the running statistics updated as
    ``running = (1 - momentum) * running + momentum * batch``. Eval: the running statistics.
    No affine parameters (the reference's ``BatchNorm1d(affine=False)`` equivalent).

    ``denominator="var"`` reproduces the reference code, which divides by ``var + eps`` instead of
    the standard deviation (a discrepancy with the paper's eq. 9); the default follows the paper.
    Running statistics are buffers here (the reference stores them as frozen ``nn.Parameter``).
    """

    def __init__(
        self,
        num_features: int,
        momentum: float = 0.1,
        eps: float = 1e-5,
        denominator: Literal["std", "var"] = "std",
    ) -> None:
        super().__init__()
        if denominator not in ("std", "var"):
            raise ValueError(f"denominator must be 'std' or 'var', got {denominator!r}")
        self.num_features = num_features
        self.momentum = momentum
        self.eps = eps
        self.denominator = denominator
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, denominator={self.denominator!r}"

    def forward(self, class_feats: Tensor) -> Tensor:
        if class_feats.dim() != 2 or class_feats.shape[1] != self.num_features:
            raise ValueError(
                f"expected (num_classes, {self.num_features}), got {tuple(class_feats.shape)}"
            )
        if self.training:
            if class_feats.shape[0] < 2:
                raise ValueError("class standardization needs at least 2 classes in training")
            mean = class_feats.mean(0)
            var = class_feats.var(0, unbiased=True)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        denom = (var + self.eps).sqrt() if self.denominator == "std" else var + self.eps
        return (class_feats - mean) / denom


class ClassNormMLP(nn.Module):
    """Attribute-to-prototype MLP of the class-norm paper, with each of its ingredients switchable.

    ``forward(feats, attrs) -> logits (batch, num_classes)``: ``attrs`` ``(num_classes, attr_dim)``
    goes through ``Linear -> ReLU -> [Linear -> CS -> ReLU -> CS] (x num_hidden) -> Linear -> ReLU``
    (CS = :class:`ClassStandardization`, present when ``class_norm``), giving one prototype per
    class in the ``feat_dim``-dimensional feature space; ``feats`` ``(batch, feat_dim)`` are the
    image features. Logits: ``scale * cos(feat, proto)`` when ``scale`` is not ``None``
    (normalize+scale, s = 5 by default), else the plain dot product.

    ``attr_norm``: apply :func:`normalize_attributes` to ``attrs`` first. ``proper_init``: the
    variance-preserving init of the last layer. With ``class_norm=False, attr_norm=False,
    proper_init=False, scale=None`` this is the plain MLP baseline of the paper's ablation.
    """

    def __init__(
        self,
        attr_dim: int,
        feat_dim: int,
        hidden_dim: int = 1024,
        num_hidden: int = 1,
        scale: float | None = 5.0,
        class_norm: bool = True,
        attr_norm: bool = True,
        proper_init: bool = True,
        denominator: Literal["std", "var"] = "std",
    ) -> None:
        super().__init__()
        self.scale = scale
        self.attr_norm = attr_norm
        layers: list[nn.Module] = [nn.Linear(attr_dim, hidden_dim), nn.ReLU()]
        for _ in range(num_hidden):
            layers.append(nn.Linear(hidden_dim, hidden_dim))
            if class_norm:
                layers.append(ClassStandardization(hidden_dim, denominator=denominator))
            layers.append(nn.ReLU())
            if class_norm:
                layers.append(ClassStandardization(hidden_dim, denominator=denominator))
        self.last = nn.Linear(hidden_dim, feat_dim)
        layers += [self.last, nn.ReLU()]
        self.model = nn.Sequential(*layers)
        if proper_init:
            bound = math.sqrt(3.0 / (hidden_dim * feat_dim))
            with torch.no_grad():
                self.last.weight.uniform_(-bound, bound)

    def prototypes(self, attrs: Tensor) -> Tensor:
        """One prototype per class, ``(num_classes, feat_dim)``."""
        if self.attr_norm:
            attrs = normalize_attributes(attrs)
        return self.model(attrs)

    def forward(self, feats: Tensor, attrs: Tensor) -> Tensor:
        protos = self.prototypes(attrs)
        if self.scale is None:
            return feats @ protos.t()
        return self.scale * F.normalize(feats, dim=1) @ F.normalize(protos, dim=1).t()
