"""benchmarks/gpu_check.py: its CPU smoke run end to end, and that its checks can fail."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402
import normlab as nl  # noqa: E402


@pytest.mark.slow
def test_quick_cpu_run_checks_every_method_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--quick"),
            *("--threads", "1", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all checks passed" in proc.stdout
    report = json.loads(out.read_text())
    methods = list(nl.METHODS)
    assert report["methods"] == methods and report["device"] == "cpu"
    table = proc.stdout.splitlines()
    for m in [*methods, gpu_check.TORCH_SN]:
        assert any(line.split()[:1] == [m] for line in table), m
    for m in methods:
        checks = report["checks"][m]
        # The CPU against itself (two builds from one seed): identical to the last bit.
        assert checks["device"] == {"weights": 0.0, "outputs": 0.0, "grads": 0.0, "ok": True}
        for part in ("bf16", "fp16", "compile"):
            assert checks[part]["ok"], (m, part, checks[part])
        assert checks["bf16"]["float32_state"] and checks["fp16"]["float32_state"]
        assert checks["sync"] == {"ok": None, "result": "n/a"}  # CUDA only
        assert report["training"][m]["status"] == "finished"
        assert report["training"][m]["steps"] == 3
        assert "fid" in report["training"][m]["metrics"]
    assert set(report["timing"]) == {"dstep@2", "iter@2"}
    assert set(report["timing"]["dstep@2"]) == {*methods, gpu_check.TORCH_SN}
    assert report["timing"]["dstep@2"][gpu_check.TORCH_SN]["x_torch_sn"] == pytest.approx(1.0)
    assert set(report["timing"]["iter@2"]) == set(methods)


def test_relative_error_is_the_norm_of_the_difference_over_the_reference():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])
    assert gpu_check.rel_err(a, b) == pytest.approx(3 / 4)
    both = gpu_check.rel_err_all({"x": a, "y": b}, {"x": b, "y": b})
    assert both == pytest.approx(3 / (32**0.5))
    assert gpu_check.rel_err_all({"x": a}, {"z": a}) == float("inf")


def test_device_check_fails_when_the_two_networks_disagree(monkeypatch):
    """The agreement check compares two builds; a second build whose first conv weight is
    off by 1e-3 (relative) must fail it, with the error in the weights it reports."""
    real = gpu_check.discriminator
    calls = []

    def perturbed(method, width):
        d = real(method, width)
        calls.append(method)
        if len(calls) == 2:
            with torch.no_grad():
                raw = next(p for n, p in d.named_parameters() if n.startswith("features.0"))
                raw.mul_(1 + 1e-3)
        return d

    monkeypatch.setattr(gpu_check, "discriminator", perturbed)
    res = gpu_check.check_device("none", torch.device("cpu"), width=8, batch=2)
    assert not res["ok"]
    assert res["weights"] > gpu_check.TOL["device_weights"]
    ok = gpu_check.check_device("sn", torch.device("cpu"), width=8, batch=2)
    assert ok["ok"] and ok["weights"] == 0.0


def test_autocast_check_rejects_half_precision_state(monkeypatch):
    """A network whose parameters end up in bfloat16 fails the float32-state part."""
    real = gpu_check.discriminator
    calls = []

    def halved(method, width):
        d = real(method, width)
        calls.append(method)
        return d.to(torch.bfloat16) if len(calls) == 2 else d

    monkeypatch.setattr(gpu_check, "discriminator", halved)
    res = gpu_check.check_autocast("none", torch.device("cpu"), 8, 2, torch.bfloat16)
    assert res["float32_state"] is False and res["ok"] is False


def test_synthetic_cifar_is_cifar_shaped(tmp_path):
    from normlab.data.images import load_npz

    path = gpu_check.synthetic_cifar(tmp_path / "s.npz", 12)
    images, labels = load_npz(path)
    assert images.shape == (12, 3, 32, 32)
    assert str(images.dtype) == "float32"
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    assert labels.shape == (12,)
