"""The FID Inception-v3, through its real loading and forward path, on random weights."""

import pytest
import torch

from normlab.metrics import (
    INCEPTION_WEIGHTS_FILE,
    InceptionV3Features,
    extract_features,
    save_random_inception_weights,
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_inception_weights(
        tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    )


@pytest.fixture(scope="module")
def state(weights):
    return torch.load(weights, weights_only=True)


def test_file_format(state):
    assert state["fc.weight"].shape == (1008, 2048) and state["fc.bias"].shape == (1008,)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in state
    assert not any(k.startswith("AuxLogits") for k in state)
    # torchvision's Inception3 has 27,161,264 parameters; less the aux head (3,326,696) and the
    # 1000-way fc (2,049,000) that leaves the 21,785,568 of the feature extractor.
    params = sum(
        v.numel()
        for k, v in state.items()
        if not k.startswith("fc.")
        and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert params == 27_161_264 - 3_326_696 - 2_049_000
    assert sum(p.numel() for p in InceptionV3Features().parameters()) == params


def test_loads_and_extracts_pool_features(weights, state):
    net = InceptionV3Features.from_weights(weights)
    assert torch.equal(
        net.Mixed_6e.branch7x7dbl_3.bn.running_var, state["Mixed_6e.branch7x7dbl_3.bn.running_var"]
    )
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = extract_features(net, images, batch_size=2)
    assert feats.shape == (2, 2048)
    assert torch.isfinite(feats).all() and (feats >= 0).all() and feats.std() > 0
    assert not torch.allclose(feats[0], feats[1])  # depends on the input
    # one channel is the grey image repeated
    grey = net(images[:1, :1])
    assert torch.allclose(grey, net(images[:1, :1].expand(-1, 3, -1, -1)))
    net.train()
    assert not net.training  # a fixed extractor: BatchNorm stays on its stored statistics


def test_missing_file_names_path_and_expected_file(tmp_path):
    path = tmp_path / "nowhere" / "inception.pth"
    with pytest.raises(FileNotFoundError, match=INCEPTION_WEIGHTS_FILE) as err:
        InceptionV3Features.from_weights(path)
    assert str(path) in str(err.value)


def test_wrong_files_are_clear_errors(tmp_path, state):
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(ValueError, match="could not be read") as err:
        InceptionV3Features.from_weights(junk)
    assert str(junk) in str(err.value) and INCEPTION_WEIGHTS_FILE in str(err.value)

    other = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match=r"missing keys: Conv2d_1a_3x3.*unexpected keys: layer"):
        InceptionV3Features.from_weights(other)

    bad = dict(state)
    bad["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 191, 1, 1)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    bad_path = tmp_path / "bad.pth"
    torch.save(bad, bad_path)
    with pytest.raises(
        ValueError, match=r"wrong shapes: Mixed_5b.branch1x1.conv.weight .*fc.weight"
    ):
        InceptionV3Features.from_weights(bad_path)


def test_optional_keys(tmp_path, state):
    lean = {
        k: v
        for k, v in state.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    path = tmp_path / "lean.pth"
    torch.save(lean, path)
    net = InceptionV3Features.from_weights(path)
    assert torch.equal(net.Conv2d_1a_3x3.conv.weight, state["Conv2d_1a_3x3.conv.weight"])
