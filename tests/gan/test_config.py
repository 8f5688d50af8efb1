"""TrainConfig: defaults, derived values, files, overrides and clear errors for bad input."""

from __future__ import annotations

import dataclasses

import pytest

import normlab as nl
from normlab.gan.config import TrainConfig


def test_every_field_has_a_default_and_paper_adam():
    cfg = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        assert f.default is not dataclasses.MISSING, f.name
    assert (cfg.lr_d, cfg.lr_g, cfg.beta1, cfg.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    assert (
        cfg.loss == "hinge" and cfg.method == "sn" and cfg.data == "ring8" and cfg.device == "cpu"
    )


def test_resolved_derives_arch_methods_and_sizes():
    r = TrainConfig().resolved()
    assert (r.arch, r.d_method, r.g_method, r.eval_samples, r.batch_size) == (
        "mlp",
        "sn",
        "none",
        2500,
        256,
    )
    r = TrainConfig(data="digits", method="bssn").resolved()
    assert (r.arch, r.d_method, r.g_method, r.scale, r.z_dim) == (
        "cnn",
        "bssn",
        "none",
        nl.DEFAULT_SCALE,
        128,
    )
    for m in ("eqlr", "wn"):
        r = TrainConfig(method=m).resolved()
        assert (r.d_method, r.g_method, r.scale) == (m, m, None)
    r = TrainConfig(method="wn", g_method="none").resolved()
    assert (r.d_method, r.g_method) == ("wn", "none")
    assert TrainConfig(method="ssn", scale=2.0).resolved().scale == 2.0


def test_from_file_and_round_trip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: digits\nmethod: bssn\nscale: 1.5\nsteps: 10\nlr_d: 1e-4\n")
    cfg = TrainConfig.from_file(p)
    assert (cfg.data, cfg.method, cfg.scale, cfg.steps, cfg.lr_d) == (
        "digits",
        "bssn",
        1.5,
        10,
        1e-4,
    )
    p2 = tmp_path / "c2.yaml"
    p2.write_text(cfg.to_yaml())
    assert TrainConfig.from_file(p2) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_keys_and_wrong_types_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stpes: 10\n")
    with pytest.raises(
        ValueError, match=r"unknown config file .* key 'stpes'; valid keys: data, .*steps"
    ):
        TrainConfig.from_file(p)
    p.write_text("steps: many\n")
    with pytest.raises(TypeError, match="steps must be an integer, got 'many'"):
        TrainConfig.from_file(p)
    p.write_text("- a list\n")
    with pytest.raises(TypeError, match="must be a mapping"):
        TrainConfig.from_file(p)
    p.write_text("steps: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.from_file(p)
    with pytest.raises(FileNotFoundError):
        TrainConfig.from_file(tmp_path / "none.yaml")
    with pytest.raises(ValueError, match="unknown override key 'lr'"):
        TrainConfig().replace(lr=1.0)
    with pytest.raises(TypeError, match="lr_d must be a number"):
        TrainConfig(lr_d=True)


def test_yaml_tags_are_not_executed(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("data: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        TrainConfig.from_file(p)
    assert not (tmp_path / "pwned").exists()


def test_with_overrides_coerces_and_validates():
    cfg = TrainConfig().with_overrides(
        ["steps=50", "lr_d=1e-3", "scale=1.4", "method=bssn", "arch=mlp", "ema=0.99", "width=null"]
    )
    assert (cfg.steps, cfg.lr_d, cfg.scale, cfg.method, cfg.ema, cfg.width) == (
        50,
        1e-3,
        1.4,
        "bssn",
        0.99,
        None,
    )
    assert TrainConfig().with_overrides(["data=folder:/x/y"]).data == "folder:/x/y"
    # "none" is a method name (and the word parse_value reads as null elsewhere)
    assert TrainConfig().with_overrides(["method=none"]).method == "none"
    with pytest.raises(ValueError, match="key=value"):
        TrainConfig().with_overrides(["steps"])
    with pytest.raises(ValueError, match="method must be one of none, eqlr"):
        TrainConfig().with_overrides(["method=batchnorm"])
    with pytest.raises(ValueError, match="steps must be positive"):
        TrainConfig().with_overrides(["steps=0"])
    with pytest.raises(ValueError, match="beta2 must lie in"):
        TrainConfig().with_overrides(["beta2=1.5"])
    with pytest.raises(ValueError, match="loss must be one of hinge, ns, wgan-gp"):
        TrainConfig(loss="wgan")
    with pytest.raises(ValueError, match="scale=1.2 is only used by ssn and bssn"):
        TrainConfig(method="sn", scale=1.2)
    with pytest.raises(ValueError, match="keep_checkpoints must be at least 2"):
        TrainConfig(keep_checkpoints=1)


def test_presets_and_shipped_configs_agree():
    from pathlib import Path

    from normlab.gan.config import PRESETS

    root = Path(__file__).resolve().parents[2] / "configs"
    for name, values in PRESETS.items():
        shipped = TrainConfig.from_file(root / f"{name}.yaml")
        assert shipped == TrainConfig.preset(name), name
        assert all(getattr(shipped, k) == v for k, v in values.items())
    for path in root.glob("*.yaml"):  # every shipped config loads
        TrainConfig.from_file(path)
    assert TrainConfig.preset("folder:/x", steps=5) == TrainConfig(data="folder:/x", steps=5)
