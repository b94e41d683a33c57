"""The notebooks run top to bottom and are committed without outputs.

Each notebook of notebooks/ is executed in memory with nbclient (kernel "python3" of this environment,
the repository root as working directory, MPLBACKEND=Agg) and never written back. Needs the test
extras nbclient, nbformat, ipykernel and matplotlib (requirements-test.txt); skipped without them.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300  # per cell; the slowest cell (a toy training stage) takes ~10 s on a quiet 2-core CPU
# Made by the notebooks' imports and by toy.ensure_toy_world() (git-ignored, built in the root by design).
MAY_APPEAR = {"toy_data", "__pycache__", ".ipynb_checkpoints"}


def test_the_course_is_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"], NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} cell {i} was committed with outputs: clear them "
                "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)"
            )


def _entries() -> set[str]:
    return {p.name for p in ROOT.iterdir()} | {f"notebooks/{p.name}" for p in (ROOT / "notebooks").iterdir()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    # The kernel inherits this environment. One torch thread: on a shared 2-core machine two threads
    # were 3-5x slower than one (README), and the notebooks' work is small.
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)  # an in-memory copy: outputs never reach the file
    before = _entries()
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError naming the cell on any error
    new = {e for e in _entries() - before if e.split("/")[-1] not in MAY_APPEAR}
    assert not new, f"{path.name} left files in the repository: {sorted(new)} (write under tempfile.mkdtemp())"
