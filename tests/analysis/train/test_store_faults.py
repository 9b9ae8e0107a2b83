"""Faults of the file system: a read-only store (a read-only bind mount in a private mount namespace,
`unshare -m`; root ignores permission bits) is read and reported, a finished config is read back from
it, and a new run is a one-line error before compute; a full disk (a tiny tmpfs in a private mount
namespace) is one line and leaves no partial file outside a temporary name, and the rerun after
freeing space resumes bit-equal; simulated ones (monkeypatched writers) where no mount is needed:
ENOSPC in atomic_write and in an orbax save, Ctrl-C during a checkpoint save."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pandas as pd
import pytest

from analysis.io import atomic_write, describe_os_error
from analysis.train import TaskConfig, TrainConfig, checkpoint, load_runs, store, train
from models import ModelConfig

ROOT = Path(__file__).resolve().parents[3]
TINY = dict(layers=2, d_model=16, heads=2, d_ff=32, vocab=32, max_len=32)
FLAGS = (
    "--no-progress --arch decoder --layers 2 --d-model 16 --heads 2 --d-ff 32 --vocab 32 --max-len 32 "
    "--task markov --seq-len 16 --batch-size 4 --steps 6 --checkpoint-every 2 --probe-every 3 --eval-every 3 "
    "--eval-batches 2 --seeds 2"
)


def _cfg(**kw) -> TrainConfig:
    base = dict(
        model=ModelConfig(arch="decoder", **TINY),
        task=TaskConfig(name="markov", seq_len=16, batch_size=4),
        steps=6,
        seeds=(0, 1),
        probe_every=3,
        eval_every=3,
        eval_batches=2,
        checkpoint_every=2,
    )
    return TrainConfig(**{**base, **kw})


def _can_mount() -> bool:
    probe = "mount -t tmpfs -o size=64k tmpfs /mnt && mount -o remount,ro /mnt"
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", probe], check=False, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs `unshare -m` and mount (a private mount namespace)")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.1",
    }


READ_ONLY = """
import json, sys
from analysis.train import load_runs, train
from analysis.train.config import from_dict
out = sys.argv[1]
runs = load_runs(out, "runs", strict=True)
result = train(from_dict(json.loads(sys.argv[2])), out)
print(json.dumps({"runs": sorted(set(runs["run"])), "skipped": result.skipped, "folder": str(result.folder)}))
"""


@pytest.mark.slow
@needs_mount
def test_read_only_store_is_read_and_refused_cleanly(tmp_path):
    out = tmp_path / "store"
    done = train(_cfg(), out)
    (out / done.run_id / "started.json").write_text("{}")  # a leftover of a kill: stays, unread, on a read-only store
    py = sys.executable
    script = textwrap.dedent(f"""
        mount --bind -o ro "{out}" "{out}" || exit 90
        touch "{out}/x" 2>/dev/null && exit 91
        "{py}" -c '{READ_ONLY}' "{out}" '{json.dumps(store_config(done))}' || exit 92
        "{py}" -m analysis.cli train {FLAGS} --steps 8 --out "{out}" 2>"{tmp_path}/new.err"
        echo "new=$?"
    """)
    ran = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        check=False,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    read, status = ran.stdout.strip().splitlines()[-2:]
    read = json.loads(read)
    assert read["runs"] == [done.run_id] and read["skipped"] and read["folder"] == str(out / done.run_id)
    assert status == "new=1", "a new run into a read-only store fails"
    err = (tmp_path / "new.err").read_text()
    assert err.count("\n") == 1 and err.startswith("lnscope: error: Read-only file system: ")
    assert "new ones need a writable --out" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == [done.run_id], "nothing was written"


def store_config(result) -> dict:
    from analysis.train.config import to_dict

    return to_dict(result.config)


@pytest.mark.slow
@needs_mount
def test_full_disk_is_one_line_and_the_rerun_resumes_bit_equal(tmp_path):
    py = sys.executable
    mnt, keep = tmp_path / "small", tmp_path / "kept"
    mnt.mkdir()
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size=300k tmpfs "{mnt}" || exit 90
        "{py}" -m analysis.cli train {FLAGS} --out "{mnt}/runs" 2>"{tmp_path}/full.err"
        echo "full=$?"
        find "{mnt}" > "{tmp_path}/left.txt"
        mount -o remount,size=4m "{mnt}" || exit 91
        "{py}" -m analysis.cli train {FLAGS} --out "{mnt}/runs" 2>"{tmp_path}/again.err" || exit 92
        cp -r "{mnt}/runs" "{keep}"
    """)
    ran = subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        check=False,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ran.returncode == 0, ran.stderr[-3000:] + (tmp_path / "again.err").read_text()[-3000:]
    assert ran.stdout.strip().splitlines()[0] == "full=1"
    err = (tmp_path / "full.err").read_text()
    assert err.count("\n") == 1 and err.startswith("lnscope: error: ") and "No space left on device" in err, err[-3000:]
    assert "run the command again" in err and "Traceback" not in err
    left = (tmp_path / "left.txt").read_text().split()
    assert not [p for p in left if "tmp" in Path(p).name or Path(p).name == store.CLAIM], left
    assert any(p.endswith("/checkpoints/2") for p in left), "the checkpoint saved before the disk filled stays"
    (folder,) = [p for p in keep.iterdir()]
    meta = json.loads((folder / "run.json").read_text())
    assert meta["info"]["resumed_from"] == 2
    fresh = train(_cfg())
    pd.testing.assert_frame_equal(load_runs(folder)[list(fresh.curves.columns)], fresh.curves, check_exact=True)


def test_full_disk_in_atomic_write_leaves_no_file(tmp_path):
    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "curves.parquet", write)
    assert list(tmp_path.iterdir()) == []
    line = describe_os_error(err.value)
    assert "\n" not in line and line.startswith("No space left on device: ") and "free space" in line


def test_probe_into_a_read_only_folder_is_refused_before_compute(tmp_path, monkeypatch, capsys):
    """Simulated (monkeypatched mkstemp): `lnscope probe` checks its destination before computing."""
    import tempfile

    from analysis.cli import main

    def refuse(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert main(["probe", "--layers", "2", "--d-model", "16", "--out", str(tmp_path / "x.parquet")]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"lnscope: error: Read-only file system: {tmp_path}; the file system is read-only: finished runs "
        "there can be read, new ones need a writable --out\n"
    )


def test_remove_scaffolding_touches_nothing_on_a_read_only_store(tmp_path, monkeypatch):
    """Simulated (monkeypatched unlink): a finished run without scaffolding deletes nothing, and a
    leftover started.json that cannot be deleted (EROFS) stays."""
    folder = tmp_path / "run"
    folder.mkdir()

    def refuse(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    store.remove_scaffolding(folder)
    (folder / "started.json").write_text("{}")
    store.remove_scaffolding(folder)
    assert (folder / "started.json").exists()


STATE = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(2)}


def test_orbax_disk_full_becomes_an_os_error_and_no_temporary_folder(tmp_path, monkeypatch):
    original = ocp.CheckpointManager.save

    def fill(self, step, *args, **kwargs):
        (Path(self.directory) / f"{step}.orbax-checkpoint-tmp").mkdir(parents=True)
        raise ValueError(
            "RESOURCE_EXHAUSTED: Failed to write 552 bytes to file 17: No space left on device [os_error_code='28']"
        )

    monkeypatch.setattr(ocp.CheckpointManager, "save", fill)
    with pytest.raises(OSError) as err:
        checkpoint.save(tmp_path, 2, STATE)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "checkpoints")
    assert not list((tmp_path / "checkpoints").iterdir())
    monkeypatch.setattr(ocp.CheckpointManager, "save", original)
    checkpoint.save(tmp_path, 2, STATE)
    assert checkpoint.steps(tmp_path) == [2]


def test_ctrl_c_during_a_save_is_raised_after_it(tmp_path, monkeypatch):
    original = ocp.CheckpointManager.save

    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives mid-save
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 4, STATE)
    assert checkpoint.steps(tmp_path) == [4], "the save finished before the interrupt was handled"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
