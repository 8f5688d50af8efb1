"""The standard FID network: Inception-v3 as in TensorFlow's FID graph, in pure PyTorch.

The same architecture as pytorch-fid's ``fid_inception_v3`` (torchvision's ``Inception3`` with the
FID patches): average pools in the A, C and first E blocks exclude the zero padding
(``count_include_pad=False``, as TensorFlow does) and the last E block pools by max instead of by
average. Output: the 2048-d final average-pool features ("pool3"). Input: images ``(N, C, H, W)``
in ``[-1, 1]``, resized to 299x299 bilinearly (``align_corners=False``, as pytorch-fid), one
channel repeated to three. (pytorch-fid takes ``[0, 1]`` and maps ``x -> 2x - 1`` after resizing;
bilinear resizing commutes with that affine map, so the two agree.)

Weights: the state-dict file of pytorch-fid, ``pt_inception-2015-12-05-6726825d.pth`` (the TF
graph's weights ported to torchvision's key names; ``torch.load(weights_only=True)``). Its 1008-way
``fc`` is not needed for features and is ignored; ``num_batches_tracked`` entries are optional.
Anything else missing, unexpected or of the wrong shape is an error naming the file.
``save_random_inception_weights`` writes random weights in exactly that format (for tests).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The file ``InceptionV3Features.from_weights`` expects, and where pytorch-fid publishes it.
INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    + INCEPTION_WEIGHTS_FILE
)
#: Keys of the weights file that the feature extractor does not use: the 1008-class classifier.
_CLASSIFIER_SHAPES = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


class _Conv(nn.Module):
    """torchvision's ``BasicConv2d``: conv without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that, like TensorFlow, does not count the zero padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1 = _Conv(cin, 48, 1)
        self.branch5x5_2 = _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([self.branch1x1(x), b5, b3, bp], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, 1)
        self.branch3x3dbl_2 = _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([b3, bd, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1 = _Conv(cin, c7, 1)
        self.branch7x7_2 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, 1)
        self.branch7x7dbl_2 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([self.branch1x1(x), b7, bd, bp], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, 1)
        self.branch3x3_2 = _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for layer in (
            self.branch7x7x3_1,
            self.branch7x7x3_2,
            self.branch7x7x3_3,
            self.branch7x7x3_4,
        ):
            b7 = layer(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class _BlockE(nn.Module):
    """``max_pool``: the FID graph's last block (Mixed_7c) pools by max, the one before by mean."""

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, 1)
        self.branch3x3dbl_2 = _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = (
            F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            if self.max_pool
            else _avg_pool_tf(x)
        )
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class InceptionV3Features(nn.Module):
    """FID Inception-v3: images ``(N, 1 or 3, H, W)`` in ``[-1, 1]`` -> pool3 features (N, 2048).

    Build it with ``from_weights(path)``; a bare ``InceptionV3Features()`` has random weights.
    Always in eval mode (BatchNorm uses the stored statistics); parameters do not require grad.
    """

    num_features = 2048
    input_size = 299

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, 3)
        self.Mixed_5b = _BlockA(192, pool_features=32)
        self.Mixed_5c = _BlockA(256, pool_features=64)
        self.Mixed_5d = _BlockA(288, pool_features=64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b = _BlockC(768, c7=128)
        self.Mixed_6c = _BlockC(768, c7=160)
        self.Mixed_6d = _BlockC(768, c7=160)
        self.Mixed_6e = _BlockC(768, c7=192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b = _BlockE(1280, max_pool=False)
        self.Mixed_7c = _BlockE(2048, max_pool=True)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionV3Features:
        return super().train(False)  # a fixed feature extractor: BatchNorm never in batch mode

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected images (N, 1 or 3, H, W) in [-1, 1], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(
            x.float(), size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
        )
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
            self.Mixed_6d,
            self.Mixed_6e,
            self.Mixed_7a,
            self.Mixed_7b,
            self.Mixed_7c,
        ):
            x = block(x)
        return x.mean(dim=(2, 3))

    @classmethod
    def from_weights(cls, path: str | Path) -> InceptionV3Features:
        """The network with pytorch-fid's weights file ``path`` loaded (CPU; ``.to()`` it)."""
        path = Path(path)
        expected = (
            f"expected pytorch-fid's FID Inception-v3 weights, {INCEPTION_WEIGHTS_FILE} "
            f"(download: {INCEPTION_WEIGHTS_URL})"
        )
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights not found at {path}: {expected}")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise ValueError(
                f"{path} could not be read as a PyTorch state dict ({e}): {expected}"
            ) from e
        if not isinstance(state, dict) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise ValueError(f"{path} does not hold a state dict of tensors: {expected}")
        net = cls()
        own = net.state_dict()
        problems = []
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in own and k not in _CLASSIFIER_SHAPES]
        wanted = {k: tuple(v.shape) for k, v in own.items()} | _CLASSIFIER_SHAPES
        shapes = [
            f"{k} {tuple(v.shape)} (want {wanted[k]})"
            for k, v in state.items()
            if k in wanted and tuple(v.shape) != wanted[k]
        ]
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", shapes),
        ):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 5 else ""
                problems.append(f"{what}: {', '.join(keys[:5])}{more}")
        if problems:
            raise ValueError(
                f"{path} is not the FID Inception-v3 weights file ({'; '.join(problems)}): "
                f"{expected}"
            )
        net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        return net


def save_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write random weights in the format of ``pt_inception-2015-12-05-6726825d.pth`` to ``path``.

    The same keys, shapes and dtypes as that file (torchvision ``Inception3`` names, the FID blocks,
    ``fc`` with 1008 classes, BatchNorm statistics), drawn so that activations keep a sensible
    scale through the network (He-normal convs, BatchNorm weights and statistics near 1 and 0).
    For tests of the real loading and forward code path without the 100 MB download.
    """
    gen = torch.Generator().manual_seed(seed)
    net = InceptionV3Features()
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            value = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith(("bn.weight", "bn.running_var")):
            value = 0.75 + 0.5 * torch.rand(value.shape, generator=gen)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            value = 0.1 * torch.randn(value.shape, generator=gen)
        state[key] = value.clone()
    state["fc.weight"] = 0.01 * torch.randn(_CLASSIFIER_SHAPES["fc.weight"], generator=gen)
    state["fc.bias"] = torch.zeros(_CLASSIFIER_SHAPES["fc.bias"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path
