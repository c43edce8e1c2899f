"""The committed notebooks (experiments/notebooks): each ran in full, its outputs kept, as issue 19 lays them out --
a first cell of parameters with a smoke switch and at least three seeds, no cell that failed, and a conclusion that
quotes numbers -- and each still runs top to bottom with today's code, in smoke mode (``SMOKE = True``: the tiny
corpus, a few steps a stage, one seed) in a kernel of its own, its runs in a scratch folder."""

import ast
import glob
import os
import re

import nbformat
import pytest
from training_fixtures import CACHE_MAX_BYTES, cache_dir, corpus  # noqa: F401  (a fixture)

NOTEBOOKS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "experiments", "notebooks", "*.ipynb")))


def test_there_are_notebooks():
    assert NOTEBOOKS, "experiments/notebooks holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_ran_in_full_and_concludes_with_numbers(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = code[0].source
    assert first.startswith("# Parameters"), f"{path}: the first code cell is not the parameters"
    params = {}
    exec(compile(first, path, "exec"), {}, params)
    assert params["SMOKE"] is False, f"{path} was committed from a smoke run"
    assert len(params["SEEDS"]) >= 3, f"{path}: {params['SEEDS']} are fewer than 3 seeds"
    for i, cell in enumerate(code):
        ast.parse(cell.source)
        assert cell.execution_count == i + 1, f"{path}: code cell {i + 1} was not run in order in one session"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{path}: code cell {i + 1} failed: {errors[0].ename}: {errors[0].evalue}"
    assert any(o.output_type in ("execute_result", "display_data") and "image/png" in o.get("data", {})
               for c in code for o in c.outputs), f"{path} has no plot"
    last = nb.cells[-1]
    assert last.cell_type == "markdown" and last.source.startswith("## Conclusion"), f"{path}: no conclusion last"
    assert len(re.findall(r"\d+(?:\.\d+)?", last.source)) >= 4, f"{path}: the conclusion quotes no numbers"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_top_to_bottom_in_smoke_mode(path, corpus, tmp_path, tmp_path_factory, monkeypatch):  # noqa: F811
    """A cell that raises fails the test (nbclient's CellExecutionError names the cell and the error). The kernel
    reads the test session's JAX compilation cache: programs the recipe tests compiled are loaded, not compiled."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    params = next(c for c in nb.cells if c.cell_type == "code")
    assert "SMOKE = False" in params.source, f"{path}: no 'SMOKE = False' line in the parameters cell"
    assert re.search(r"^WORKDIR = ", params.source, re.M) and re.search(r"^CORPUS = ", params.source, re.M), (
        f"{path}: the parameters cell names no WORKDIR and CORPUS (where the runs go, where the corpus is)")
    # injected parameters, as papermill injects them: the runs go to the scratch folder, and the smoke corpus
    # (CORPUS + '-tiny') is the session's tiny corpus, built once
    params.source = params.source.replace("SMOKE = False", "SMOKE = True") + (
        f"\nWORKDIR, CORPUS = {str(tmp_path / 'runs')!r}, {str(tmp_path / 'omni-synth')!r}")
    os.symlink(corpus, tmp_path / "omni-synth-tiny")
    for name, value in (("JAX_COMPILATION_CACHE_DIR", cache_dir(tmp_path_factory)),
                        ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0"),
                        ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0"),
                        ("JAX_COMPILATION_CACHE_MAX_SIZE", str(CACHE_MAX_BYTES))):
        monkeypatch.setenv(name, value)  # the kernel inherits this environment (and conftest's XLA flags)
    root = os.path.join(os.path.dirname(__file__), "..")  # the notebooks name recipes by their path in the repo
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": root}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count == i + 1 for i, c in enumerate(code)), f"{path}: not every cell ran"
