"""Damaged runs (analysis.train.store.verify_run): run.json records each result file's row count and
sha256; an unterminated run.json, a deleted probes.parquet and a curves.parquet with rows dropped (still
valid parquet) are each named (path and what is wrong), left out of load_runs with a warning (an error
with strict=True), refused by read_result, and computed again by a rerun of the config, which moves the
damaged folder aside: never silently served."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from analysis.train import OptimConfig, load_runs, train
from analysis.train.loop import read_result
from analysis.train.store import DamagedRun, verify_run
from tests.analysis.train.configs import tiny_run

_cfg = tiny_run  # the shared tiny run (tests/analysis/train/configs.py)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    a, b = train(_cfg(), out), train(_cfg(optim=OptimConfig(lr=2e-3)), out)
    return out, a, b


def _unterminated(folder):
    text = (folder / "run.json").read_text()
    (folder / "run.json").write_text(text[: len(text) // 2])
    return "run.json is not valid JSON"


def _probes_deleted(folder):
    (folder / "probes.parquet").unlink()
    return "probes.parquet is missing"


def _rows_dropped(folder):
    curves = pd.read_parquet(folder / "curves.parquet")
    curves.iloc[: len(curves) - 5].to_parquet(folder / "curves.parquet", index=False)
    return f"curves.parquet holds {len(curves) - 5} rows, run.json recorded {len(curves)}"


def _value_changed(folder):
    curves = pd.read_parquet(folder / "curves.parquet")
    curves.loc[0, "value"] += 1.0
    curves.to_parquet(folder / "curves.parquet", index=False)
    return "curves.parquet does not match the sha256"


DAMAGE = {
    "unterminated_run_json": _unterminated,
    "probes_deleted": _probes_deleted,
    "rows_dropped": _rows_dropped,
    "value_changed": _value_changed,
}


def test_run_json_records_rows_and_checksums(stored):
    out, a, _ = stored
    meta = verify_run(out / a.run_id)
    files = meta["files"]
    assert files["curves.parquet"]["rows"] == len(a.curves) and files["probes.parquet"]["rows"] == len(a.probes)
    assert all(len(f["sha256"]) == 64 for f in files.values())


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damage_is_named_skipped_and_recomputed(stored, tmp_path, kind):
    source, a, b = stored
    out = tmp_path / "store"
    shutil.copytree(source, out)
    folder = out / a.run_id
    problem = DAMAGE[kind](folder)

    with pytest.raises(DamagedRun, match=problem) as err:
        verify_run(folder)
    assert err.value.path == folder and str(folder) in str(err.value)
    with pytest.raises(DamagedRun, match=problem):
        read_result(folder)
    with pytest.warns(UserWarning, match=f"damaged run {folder}.*left out of load_runs"):
        rows = load_runs(out, "runs")
    assert set(rows["run"]) == {b.run_id}, "the whole run is still served, the damaged one is not"
    with pytest.raises(DamagedRun, match=problem):
        load_runs(out, strict=True)

    with pytest.warns(UserWarning, match="moved aside"):
        again = train(a.config, out)
    assert not again.skipped, "a damaged run is computed again, not read back"
    pd.testing.assert_frame_equal(again.curves, a.curves, check_exact=True)
    pd.testing.assert_frame_equal(again.probes, a.probes, check_exact=True)
    aside = [p for p in out.iterdir() if p.name.startswith(f"{a.run_id}.damaged-")]
    assert len(aside) == 1, "the damaged folder is kept aside for inspection"
    assert verify_run(folder)["run_id"] == a.run_id
    assert train(a.config, out).skipped
    assert set(load_runs(out, "runs", strict=True)["run"]) == {a.run_id, b.run_id}


def test_runs_stored_before_checksums_still_read(stored, tmp_path):
    source, a, _ = stored
    folder = tmp_path / a.run_id
    shutil.copytree(source / a.run_id, folder)
    meta = json.loads((folder / "run.json").read_text())
    del meta["files"]
    (folder / "run.json").write_text(json.dumps(meta))
    assert verify_run(folder)["run_id"] == a.run_id
    pd.testing.assert_frame_equal(read_result(folder).curves, a.curves)
