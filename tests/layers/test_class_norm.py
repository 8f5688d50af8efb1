"""Class Normalization: class standardization, attribute normalization, logits, init."""

import math

import numpy as np
import pytest
import torch

import normlab as nl
from normlab.layers import normalize_attributes


def test_class_standardization_train_against_numpy():
    cs = nl.ClassStandardization(5)
    h = torch.randn(12, 5) * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0]) + 4.0
    out = cs(h).detach().numpy()
    a = h.numpy().astype(np.float64)
    expected = (a - a.mean(0)) / np.sqrt(a.var(0, ddof=1) + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(0, ddof=1), 1, atol=1e-3)


def test_class_standardization_running_stats_and_eval():
    cs = nl.ClassStandardization(3, momentum=0.1)
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(3)]
    rm, rv = np.zeros(3), np.ones(3)
    for b in batches:
        cs(b)
        a = b.numpy().astype(np.float64)
        rm = 0.9 * rm + 0.1 * a.mean(0)
        rv = 0.9 * rv + 0.1 * a.var(0, ddof=1)
    np.testing.assert_allclose(cs.running_mean.numpy(), rm, rtol=1e-5)
    np.testing.assert_allclose(cs.running_var.numpy(), rv, rtol=1e-5)
    cs.eval()
    x = torch.randn(4, 3)
    out = cs(x).numpy()
    np.testing.assert_allclose(out, (x.numpy() - rm) / np.sqrt(rv + 1e-5), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cs.running_mean.numpy(), rm, rtol=1e-5)  # eval does not update
    assert [n for n, _ in cs.named_parameters()] == []  # statistics are buffers, not parameters


def test_reference_denominator_variant():
    cs = nl.ClassStandardization(2, denominator="var")
    h = torch.randn(6, 2) * 3
    a = h.numpy().astype(np.float64)
    expected = (a - a.mean(0)) / (a.var(0, ddof=1) + 1e-5)
    np.testing.assert_allclose(cs(h).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_attribute_normalization():
    a = torch.rand(7, 30) * torch.logspace(-1, 1, 7)[:, None]
    out = normalize_attributes(a)
    np.testing.assert_allclose(out.norm(dim=1).numpy(), math.sqrt(30), rtol=1e-5)
    cos = torch.nn.functional.cosine_similarity(out, a, dim=1)
    np.testing.assert_allclose(cos.numpy(), 1.0, rtol=1e-5)


def test_logits_are_scaled_cosines():
    torch.manual_seed(0)
    model = nl.ClassNormMLP(attr_dim=10, feat_dim=16, hidden_dim=32)
    feats, attrs = torch.rand(5, 16), torch.rand(8, 10)
    logits = model(feats, attrs)
    protos = model.prototypes(attrs).detach().numpy().astype(np.float64)
    f = feats.numpy().astype(np.float64)
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
        protos / np.linalg.norm(protos, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(logits.detach().numpy(), 5.0 * cos, rtol=1e-4, atol=1e-5)
    assert logits.abs().max() <= 5.0 + 1e-5


def test_prototype_path_uses_normalized_attributes_and_class_standardization():
    torch.manual_seed(1)
    model = nl.ClassNormMLP(attr_dim=6, feat_dim=4, hidden_dim=8, num_hidden=2)
    kinds = [type(m).__name__ for m in model.model]
    assert kinds.count("ClassStandardization") == 4
    attrs = torch.rand(5, 6)
    # Scaling a class's attributes does not change anything (attribute normalization).
    scaled = attrs * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0])[:, None]
    torch.testing.assert_close(model.prototypes(attrs), model.prototypes(scaled))


def test_variance_preserving_init_of_last_layer():
    torch.manual_seed(2)
    model = nl.ClassNormMLP(attr_dim=10, feat_dim=128, hidden_dim=256)
    w = model.last.weight
    expected_var = 1.0 / (256 * 128)
    assert w.var().item() == pytest.approx(expected_var, rel=0.03)
    assert w.abs().max().item() <= math.sqrt(3 * expected_var) + 1e-9
    default = nl.ClassNormMLP(attr_dim=10, feat_dim=128, hidden_dim=256, proper_init=False)
    assert default.last.weight.var().item() == pytest.approx(1 / (3 * 256), rel=0.05)


def test_plain_configuration_is_a_dot_product_mlp():
    model = nl.ClassNormMLP(
        attr_dim=6,
        feat_dim=4,
        hidden_dim=8,
        scale=None,
        class_norm=False,
        attr_norm=False,
        proper_init=False,
    )
    assert not any(isinstance(m, nl.ClassStandardization) for m in model.modules())
    feats, attrs = torch.rand(3, 4), torch.rand(5, 6)
    torch.testing.assert_close(model(feats, attrs), feats @ model.model(attrs).t())
