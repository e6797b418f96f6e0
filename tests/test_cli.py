"""The command line: help on every command, real training in the demo, exit code 2 on user errors."""

import pytest
from click.testing import CliRunner

from reglab.cli import main


def test_every_command_has_help():
    runner = CliRunner()
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for name, command in main.commands.items():
        assert command.help, name
        sub = runner.invoke(main, [name, "--help"])
        assert sub.exit_code == 0 and "Example" in sub.output, name


def test_demo_runs_every_seed_case_study(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--seeds", "2", "--epochs", "5", "--db", str(tmp_path / "demo.db")])
    assert result.exit_code == 0, result.output
    for study in ("moons-l2", "moons-l2-grid", "moons-unit-norm", "circles-activity", "circles-activity-grid",
                  "digits-toolbox", "resmlp-toolbox"):
        assert f"== {study} (" in result.output
    assert "test 0.914" in result.output   # the seeds' published figures alongside
    assert "train 0.967 / test 0.829" in result.output


@pytest.mark.parametrize("args", [["demo", "--seeds", "1"], ["demo", "--epochs", "0"], ["demo", "--seeds", "x"],
                                  ["nonsense"]])
def test_bad_arguments_exit_2_without_traceback(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["list"], ["status", "x"], ["export", "x"], ["report", "x"]])
def test_read_only_commands_refuse_a_missing_database(tmp_path, args):
    db = tmp_path / "missing.db"
    result = CliRunner().invoke(main, args + ["--db", str(db)])
    assert result.exit_code == 2
    assert "no database at" in result.output and "Traceback" not in result.output
    assert not db.exists()
