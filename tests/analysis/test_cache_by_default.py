"""analysis.runtime.ensure_compilation_cache: the persistent compilation cache on by default for the
Python API (probe_at_init, probe_model), unless the process already chose."""

from __future__ import annotations

import jax
import pytest

from analysis import runtime
from analysis.probe import api

SETTINGS = (
    "jax_compilation_cache_dir",
    "jax_enable_compilation_cache",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
)


@pytest.fixture
def restore_cache_settings(monkeypatch):
    saved = {name: getattr(jax.config, name) for name in SETTINGS}
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(runtime.CACHE_VAR, raising=False)
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_a_chosen_folder_is_kept(tmp_path, restore_cache_settings):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "chosen"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.7)
    assert runtime.ensure_compilation_cache() == tmp_path / "chosen"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "chosen")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.7


def test_no_folder_yet_turns_on_lnscopes_cache(monkeypatch, tmp_path, restore_cache_settings):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.ensure_compilation_cache() == tmp_path / "xdg" / "lnscope" / "jax"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "lnscope" / "jax")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0


def test_opting_out_leaves_no_cache(monkeypatch, restore_cache_settings):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(runtime.CACHE_VAR, "off")
    assert runtime.ensure_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    monkeypatch.delenv(runtime.CACHE_VAR)
    jax.config.update("jax_enable_compilation_cache", False)  # JAX's own switch, turned off by the user
    assert runtime.ensure_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None


def test_probe_at_init_asks_for_it_after_checking_its_input(monkeypatch):
    calls = []
    monkeypatch.setattr(api, "ensure_compilation_cache", lambda: calls.append(True))
    from tests.analysis.probe.test_study_programs import BATCH, CFG, LENGTH

    with pytest.raises(ValueError, match="seq_len"):
        api.probe_at_init(CFG, seeds=[0], batch_size=BATCH, seq_len=CFG.max_len + 1)
    assert calls == []
    api.probe_at_init(CFG, seeds=[0], batch_size=BATCH, seq_len=LENGTH)  # the program test_study_programs compiles
    assert calls == [True]
