"""The command line: entry points, help, and the inspect table against an SVD."""

import subprocess
import sys

import pytest

from normlab.cli import COMMANDS, build_parser, main


def test_python_dash_m_and_help():
    out = subprocess.run(
        [sys.executable, "-m", "normlab", "--help"], capture_output=True, text=True, check=True
    )
    for name in COMMANDS:
        assert name in out.stdout


def test_every_command_has_help():
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_inspect_table(capsys):
    assert (
        main(
            [
                "inspect",
                "--methods",
                "none,sn,sn_exact",
                "--resolution",
                "8",
                "--channels",
                "1",
                "--width",
                "8",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("features.") or line.startswith("head")]
    assert len(rows) == 8  # 7 convs and the linear head
    for row in rows:
        cells = [c.split() for c in row.split("|")[1:]]
        sn_sigma = float(cells[1][0])
        assert sn_sigma == pytest.approx(1.0, abs=0.02)  # SN: effective sigma 1 (SVD)
    # exact SN divides the stride-1 convs by a larger norm: their reshaped sigma falls below 1
    first = [c.split() for c in rows[0].split("|")[1:]]
    assert float(first[2][0]) < 0.9


def test_bad_method_is_a_clear_error(capsys):
    assert main(["inspect", "--methods", "none,bogus"]) == 1
    assert "unknown method 'bogus'" in capsys.readouterr().err
