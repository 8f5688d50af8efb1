"""Every shell command in the README's code blocks works with today's CLI.

All fenced blocks that are not Python are read; a command is a line (with its ``\\``
continuations) starting with ``normlab`` or ``torchrun ... -m normlab``. Each is parsed by
normlab's own parser and turned into its config (``--out`` missing, an unknown key or a bad
value fail here). Those that can run on this machine then run, in README order in one
folder (so ``normlab eval runs/d1`` finds the run the line before trained), at tiny sizes:
``--steps 2``, ``--seeds 1``, one worker, small widths and evaluation samples (``shrink``).
``PARSE_ONLY`` lists, with the reason, the few that cannot run here; they are still parsed
(torchrun's own options by torchrun's parser). A README section added later is covered
without touching this file.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: Substring of a command -> why it is only parsed, not run.
PARSE_ONLY = {
    "cifar10:": "needs the CIFAR-10 download (normlab never downloads anything)",
    "torchrun": "several processes / GPUs / nodes (DDP itself is tested in tests/gan/test_ddp.py)",
    "--inception-weights": "needs pytorch-fid's Inception weights file",
    "--launcher slurm": "needs a SLURM cluster (tests/study/test_launchers.py runs the same jobs "
    "through submitit's local executor and stand-in sbatch/sacct)",
}
#: Options set for a tiny run (added unless the command gives them).
TINY_SETS = ("width=8", "eval_samples=100", "eval_every=0", "log_every=1", "batch_size=16")


def readme_commands(text: str | None = None) -> list[str]:
    """The ``normlab`` / ``torchrun ... -m normlab`` commands of the non-Python code blocks."""
    text = README.read_text() if text is None else text
    commands = []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang in ("python", "py", "json", "yaml"):
            continue
        joined = re.sub(r"\\\n\s*", " ", body)
        for line in joined.splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] == "normlab" or (words[0] == "torchrun" and "normlab" in words):
                commands.append(shlex.join(words))
    return commands


def normlab_args(command: str) -> list[str]:
    """The arguments after ``normlab`` (after ``-m normlab`` for torchrun)."""
    words = shlex.split(command)
    return words[words.index("normlab") + 1 :]


def shrink(args: list[str]) -> list[str]:
    """The same command at a tiny size: 2 steps, 1 seed, 1 worker, small networks."""
    out = list(args)
    for flag, value in (("--steps", "2"), ("--seeds", "1"), ("--n", "16")):
        if flag in out:
            out[out.index(flag) + 1] = value
    if out[0] in ("train", "compare"):
        if "--steps" not in out:
            out += ["--steps", "2"]
        for kv in TINY_SETS:
            out += ["--set", kv]
        out.append("--no-progress")
    if out[0] == "compare":
        out += ["--workers", "1"]
    return out


def check_parses(args: list[str]) -> None:
    """normlab's parser accepts ``args`` and, for train/compare, builds the run's config."""
    from normlab.cli import build_parser

    ns = build_parser().parse_args(args)
    if args[0] == "train":
        from normlab.cli.train import build_config

        build_config(ns)
    elif args[0] == "compare":
        from normlab.cli.compare import base_config

        base_config(ns)


def _with_repo_paths(args: list[str]) -> list[str]:
    """``configs/...`` point at the repository's files (the commands run elsewhere)."""
    return [str(ROOT / a) if a.startswith("configs/") else a for a in args]


def test_readme_has_commands_of_every_lab_kind():
    cmds = readme_commands()
    kinds = {normlab_args(c)[0] for c in cmds}
    assert {"compare", "train", "eval", "sample"} <= kinds, cmds
    assert any(c.startswith("torchrun") for c in cmds)


def test_the_parser_reads_every_block_kind():
    text = "x\n```\nnormlab train --data a \\\n   --out b   # comment\n```\n"
    text += "```python\nnormlab x\n```\n"
    assert readme_commands(text) == ["normlab train --data a --out b"]


@pytest.mark.parametrize("command", readme_commands())
def test_every_readme_command_parses(command):
    args = _with_repo_paths(normlab_args(command))
    check_parses(args)
    if command.startswith("torchrun"):
        from torch.distributed.run import get_args_parser

        words = shlex.split(command)
        launcher = words[1 : words.index("-m")]
        get_args_parser().parse_args([*launcher, "-m", "normlab"])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~1.5 min idle (the digits feature net trains once); 7 min loaded
def test_readme_commands_run_at_tiny_size(tmp_path):
    ran = []
    for command in readme_commands():
        if any(key in command for key in PARSE_ONLY):
            continue
        args = shrink(_with_repo_paths(normlab_args(command)))
        proc = subprocess.run(
            [sys.executable, "-m", "normlab", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")},
        )
        assert proc.returncode == 0, f"{command}\n-> {shlex.join(args)}\n{proc.stderr[-3000:]}"
        ran.append(args[0])
    assert {"compare", "train", "eval", "sample"} <= set(ran)
