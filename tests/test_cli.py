import subprocess
import sys
from pathlib import Path

import pytest

from postmodern.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [[], ["generate"], ["load"], ["serve"], ["next-steps"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--help"])
    assert exit_.value.code == 0
    assert "usage: postmodern" in capsys.readouterr().out


def test_generate_writes_both_files(tmp_path, capsys):
    assert main(["generate", "--profile", "tiny", "--sessions", "200", "--output", str(tmp_path), "--quiet"]) == 0
    assert (tmp_path / "browsing_train.csv").exists() and (tmp_path / "sku_to_content.csv").exists()
    assert "200 sessions" in capsys.readouterr().out


def test_errors_are_one_clear_line_and_exit_code_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["load", "--path", str(tmp_path / "missing")]) == 2
    assert "not a folder with browsing_train.csv" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "no deployed model" in capsys.readouterr().err
    monkeypatch.setenv("WAREHOUSE", "snowflake")
    assert main(["load"]) == 2
    assert "SF_USER" in capsys.readouterr().err


def test_next_steps_names_the_commands_to_type(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["next-steps"]) == 0
    out = capsys.readouterr().out
    assert "card view run_transformation --id dbt" in out and "make serve" in out and "mlflow ui" in out


def test_the_flow_has_help_and_runs_without_a_user_name():
    for command, expected in (["--help"], "Usage:"), (["show"], "user:postmodern"):
        result = subprocess.run(
            [sys.executable, str(REPO / "flows" / "recommender_flow.py"), *command],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "USER": "root"},
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout + result.stderr
