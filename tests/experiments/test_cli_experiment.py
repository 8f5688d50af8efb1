"""``normlab experiment NAME --out DIR``: plumbing (the experiments themselves are tested apart)."""

import pytest

from normlab import cli
from normlab.cli import experiment as cli_experiment


def test_registered():
    assert "experiment" in cli.COMMANDS


@pytest.mark.parametrize("name", ["fixup", "cbn", "classnorm", "eqlr", "wn"])
def test_calls_the_experiment(monkeypatch, tmp_path, capsys, name):
    import importlib

    module = importlib.import_module(f"normlab.experiments.{name}")
    calls = {}

    def fake_run(out, quick=False, seed=0):
        calls.update(out=out, quick=quick, seed=seed)
        runs = {"a": {"final_test_acc": 0.5, "diverged": False}}
        summary = None if name == "fixup" else {"a": {"H": 0.5, "per_seed": [0.5]}}
        result = {"runs": runs, "claims": {"ok": True}}
        if summary is not None:
            result["summary"] = summary
        return result

    monkeypatch.setattr(module, "run", fake_run)
    parser = cli_experiment.argparse.ArgumentParser()
    cli_experiment.add_parser(parser.add_subparsers())
    args = parser.parse_args(["experiment", name, "--out", str(tmp_path), "--quick", "--seed", "3"])
    assert args.func(args) == 0
    assert calls == {"out": tmp_path, "quick": True, "seed": 3}
    assert '"ok": true' in capsys.readouterr().out


def test_unknown_experiment_is_rejected(tmp_path):
    parser = cli_experiment.argparse.ArgumentParser()
    cli_experiment.add_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["experiment", "nope", "--out", str(tmp_path)])
