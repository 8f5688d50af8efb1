"""The architectures: output shapes for every resolution, and clear errors."""

from __future__ import annotations

import pytest
import torch

from normlab.gan.models import (
    MLPDiscriminator,
    MLPGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    build_models,
)


def test_mlp_shapes():
    G, D = MLPGenerator(16, 2, 32), MLPDiscriminator(2, 32)
    x = G(torch.randn(5, 16))
    assert x.shape == (5, 2) and D(x).shape == (5,)
    G, D = build_models("mlp", (64,), 8, 16)
    x = G(torch.randn(3, 8))
    assert x.shape == (3, 64) and x.abs().max() <= 1 and D(x).shape == (3,)


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
@pytest.mark.parametrize("res,ch", [(8, 1), (16, 3)])
def test_image_archs(arch, res, ch):
    G, D = build_models(arch, (ch, res, res), 8, 8)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, ch, res, res) and x.abs().max() <= 1
    assert D(x).shape == (2,)


def test_resnet_defaults_are_sngan_cifar():
    G, D = ResNetGenerator(), ResNetDiscriminator()
    assert G.project.out_features == 256 * 4 * 4 and D.head.in_features == 128
    assert G(torch.randn(2, 128)).shape == (2, 3, 32, 32)


def test_build_models_errors():
    with pytest.raises(ValueError, match="for 2-D data use arch 'mlp'"):
        build_models("cnn", (2,), 8, 8)
    with pytest.raises(ValueError, match="multiple of 8, got 12x12.*resolution"):
        build_models("cnn", (3, 12, 12), 8, 8)
    with pytest.raises(ValueError, match="unknown arch 'vit'"):
        build_models("vit", (2,), 8, 8)
    with pytest.raises(ValueError, match="needs flat samples"):
        build_models("mlp", (1, 8, 8), 8, 8)
