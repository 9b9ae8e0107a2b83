"""Every notebook runs under a real Jupyter kernel (nbclient + ipykernel) at a reduced size, is stored
without outputs, and matches its paired py:percent script (jupytext)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # one cell at the reduced size takes seconds; a hung kernel must still end the test


def test_there_are_notebooks() -> None:
    assert len(NOTEBOOKS) >= 4, f"notebooks/ holds {len(NOTEBOOKS)} .ipynb"
    assert all(p.name[:2].isdigit() for p in NOTEBOOKS), "notebooks are numbered"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} holds outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_paired_with_its_script(path: Path) -> None:
    script = path.with_suffix(".py")
    assert script.exists(), f"{path.name} has no paired {script.name} (jupytext --sync notebooks/*.ipynb)"
    source = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]
    assert source(jupytext.read(script)) == source(nbformat.read(path, as_version=4)), (
        f"{path.name} and {script.name} differ: run `jupytext --sync notebooks/{path.name}`"
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_in_a_kernel(path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The kernel inherits this environment: the reduced size, the inline matplotlib backend,
    # JAX's persistent compilation cache shared with the rest of the suite (the notebooks probe the
    # same harness models, so later ones reuse earlier compilations), and strict dtype promotion.
    monkeypatch.setenv("LNSCOPE_NOTEBOOK_SCALE", "small")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures as outputs
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", os.environ.get("LNSCOPE_TEST_JAX_CACHE", str(ROOT / ".jax_cache")))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    monkeypatch.setenv("JAX_NUMPY_DTYPE_PROMOTION", "strict")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} drew no figure"
