"""GAN architectures of the papers normlab reproduces.

The "standard CNN" of SNGAN (Miyato et al. 2018, table 3) as the BSN code uses it:

* D: conv3x3 s1 (w), conv4x4 s2 (w), conv3x3 s1 (2w), conv4x4 s2 (2w), conv3x3 s1 (4w),
  conv4x4 s2 (4w), conv3x3 s1 (8w), each followed by LeakyReLU(0.1), then a linear
  layer to one logit. ``w = 64`` in the paper.
* G: z -> linear -> (8w, r/8, r/8), BN, ReLU; three deconv4x4 s2 (4w, 2w, w) with BN
  and ReLU; conv3x3 s1 to the image channels; tanh.

``resolution`` must be a multiple of 8 (32 for CIFAR-10, 48 for STL-10, 64 for CelebA;
8 for the bundled 8x8 digits).
"""

from __future__ import annotations

from torch import Tensor, nn

#: LeakyReLU slope of the SNGAN/BSN discriminators.
LEAKY_SLOPE = 0.1


def _check_resolution(resolution: int) -> int:
    if not isinstance(resolution, int) or resolution < 8 or resolution % 8:
        raise ValueError(f"resolution must be a multiple of 8 (>= 8), got {resolution!r}")
    return resolution // 8


class StandardCNNDiscriminator(nn.Module):
    """SNGAN's standard CNN discriminator: ``(N, C, r, r) -> (N,)`` logits."""

    def __init__(self, resolution: int = 32, channels: int = 3, width: int = 64) -> None:
        super().__init__()
        bottom = _check_resolution(resolution)
        w = width
        # (in, out, kernel, stride) of each conv, in order.
        spec = [
            (channels, w, 3, 1),
            (w, w, 4, 2),
            (w, 2 * w, 3, 1),
            (2 * w, 2 * w, 4, 2),
            (2 * w, 4 * w, 3, 1),
            (4 * w, 4 * w, 4, 2),
            (4 * w, 8 * w, 3, 1),
        ]
        layers: list[nn.Module] = []
        for c_in, c_out, k, s in spec:
            layers += [nn.Conv2d(c_in, c_out, k, s, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(8 * w * bottom * bottom, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1)).squeeze(1)


class StandardCNNGenerator(nn.Module):
    """SNGAN's standard CNN generator: ``(N, z_dim) -> (N, C, r, r)`` in ``[-1, 1]``."""

    def __init__(
        self, z_dim: int = 128, resolution: int = 32, channels: int = 3, width: int = 64
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.bottom = _check_resolution(resolution)
        w = width
        self.project = nn.Linear(z_dim, 8 * w * self.bottom * self.bottom)
        self.body = nn.Sequential(
            nn.BatchNorm2d(8 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(8 * w, 4 * w, 4, 2, 1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, channels, 3, 1, 1),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], -1, self.bottom, self.bottom)
        return self.body(h)


class MLPGenerator(nn.Module):
    """``(N, z_dim) -> (N, out_dim)``: ``depth`` hidden ReLU layers of ``width`` units.

    The output is linear for 2-D mixtures (``out_activation=None``) and ``tanh`` for
    flattened images. ``batchnorm`` puts BatchNorm before each ReLU (PacGAN's generator:
    4 x 400 units).
    """

    def __init__(
        self,
        z_dim: int = 16,
        out_dim: int = 2,
        width: int = 128,
        depth: int = 3,
        out_activation: str | None = None,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        if out_activation not in (None, "tanh"):
            raise ValueError(f"out_activation must be None or 'tanh', got {out_activation!r}")
        self.z_dim = z_dim
        layers: list[nn.Module] = []
        d = z_dim
        for _ in range(depth):
            # PacGAN's G: Linear -> BatchNorm -> ReLU (the bias is redundant before BatchNorm).
            if batchnorm:
                layers += [nn.Linear(d, width, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            else:
                layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, out_dim))
        if out_activation == "tanh":
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MLPDiscriminator(nn.Module):
    """``(N, in_dim) -> (N,)`` logits: ``depth`` hidden LeakyReLU(0.1) layers of ``width`` units."""

    def __init__(self, in_dim: int = 2, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.LeakyReLU(LEAKY_SLOPE)]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


class Maxout(nn.Module):
    """A maxout layer (Goodfellow et al. 2013): ``h_j = max_k (W x + b)_{j, k}``.

    One ``nn.Linear(in_dim, out_dim * pieces)`` (so weight normalizations act on it as on any
    linear layer) whose outputs are grouped in ``out_dim`` consecutive blocks of ``pieces``;
    each unit is the largest of its block.

    Example::

        >>> layer = Maxout(2, 200, pieces=5)     # (N, 2) -> (N, 200)
    """

    def __init__(self, in_dim: int, out_dim: int, pieces: int) -> None:
        super().__init__()
        if not isinstance(pieces, int) or pieces < 2:
            raise ValueError(f"a maxout layer needs at least 2 pieces, got {pieces!r}")
        self.out_dim, self.pieces = out_dim, pieces
        self.linear = nn.Linear(in_dim, out_dim * pieces)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear(x)
        return h.view(*h.shape[:-1], self.out_dim, self.pieces).amax(dim=-1)


class MaxoutMLPDiscriminator(nn.Module):
    """``(N, in_dim) -> (N,)`` logits: ``depth`` maxout layers of ``width`` units, then linear.

    PacGAN's discriminator for the 2-D mixtures: 3 layers, 200 units, 5 pieces each.
    """

    def __init__(self, in_dim: int = 2, width: int = 200, depth: int = 3, pieces: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(depth):
            layers.append(Maxout(d, width, pieces))
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)


class _GenBlock(nn.Module):
    """SNGAN ResNet generator block: BN, ReLU, up x2, conv3x3, BN, ReLU, conv3x3; 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.interpolate(nn.functional.relu(self.bn1(x)), scale_factor=2.0)
        h = self.conv2(nn.functional.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(nn.functional.interpolate(x, scale_factor=2.0))


class _DisBlock(nn.Module):
    """SNGAN ResNet discriminator block (ReLU, conv3x3, ReLU, conv3x3, [avgpool]; 1x1 shortcut).

    ``first`` is SNGAN's "optimized" first block: no ReLU before the first conv, and the
    shortcut pools before its 1x1 conv.
    """

    def __init__(self, c_in: int, c_out: int, downsample: bool, first: bool = False) -> None:
        super().__init__()
        self.first = first
        self.downsample = downsample
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.learn_shortcut = c_in != c_out or downsample
        if self.learn_shortcut:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, 1, 0)

    def forward(self, x: Tensor) -> Tensor:
        relu, pool = nn.functional.relu, nn.functional.avg_pool2d
        h = x if self.first else relu(x)
        h = self.conv2(relu(self.conv1(h)))
        if self.downsample:
            h = pool(h, 2)
        s = x
        if self.learn_shortcut:
            if self.first:
                s = self.shortcut(pool(s, 2) if self.downsample else s)
            else:
                s = self.shortcut(s)
                s = pool(s, 2) if self.downsample else s
        return h + s


class ResNetGenerator(nn.Module):
    """SNGAN's ResNet generator (CIFAR-10 layout): ``(N, z_dim) -> (N, C, r, r)`` in ``[-1, 1]``.

    z -> linear -> (width, r/8, r/8); three up-sampling residual blocks; BN, ReLU,
    conv3x3 to the image channels; tanh. ``width = 256`` in the paper.
    """

    def __init__(
        self, z_dim: int = 128, resolution: int = 32, channels: int = 3, width: int = 256
    ) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.bottom = _check_resolution(resolution)
        self.project = nn.Linear(z_dim, width * self.bottom * self.bottom)
        self.blocks = nn.Sequential(*[_GenBlock(width, width) for _ in range(3)])
        self.out = nn.Sequential(
            nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh()
        )

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(z.shape[0], -1, self.bottom, self.bottom)
        return self.out(self.blocks(h))


class ResNetDiscriminator(nn.Module):
    """SNGAN's ResNet discriminator (CIFAR-10 layout): ``(N, C, r, r) -> (N,)`` logits.

    Optimized block (down), block (down), block, block, ReLU, global sum pooling, linear.
    ``width = 128`` in the paper.
    """

    def __init__(self, resolution: int = 32, channels: int = 3, width: int = 128) -> None:
        super().__init__()
        _check_resolution(resolution)
        self.blocks = nn.Sequential(
            _DisBlock(channels, width, downsample=True, first=True),
            _DisBlock(width, width, downsample=True),
            _DisBlock(width, width, downsample=False),
            _DisBlock(width, width, downsample=False),
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.head(h).squeeze(1)


#: The architectures ``build_models`` knows.
ARCHS: tuple[str, ...] = ("mlp", "cnn", "resnet")
#: Maxout layers of the MLP discriminator when ``maxout`` is set (PacGAN's 3).
MAXOUT_DEPTH = 3


def _packed(D: nn.Module, pack: int) -> nn.Module:
    """``D`` itself (pack 1) or wrapped to judge packs of ``pack`` samples."""
    from normlab.gan.pack import PackedDiscriminator

    return D if pack == 1 else PackedDiscriminator(D, pack)


def build_models(
    arch: str,
    sample_shape: tuple[int, ...],
    z_dim: int,
    width: int,
    *,
    tanh: bool = True,
    depth: int = 3,
    d_width: int | None = None,
    maxout: int = 0,
    g_batchnorm: bool = False,
    pack: int = 1,
) -> tuple[nn.Module, nn.Module]:
    """``(G, D)`` of ``arch`` for samples of ``sample_shape``.

    ``mlp`` takes flat samples ``(d,)`` (``tanh`` output when ``tanh``; linear for
    2-D mixtures; ``depth`` hidden layers); ``cnn`` and ``resnet`` take images ``(C, r, r)``
    with ``r`` a multiple
    of 8. ``width`` is the MLP's hidden units, the standard CNN's base channels, and the
    ResNet's discriminator channels (its generator gets twice as many, as in SNGAN).
    ``d_width`` (default ``width``) replaces ``width`` for D alone: a smaller D than G (any
    arch).

    MLP options (PacGAN's 2-D setup is ``width=400, depth=4, g_batchnorm=True, d_width=200,
    maxout=5``; ``configs/pacgan_ring8.yaml``): ``maxout`` > 1 makes D a
    ``MaxoutMLPDiscriminator`` of ``MAXOUT_DEPTH`` (3) maxout layers with that many pieces
    (0: ``depth`` LeakyReLU layers); ``g_batchnorm`` puts BatchNorm in G's hidden layers.
    ``pack`` > 1 (any arch) wraps D in a ``PackedDiscriminator`` that judges ``pack`` samples
    concatenated (PacGAN).
    """
    dw = width if d_width is None else d_width
    if not isinstance(pack, int) or pack < 1:
        raise ValueError(f"pack must be a positive integer, got {pack!r}")
    if maxout and (not isinstance(maxout, int) or maxout < 2):
        raise ValueError(f"maxout must be 0 (no maxout) or at least 2 pieces, got {maxout!r}")
    if arch != "mlp" and (maxout or g_batchnorm):
        raise ValueError(
            f"maxout and g_batchnorm are options of the mlp architecture, not {arch!r}"
        )
    if arch == "mlp":
        if len(sample_shape) != 1:
            raise ValueError(f"the mlp architecture needs flat samples, got shape {sample_shape}")
        d = sample_shape[0]
        g = MLPGenerator(
            z_dim, d, width, depth, out_activation="tanh" if tanh else None, batchnorm=g_batchnorm
        )
        if maxout:
            disc: nn.Module = MaxoutMLPDiscriminator(d * pack, dw, MAXOUT_DEPTH, maxout)
        else:
            disc = MLPDiscriminator(d * pack, dw, depth)
        return g, _packed(disc, pack)
    if arch in ("cnn", "resnet"):
        if len(sample_shape) != 3 or sample_shape[1] != sample_shape[2]:
            raise ValueError(
                f"the {arch} architecture needs square images (C, r, r), got sample shape "
                f"{sample_shape}"
                + ("; for 2-D data use arch 'mlp'" if sample_shape == (2,) else "")
            )
        c, r, _ = sample_shape
        if r < 8 or r % 8:
            raise ValueError(
                f"the {arch} architecture needs an image size that is a multiple of 8, "
                f"got {r}x{r}; "
                f"set 'resolution' (e.g. --set resolution=32) to resize the images"
            )
        if arch == "cnn":
            return (
                StandardCNNGenerator(z_dim, r, c, width),
                _packed(StandardCNNDiscriminator(r, c * pack, dw), pack),
            )
        return (
            ResNetGenerator(z_dim, r, c, 2 * width),
            _packed(ResNetDiscriminator(r, c * pack, dw), pack),
        )
    raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(ARCHS)}")
