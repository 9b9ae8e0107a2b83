"""analysis.io.environment: the provenance stored beside every result."""

import json

import jax

from analysis.io import environment


def test_environment_names_versions_devices_and_commit():
    env = environment()
    assert env["jax"] == jax.__version__
    assert env["devices"] == [str(d) for d in jax.devices()]
    assert env["backend"] == jax.default_backend()
    # in this checkout the commit is a 40-hex sha; outside git it would be None, never a wrong value
    assert env["git_commit"] is None or (len(env["git_commit"]) == 40 and int(env["git_commit"], 16) >= 0)
    json.dumps(env)  # stored as JSON beside results


def test_source_fingerprint_changes_with_the_code(tmp_path, monkeypatch):
    """Stored results are keyed by this: any edit to a compute room's source must change it."""
    import analysis.io as io

    room = tmp_path / "models"
    room.mkdir()
    (room / "a.py").write_text("x = 1\n")
    fake_module = tmp_path / "analysis" / "io.py"  # source_fingerprint resolves the root from its own file
    fake_module.parent.mkdir()
    monkeypatch.setattr(io, "__file__", str(fake_module))
    first = io.source_fingerprint(("models",))
    assert io.source_fingerprint(("models",)) == first
    (room / "a.py").write_text("x = 2\n")
    second = io.source_fingerprint(("models",))
    (room / "b.py").write_text("")
    assert len({first, second, io.source_fingerprint(("models",))}) == 3
