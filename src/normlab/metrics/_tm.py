"""Bridge to torchmetrics' FID class on precomputed features (imported lazily: slow)."""

from __future__ import annotations

from torch import Tensor, nn


class PrecomputedFeatures(nn.Module):
    """The identity, posing as torchmetrics' feature extractor: ``update`` receives features.

    torchmetrics' FID/KID accept a custom ``nn.Module`` as ``feature``; with a ``num_features``
    attribute they take its dimension from it instead of pushing a dummy image through it.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_metric(num_features: int):
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=PrecomputedFeatures(num_features), normalize=False)
