"""The `lnscope` CLI: every config field is an option, bad input exits cleanly, results are complete."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from analysis import cli
from analysis.io import atomic_write, read_run
from analysis.probe.tidy import COLUMNS
from models import ModelConfig


def test_help_lists_every_model_field(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["probe", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    missing = [f.name for f in dataclasses.fields(ModelConfig) if "--" + f.name.replace("_", "-") not in text]
    assert not missing, f"--help misses options for {missing}"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["probe", "--placement", "bogus", "--out", "x.parquet"], "invalid choice: 'bogus'"),
        (["probe", "--heads", "5", "--out", "x.parquet"], "not divisible by heads=5"),
        (["probe", "--skip-lambda", "nan", "--out", "x.parquet"], "skip_lambda must be a finite number"),
        (["probe", "--out", "x.csv"], "must end in .parquet"),
        (["probe", "--probes", "act_grad_norm,bogus", "--out", "x.parquet"], "unknown probe(s) ['bogus']"),
    ],
)
def test_bad_input_exits_2_with_the_reason(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing may be written for bad input"


def test_probe_writes_parquet_and_config(tmp_path) -> None:
    out = tmp_path / "run.parquet"
    argv = [
        "probe",
        "--arch",
        "decoder",
        "--placement",
        "post",
        "--layers",
        "2",
        "--d-model",
        "16",
        "--heads",
        "2",
        "--d-ff",
        "32",
        "--vocab",
        "32",
        "--seeds",
        "2",
        "--seq-len",
        "6",
        "--batch-size",
        "2",
        "--probes",
        "act_grad_norm,param_grad_norm",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    frame, meta = read_run(out)
    assert list(frame.columns) == list(COLUMNS)
    assert set(frame["seed"]) == {0, 1}
    assert set(frame["quantity"]) == {"loss", "act_grad_norm", "param_grad_norm"}
    assert meta["model"]["placement"] == "post" and meta["model"]["layers"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "run.parquet"], "temporary files left behind"


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path) -> None:
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"finished": True}))

    def broken(tmp):
        tmp.write_text("half-writ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"finished": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_bad_environment_setting_exits_2_with_its_valid_values(capsys, monkeypatch) -> None:
    monkeypatch.setenv("LNSCOPE_PIN_WORKERS", "maybe")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["list"])
    assert exit_info.value.code == 2
    assert "LNSCOPE_PIN_WORKERS='maybe'; valid values: on, off" in capsys.readouterr().err


def test_list_names_every_placement(capsys) -> None:
    from models import PLACEMENTS

    assert cli.main(["list"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PLACEMENTS)


def test_output_into_a_closed_pipe_is_not_an_error():
    """`lnscope list | true`: the reader is gone before the first write; no traceback, exit status 0."""
    import subprocess
    import sys

    cmd = f"{sys.executable} -m analysis.cli list | true; exit ${{PIPESTATUS[0]}}"
    proc = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, env={**os.environ, "LNSCOPE_ALLOCATOR": "system"}
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_ctrl_c_is_a_short_message_and_status_130(monkeypatch, capsys):
    """Ctrl-C during a command: one line, the shell's status for SIGINT, no traceback."""
    import argparse

    from analysis import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(
        argparse.ArgumentParser, "parse_args", lambda self, argv=None: argparse.Namespace(func=interrupted)
    )
    assert cli.main(["list"]) == 130
    assert capsys.readouterr().err == "lnscope: interrupted\n"
