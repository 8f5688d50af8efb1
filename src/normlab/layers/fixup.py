"""Fixup: residual networks trained without normalization (Zhang, Dauphin, Ma, ICLR 2019).

The rules (paper §3, official code ``hongyi-zhang/Fixup``), as :func:`fixup_init` applies them:

1. the classification layer and the *last* weight layer of every residual branch start at zero;
2. every other weight layer inside a branch gets He initialisation scaled by ``L^(-1/(2m-2))``,
   where ``L`` is the number of residual branches and ``m`` the number of weight layers per branch
   (``L^(-1/2)`` for basic blocks, ``L^(-1/4)`` for bottlenecks);
3. a scalar multiplier (init 1) on each branch output and a scalar bias (init 0) before each
   convolution, activation and the classifier;
4. shortcuts are never scaled (identity, or a 1x1 conv / parameter-free pad at a change of shape,
   with their ordinary He initialisation).

The paper trains the scalars (multipliers and biases) at a tenth of the learning rate; the optimizer
groups for that come from :func:`fixup_param_groups`.

He initialisation here uses ``std = sqrt(2 / fan_in)`` with ``fan_in = in_channels/groups * k*k``.
The official code uses the fan-*out* variant (``out_channels * k*k``); the two are the same for the
square convolutions that make up nearly every branch (``in == out``), and differ only in the first
conv of a block that widens the network.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FixupBasicBlock",
    "FixupBottleneck",
    "FixupResNet",
    "fixup_init",
    "fixup_param_groups",
    "fixup_resnet",
    "fixup_scale",
]


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), float(value)))


def fixup_scale(num_branches: int, layers_per_branch: int) -> float:
    """The factor ``L^(-1/(2m-2))`` that Fixup applies to He init inside each branch."""
    if num_branches < 1 or layers_per_branch < 2:
        raise ValueError("Fixup needs L >= 1 branches of m >= 2 weight layers")
    return float(num_branches) ** (-1.0 / (2 * layers_per_branch - 2))


class _PadShortcut(nn.Module):
    """Parameter-free shortcut at a change of shape (the CIFAR ResNet's "option A").

    Subsamples by ``stride`` and pads the new channels with zeros, as the official CIFAR Fixup code
    (``AvgPool2d(1, stride)`` then concatenation with zeros).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("a padding shortcut cannot reduce the number of channels")
        self.stride = stride
        self.extra = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class _FixupBlock(nn.Module):
    """Shared bookkeeping of the Fixup residual blocks."""

    #: Output channels = ``planes * expansion``.
    expansion: int = 1

    def branch_layers(self) -> list[nn.Conv2d]:
        """The weight layers of the residual branch, in order (the last one is zero-initialised)."""
        raise NotImplementedError

    def scalar_parameters(self) -> Iterator[nn.Parameter]:
        """The scalar multiplier and biases of this block."""
        for name, p in self.named_parameters(recurse=False):
            if name.startswith("bias") or name == "scale":
                yield p

    def _make_shortcut(
        self, in_planes: int, out_planes: int, stride: int, shortcut: str
    ) -> nn.Module | None:
        if stride == 1 and in_planes == out_planes:
            return None
        if shortcut == "pad":
            return _PadShortcut(in_planes, out_planes, stride)
        if shortcut == "conv":
            return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        raise ValueError(f"shortcut must be 'pad' or 'conv', got {shortcut!r}")

    def _identity(self, x: Tensor) -> Tensor:
        if self.shortcut is None:
            return x
        if isinstance(self.shortcut, nn.Conv2d):
            # As the official ImageNet code: the projection sees the first scalar bias too.
            return self.shortcut(x + self.bias1a)
        return self.shortcut(x)


class FixupBasicBlock(_FixupBlock):
    """Two 3x3 convs, no normalization: ``relu(shortcut(x) + scale * branch(x) + bias2b)``.

    ``branch``: ``+bias1a -> conv1 -> +bias1b -> relu -> +bias2a -> conv2 -> *scale -> +bias2b``.
    ``shortcut`` at a change of shape: ``"pad"`` (parameter-free, the CIFAR network) or ``"conv"``
    (1x1 projection, the ImageNet network). Call :func:`fixup_init` on the whole model once built.
    """

    expansion = 1
    #: Weight layers per residual branch (``m`` in the paper).
    num_branch_layers = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: Literal["pad", "conv"] = "pad",
    ) -> None:
        super().__init__()
        self.bias1a = _scalar(0.0)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bias1b = _scalar(0.0)
        self.bias2a = _scalar(0.0)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.scale = _scalar(1.0)
        self.bias2b = _scalar(0.0)
        self.shortcut = self._make_shortcut(in_planes, planes, stride, shortcut)

    def branch_layers(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def branch(self, x: Tensor) -> Tensor:
        """The residual branch alone (before adding the shortcut and the final relu)."""
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        return self.conv2(out + self.bias2a) * self.scale + self.bias2b

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self._identity(x))


class FixupBottleneck(_FixupBlock):
    """1x1 -> 3x3 -> 1x1 convs (``planes * 4`` out), no normalization, with Fixup's scalars.

    ``branch``: ``+bias1a -> conv1 -> +bias1b -> relu -> +bias2a -> conv2 -> +bias2b -> relu ->
    +bias3a -> conv3 -> *scale -> +bias3b``; shortcut ``"conv"`` (1x1 projection, default, as the
    ImageNet network) or ``"pad"``.
    """

    expansion = 4
    num_branch_layers = 3

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        shortcut: Literal["pad", "conv"] = "conv",
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.bias1a = _scalar(0.0)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bias1b = _scalar(0.0)
        self.bias2a = _scalar(0.0)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bias2b = _scalar(0.0)
        self.bias3a = _scalar(0.0)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.scale = _scalar(1.0)
        self.bias3b = _scalar(0.0)
        self.shortcut = self._make_shortcut(in_planes, out_planes, stride, shortcut)

    def branch_layers(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def branch(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        out = F.relu(self.conv2(out + self.bias2a) + self.bias2b)
        return self.conv3(out + self.bias3a) * self.scale + self.bias3b

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch(x) + self._identity(x))


def _he_normal_(weight: Tensor, factor: float = 1.0) -> None:
    fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / fan_in) * factor)


def _fixup_blocks(model: nn.Module) -> list[_FixupBlock]:
    return [m for m in model.modules() if isinstance(m, _FixupBlock)]


@torch.no_grad()
def fixup_init(model: nn.Module, classifier: nn.Linear | None = None) -> nn.Module:
    """Apply Fixup's initialisation to ``model`` in place and return it.

    ``model`` holds :class:`FixupBasicBlock` / :class:`FixupBottleneck` blocks (``L`` of them in
    total; all must have the same ``m``). Branch layers other than the last: He normal times
    ``L^(-1/(2m-2))``; last branch layer: zero; scalar multipliers 1, scalar biases 0; shortcut
    projections: plain He normal. ``classifier`` (default: the model's last ``nn.Linear``) gets zero
    weight and bias. Other convs and linears of the model (the stem) are left as they are.
    """
    blocks = _fixup_blocks(model)
    if not blocks:
        raise ValueError("fixup_init: the model has no FixupBasicBlock / FixupBottleneck")
    ms = {b.num_branch_layers for b in blocks}
    if len(ms) != 1:
        raise ValueError(f"fixup_init: blocks with different layers per branch {sorted(ms)}")
    factor = fixup_scale(len(blocks), ms.pop())
    for block in blocks:
        *inner, last = block.branch_layers()
        for layer in inner:
            _he_normal_(layer.weight, factor)
            if layer.bias is not None:
                layer.bias.zero_()
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()
        for name, p in block.named_parameters(recurse=False):
            p.fill_(1.0 if name == "scale" else 0.0)
        if isinstance(block.shortcut, nn.Conv2d):
            _he_normal_(block.shortcut.weight)
    if classifier is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        classifier = linears[-1] if linears else None
    if classifier is not None:
        classifier.weight.zero_()
        if classifier.bias is not None:
            classifier.bias.zero_()
    return model


def _is_scalar_name(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf == "scale" or leaf.startswith("bias")


def fixup_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    scalar_lr_factor: float = 0.1,
) -> list[dict]:
    """Optimizer parameter groups with Fixup's scalars at ``scalar_lr_factor * lr``.

    As the official training script: every parameter whose name ends in ``bias*`` or ``scale``
    (Fixup's scalar biases and multipliers, and the ordinary biases such as the classifier's) goes
    into the second group, at a tenth of the learning rate and without weight decay; everything else
    is in the first group at ``lr`` with ``weight_decay``. Pass the result to any
    ``torch.optim`` optimizer, e.g. ``SGD(fixup_param_groups(model, 0.1), momentum=0.9)``.
    """
    main, scalars = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (scalars if _is_scalar_name(name) else main).append(p)
    return [
        {"params": main, "lr": lr, "weight_decay": weight_decay},
        {"params": scalars, "lr": lr * scalar_lr_factor, "weight_decay": 0.0},
    ]


class FixupResNet(nn.Module):
    """The CIFAR-style ResNet of the Fixup paper: stem conv, 3 stages of blocks, pool, linear.

    ``stem``: 3x3 conv -> +bias1 -> relu; stages of widths ``widths`` (strides 1, 2, 2);
    global average pool -> +bias2 -> linear. No normalization anywhere.
    """

    def __init__(
        self,
        block: type[_FixupBlock],
        blocks_per_stage: Iterable[int],
        num_classes: int = 10,
        in_channels: int = 3,
        widths: Iterable[int] = (16, 32, 64),
        shortcut: Literal["pad", "conv"] | None = None,
    ) -> None:
        super().__init__()
        widths = list(widths)
        counts = list(blocks_per_stage)
        if len(widths) != len(counts):
            raise ValueError("one width per stage")
        kwargs = {} if shortcut is None else {"shortcut": shortcut}
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        _he_normal_(self.conv1.weight)
        self.bias1 = _scalar(0.0)
        layers: list[nn.Module] = []
        planes_in = widths[0]
        for i, (width, count) in enumerate(zip(widths, counts)):
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(planes_in, width, stride, **kwargs))
                planes_in = width * block.expansion
        self.layers = nn.Sequential(*layers)
        self.bias2 = _scalar(0.0)
        self.fc = nn.Linear(planes_in, num_classes)
        fixup_init(self, classifier=self.fc)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x) + self.bias1)
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1) + self.bias2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def fixup_resnet(
    depth: int,
    num_classes: int = 10,
    in_channels: int = 3,
    widths: Iterable[int] = (16, 32, 64),
    block: Literal["basic", "bottleneck"] = "basic",
    shortcut: Literal["pad", "conv"] | None = None,
) -> FixupResNet:
    """The Fixup CIFAR ResNet of ``depth`` layers, Fixup-initialised.

    ``depth = 6n + 2`` for basic blocks (``n`` blocks per stage, ``L = 3n`` branches of 2 convs,
    e.g. ResNet-110: ``n = 18``) or ``9n + 2`` for bottlenecks. ``in_channels=1`` and narrower
    ``widths`` suit small grey images such as the bundled digits.
    """
    per_block = 2 if block == "basic" else 3
    n, rem = divmod(depth - 2, 3 * per_block)
    if rem or n < 1:
        raise ValueError(f"depth must be {3 * per_block}n + 2 for {block} blocks, got {depth}")
    cls: type[_FixupBlock] = FixupBasicBlock if block == "basic" else FixupBottleneck
    return FixupResNet(cls, [n, n, n], num_classes, in_channels, widths, shortcut)
