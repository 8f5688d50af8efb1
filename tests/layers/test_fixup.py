"""Fixup: the initialisation rules, checked against the formula computed independently."""

import math

import pytest
import torch
from torch import nn

import normlab as nl
from normlab.layers import fixup_param_groups


def _blocks(model):
    return [m for m in model.modules() if isinstance(m, (nl.FixupBasicBlock, nl.FixupBottleneck))]


@pytest.mark.parametrize("depth", [20, 56])
def test_basic_block_init_statistics(depth):
    model = nl.fixup_resnet(depth, num_classes=10, widths=(16, 32, 64))
    blocks = _blocks(model)
    n_branches = 3 * ((depth - 2) // 6)
    assert len(blocks) == n_branches
    # m = 2 layers per branch: He std times L^(-1/(2m-2)) = L^(-1/2).
    for block in blocks:
        w = block.conv1.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        expected = math.sqrt(2.0 / fan_in) / math.sqrt(n_branches)
        assert w.std().item() == pytest.approx(expected, rel=0.1)
        assert abs(w.mean().item()) < 0.1 * expected
        assert torch.count_nonzero(block.conv2.weight) == 0  # last layer of the branch
        assert block.scale.item() == 1.0
        for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
            assert getattr(block, name).item() == 0.0
    assert torch.count_nonzero(model.fc.weight) == 0
    assert torch.count_nonzero(model.fc.bias) == 0


def test_pooled_std_matches_formula_tightly():
    # Pooling every conv1 of the same shape gives a precise estimate of the std.
    depth = 110
    model = nl.fixup_resnet(depth, widths=(16, 32, 64))
    n_branches = 54
    ws = [b.conv1.weight.flatten() for b in _blocks(model) if b.conv1.weight.shape[1] == 64]
    pooled = torch.cat(ws)
    expected = math.sqrt(2.0 / (64 * 9)) * n_branches ** (-0.5)
    assert pooled.std().item() == pytest.approx(expected, rel=0.03)


def test_bottleneck_scaling_uses_m_equal_3():
    model = nl.fixup_resnet(29, num_classes=5, widths=(8, 16, 32), block="bottleneck")
    blocks = _blocks(model)
    n_branches = len(blocks)
    assert n_branches == 9
    factor = n_branches ** (-1.0 / 4.0)  # L^(-1/(2*3-2))
    for block in blocks:
        for conv in (block.conv1, block.conv2):
            w = conv.weight
            fan_in = w.shape[1] * w.shape[2] * w.shape[3]
            if w.numel() >= 512:
                assert w.std().item() == pytest.approx(math.sqrt(2 / fan_in) * factor, rel=0.15)
        assert torch.count_nonzero(block.conv3.weight) == 0
        if isinstance(block.shortcut, nn.Conv2d):  # unscaled He init on the projection
            w = block.shortcut.weight
            assert w.std().item() == pytest.approx(math.sqrt(2 / w.shape[1]), rel=0.2)


def test_fixup_scale_formula():
    assert nl.layers.fixup_scale(16, 2) == pytest.approx(16**-0.5)
    assert nl.layers.fixup_scale(81, 3) == pytest.approx(81**-0.25)
    with pytest.raises(ValueError):
        nl.layers.fixup_scale(4, 1)


@pytest.mark.parametrize("shortcut", ["pad", "conv"])
@pytest.mark.parametrize("stride,in_planes,planes", [(1, 8, 8), (2, 8, 16)])
def test_block_output_at_init_equals_shortcut_path(shortcut, stride, in_planes, planes):
    block = nl.FixupBasicBlock(in_planes, planes, stride=stride, shortcut=shortcut)
    nl.fixup_init(nn.Sequential(block))
    x = torch.randn(3, in_planes, 8, 8)
    assert torch.count_nonzero(block.branch(x)) == 0
    if stride == 1 and in_planes == planes:
        expected = torch.relu(x)
    elif shortcut == "pad":
        sub = x[:, :, ::stride, ::stride]
        expected = torch.relu(torch.cat([sub, torch.zeros_like(sub)], dim=1))
    else:
        expected = torch.relu(block.shortcut(x))
    torch.testing.assert_close(block(x), expected)


def test_network_output_at_init_is_zero_and_features_are_the_shortcut_path():
    model = nl.fixup_resnet(20, num_classes=7, in_channels=1, widths=(4, 8, 16))
    x = torch.randn(5, 1, 8, 8)
    assert torch.count_nonzero(model(x)) == 0
    # With every branch zero, the blocks only pass (relu of) the shortcut on.
    h = torch.relu(model.conv1(x))
    for block in model.layers:
        h = torch.relu(block._identity(h))
    torch.testing.assert_close(model.layers(torch.relu(model.conv1(x))), h)


def test_param_groups_scalars_at_a_tenth():
    model = nl.fixup_resnet(20, widths=(4, 8, 16))
    groups = fixup_param_groups(model, lr=0.2, weight_decay=1e-4)
    assert groups[0]["lr"] == 0.2 and groups[1]["lr"] == pytest.approx(0.02)
    assert groups[1]["weight_decay"] == 0.0
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    scalar_ids = {id(p) for p in groups[1]["params"]}
    for block in _blocks(model):
        assert {id(p) for p in block.scalar_parameters()} <= scalar_ids
        assert id(block.conv1.weight) not in scalar_ids
    torch.optim.SGD(groups, lr=0.2, momentum=0.9)  # accepted by an optimizer


def test_fixup_init_validation():
    with pytest.raises(ValueError):
        nl.fixup_init(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError):
        nl.fixup_resnet(21)


def test_trains_one_step_without_nan():
    model = nl.fixup_resnet(56, widths=(4, 8, 16), in_channels=1)
    opt = torch.optim.SGD(fixup_param_groups(model, 0.1), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert torch.count_nonzero(model.fc.weight) > 0
