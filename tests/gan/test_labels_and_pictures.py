"""FID/KID carry their feature space and scale wherever they are shown; sample pictures show
what was generated (samples above the mode markers, digits large enough to read)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from normlab.cli import main
from normlab.data import load_data
from normlab.gan.sample import MIN_CELL_PIXELS, save_image_grid, scatter_figure
from normlab.study.report import image_metric_line


def test_a_collapsed_generator_shows_above_the_mode_marker():
    spec = load_data("ring8").mixture
    mode = np.asarray(spec.means)[0]
    samples = torch.tensor(mode, dtype=torch.float32).repeat(500, 1)  # all on one mode
    samples += 0.002 * torch.randn(500, 2)
    fig, ax = scatter_figure(samples, spec)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].astype(int)
    px, py = ax.transData.transform(mode)
    row, col = rgb.shape[0] - round(float(py)), round(float(px))
    patch = rgb[row - 1 : row + 2, col - 1 : col + 2].reshape(-1, 3)
    blue_ish = (patch[:, 2] > patch[:, 0] + 40).mean()  # tab:blue (31, 119, 180), not tab:red
    assert blue_ish > 0.8, patch
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_small_images_are_enlarged_to_readable_cells(tmp_path):
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    path = save_image_grid(images, tmp_path / "g.png")
    factor = MIN_CELL_PIXELS // 8
    assert factor >= 8
    with Image.open(path) as im:
        arr = np.asarray(im)
    assert arr.shape[0] == arr.shape[1] == (8 * 9 + 1) * factor  # 8x8 cells, 1-px borders
    first = arr[factor : factor * 9, factor : factor * 9]  # the first cell
    expected = np.kron(((images[0, 0] + 1) / 2 * 255).round().numpy(), np.ones((factor, factor)))
    assert np.abs(first.astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.slow
def test_fid_and_kid_name_their_feature_space_and_scale(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--data", "digits", "--arch", "cnn", "--steps", "2", "--out", str(run)]
    for kv in ("width=8", "batch_size=16", "eval_every=0", "eval_samples=100", "log_every=1"):
        args += ["--set", kv]
    assert main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "fid=" in out and "kid=" in out
    assert "fid and kid on the features of a small network trained on digits (" in out
    assert "not comparable with Inception FIDs" in out and "not x1000" in out
    stored = json.loads((run / "metrics.json").read_text())
    dim = torch.load(run / "feature_net.pt", weights_only=True)["config"]["width"]
    assert stored["metric_info"]["feature_space"].startswith(
        "the features of a small network trained on digits ("
    )
    assert "-d;" in stored["metric_info"]["feature_space"] and dim > 0
    assert "not x1000" in stored["metric_info"]["kid"]
    assert main(["eval", str(run), "--n", "100"]) == 0
    assert "not x1000" in capsys.readouterr().out
    record = {"metrics": stored["final"], "run_dir": str(run), "status": "finished"}
    line = image_metric_line([record])
    assert line.startswith("Fid and kid on the features") or line.startswith("Fid and kid")
    assert "not x1000" in line
