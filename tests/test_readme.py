"""The README's runnable example runs and prints what the README says it prints."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_runnable_example(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "A runnable" in b or "torch.randn(8, 3, 32, 32)" in b)
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "{'0': 'sn', '2': 'sn', '5': 'ssn'}"
    assert (tmp_path / "d.pt").is_file()


def test_readme_opens_with_the_two_setup_commands():
    text = README.read_text()
    first_block = text.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_checkpoint_converter_example(tmp_path):
    """The README's example of loading a PyTorch spectral-norm checkpoint runs as printed."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "load_torch_spectral_norm_state(" in b)
    out = subprocess.run(
        [sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["{'0':", "'sn',", "'2':", "'sn'}", "True"]


def test_max_stable_lr_is_shown_with_its_loss_fn_signature():
    text = README.read_text()
    assert re.search(r"def loss_fn\(outputs, targets\)", text)
    assert "nl.diagnostics.max_stable_lr(model, loss_fn, [(x, y)]" in text
