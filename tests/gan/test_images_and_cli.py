"""Image runs (digits, user arrays with Inception weights), eval, sample and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from normlab.cli import main
from normlab.gan.config import TrainConfig
from normlab.gan.evaluate import evaluate_run
from normlab.gan.sample import sample_run
from normlab.gan.trainer import train
from normlab.metrics import IMAGE_METRICS, save_random_inception_weights


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory):
    """One feature network for every digits run of this module (trained on first use)."""
    return str(tmp_path_factory.mktemp("features") / "digits_feature_net.pt")


@pytest.mark.slow
def test_digits_cnn_run_and_image_metrics(tmp_path, feature_cache):
    cfg = TrainConfig(
        data="digits",
        arch="cnn",
        method="bssn",
        steps=6,
        width=8,
        batch_size=32,
        log_every=3,
        eval_every=0,
        ckpt_every=3,
        eval_samples=200,
        ema=0.9,
        feature_cache=feature_cache,
    )
    out = train(cfg, tmp_path, progress=False)
    assert out["status"] == "finished"
    assert list(out["metrics"]) == list(IMAGE_METRICS)
    assert all(np.isfinite(v) for v in out["metrics"].values())
    with Image.open(tmp_path / "samples" / "final.png") as im:
        assert im.mode == "L" and im.size[0] >= 8 * 32  # 8x8 grid of 8x8 digits, enlarged
    again = evaluate_run(tmp_path)
    assert again["step"] == 6 and again["fid"] == pytest.approx(out["metrics"]["fid"], rel=1e-6)


@pytest.mark.parametrize("arch", ["resnet", "mlp"])
def test_other_archs_on_a_small_array(tmp_path, arch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images, labels=rng.integers(0, 4, 64))
    cfg = TrainConfig(
        data=f"npz:{tmp_path / 'imgs.npz'}",
        arch=arch,
        method="wn",
        steps=4,
        width=8,
        batch_size=16,
        log_every=2,
        eval_every=0,
        eval_samples=32,
    )
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["status"] == "finished" and list(out["metrics"]) == list(IMAGE_METRICS)
    with Image.open(tmp_path / "run" / "samples" / "final.png") as im:
        assert im.mode == "RGB"


@pytest.mark.slow
def test_inception_weights_path_and_bad_file(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "imgs.npz", images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    weights = save_random_inception_weights(tmp_path / "pt_inception.pth")
    base = dict(
        data=f"npz:{tmp_path / 'imgs.npz'}",
        steps=2,
        width=4,
        batch_size=4,
        eval_every=0,
        eval_samples=6,
        z_dim=8,
    )
    out = train(
        TrainConfig(**base, inception_weights=str(weights)), tmp_path / "run", progress=False
    )
    assert list(out["metrics"]) == list(IMAGE_METRICS)
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="Inception"):
        train(
            TrainConfig(**base, inception_weights=str(tmp_path / "junk.pth")),
            tmp_path / "bad",
            progress=False,
        )
    assert not (tmp_path / "bad" / "config.yaml").exists()  # refused before anything was written


def test_sample_run_scatter_and_errors(tmp_path):
    train(
        TrainConfig(steps=5, width=16, eval_every=0, eval_samples=300),
        tmp_path / "r",
        progress=False,
    )
    png = sample_run(tmp_path / "r", 200, tmp_path / "s.png")
    with Image.open(png) as im:
        assert im.size[0] > 200
    with pytest.raises(FileNotFoundError, match="not a normlab run folder"):
        sample_run(tmp_path / "nothing", 10, tmp_path / "x.png")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_run(tmp_path / "r", 0, tmp_path / "x.png")


def test_cli_train_eval_sample(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            "ring8",
            "--method",
            "bssn",
            "--scale",
            "1.5",
            "--steps",
            "20",
            "--out",
            str(run),
            "--set",
            "width=16",
            "--set",
            "eval_every=10",
            "--set",
            "eval_samples=300",
            "--no-progress",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "finished: 20 steps" in out and "modes_covered=" in out
    cfg = TrainConfig.from_file(run / "config.yaml")
    assert (cfg.method, cfg.scale, cfg.width, cfg.g_method) == ("bssn", 1.5, 16, "none")
    assert main(["eval", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["step"] == 20 and "reverse_kl" in ev
    assert main(["sample", str(run), "--n", "64", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").exists()
    # resume with more steps, from the run's own config
    assert main(["train", "--resume", str(run), "--steps", "30", "--no-progress"]) == 0
    assert "finished: 30 steps" in capsys.readouterr().out


def test_cli_config_file_and_bad_input(tmp_path, capsys):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("data: ring8\nsteps: 5\nwidth: 8\neval_samples: 100\n")
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg_file),
                "--out",
                str(tmp_path / "r"),
                "--no-progress",
                "--set",
                "depth=1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "x"), "--set", "lr=1"]) == 1
    assert "unknown override key 'lr'; valid keys" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--data", "folder:/no/such/dir"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--steps", "5"]) == 1
    assert "--out DIR is required" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope")]) == 1
    assert "not a normlab run folder" in capsys.readouterr().err
    cfg_file.write_text("method: sn\nscale: 2\n")
    assert main(["train", "--config", str(cfg_file), "--out", str(tmp_path / "y")]) == 1
    assert "only used by ssn and bssn" in capsys.readouterr().err
