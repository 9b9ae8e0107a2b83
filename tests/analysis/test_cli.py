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
        (["probe", "--placement", "bogus", "--out", "x.parquet"], "unknown placement 'bogus'; valid choices: post"),
        (["probe", "--heads", "5", "--out", "x.parquet"], "not divisible by heads=5"),
        (["probe", "--skip-lambda", "nan", "--out", "x.parquet"], "skip_lambda must be a finite number"),
        (["probe", "--out", "x.csv"], "must end in .parquet"),
        (["probe", "--probes", "act_grad_norm,bogus", "--out", "x.parquet"], "unknown probe(s) ['bogus']"),
        (["check", "--when", "later"], "unknown --when 'later'; valid choices: init, training"),
        (["check", "--n-boot", "0"], "--n-boot must be an integer >= 1, got 0"),  # before any job is computed
    ],
)
def test_bad_input_exits_2_with_the_reason(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing may be written for bad input"


@pytest.mark.parametrize(
    "argv, line",
    [
        (
            ["probe", "--placement", "postln", "--out", "x.parquet"],
            "lnscope: error: unknown placement 'postln'; valid choices: post, pre, ",
        ),
        (["probe", "--norm", "rms", "--out", "x.parquet"], "lnscope: error: unknown norm 'rms'; valid choices: "),
        (["prob", "--out", "x.parquet"], "lnscope: error: unknown command 'prob'; valid choices: probe, "),
        (["probe", "--seeds", "0", "--out", "x.parquet"], "lnscope: error: "),  # a check after parsing
    ],
)
def test_a_bad_choice_is_one_line_with_the_closest_valid_one(argv, line, capsys, tmp_path, monkeypatch) -> None:
    """Issue 25, defect 4: no usage dump before the line that matters, and a "did you mean"."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line) and "usage:" not in err, err
    if "--seeds" not in argv:
        closest = {"postln": "post", "rms": "rmsnorm", "prob": "probe"}[argv[argv.index("--out") - 1]]
        assert err.endswith(f"(did you mean {closest!r}?)\n"), err


@pytest.mark.parametrize("value", ["-1e-3", "-0.5", "-2", "-inf"])
def test_a_negative_number_is_a_value_and_reaches_the_configs_check(value, capsys, tmp_path) -> None:
    """Issue 25, defect 4: `--lr -1e-3` was "expected one argument"; the config names the bad value."""
    out = tmp_path / "store"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--lr", value, "--steps", "1", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lnscope: error: lr must be") and err.count("\n") == 1, err
    assert repr(float(value)) in err and not out.exists()


def test_float64_without_x64_tells_the_command_line_user_the_environment_variable(capsys, tmp_path) -> None:
    """Issue 25, defect 9: a CLI user cannot call jax.config.update; JAX_ENABLE_X64=1 is the way."""
    import jax

    with jax.enable_x64(False), pytest.raises(SystemExit) as exit_info:
        cli.main(["probe", "--dtype", "float64", "--out", str(tmp_path / "x.parquet")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "JAX_ENABLE_X64=1" in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_an_unwritable_output_is_one_line_before_any_compute(capsys, monkeypatch) -> None:
    """Issue 25, defect 3: `--out /proc/nope.parquet` was a traceback after computing."""
    import analysis.cli as cli_module

    def no_compute(*args, **kwargs):
        raise AssertionError("computed before checking the output folder")

    monkeypatch.setattr(cli_module, "probe_at_init", no_compute)
    monkeypatch.setattr(cli_module, "check_fits", no_compute)
    status = cli.main(["probe", "--layers", "2", "--seeds", "1", "--out", "/proc/nope.parquet"])
    err = capsys.readouterr().err
    assert status != 0 and err.startswith("lnscope: error: ") and err.count("\n") == 1, err
    assert "/proc" in err and "Traceback" not in err


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
