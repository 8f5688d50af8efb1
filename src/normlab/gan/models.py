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
