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
