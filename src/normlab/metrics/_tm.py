"""Bridges to torchmetrics' FID/KID classes on precomputed features (imported lazily: slow)."""

from __future__ import annotations

import warnings

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


def kid_metric(num_features: int, **kwargs):
    from torchmetrics.image.kid import KernelInceptionDistance

    with warnings.catch_warnings():
        # "will save all extracted features in buffer": expected, we hand it all of them at once.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        return KernelInceptionDistance(
            feature=PrecomputedFeatures(num_features), normalize=False, **kwargs
        )
