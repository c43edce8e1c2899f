"""The committed notebooks (experiments/notebooks): each ran in full, its outputs kept, as issue 19 lays them out --
a first cell of parameters with a smoke switch and at least three seeds, no cell that failed, and a conclusion that
quotes numbers."""

import ast
import glob
import os
import re

import nbformat
import pytest

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
