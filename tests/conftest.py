"""Shared test fixtures: the recorded reference tensors and the WeNet data samples, both in
tests/fixtures/ (see tests/fixtures/README.md for what each file is and where it came from)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLES = FIXTURES / "samples" / "osum_fake_data"
REFERENCE = FIXTURES / "reference"
# The header metadata of the original checkpoint.safetensors: with it the file written below is
# byte-for-byte the original one (checked once, see tests/fixtures/README.md).
CHECKPOINT_METADATA = {"format": "pt", "note": "LLMASR_Model.state_dict(), float32, tiny dims"}


@pytest.fixture
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture(scope="session")
def reference_safetensors(tmp_path_factory) -> Path:
    """The reference checkpoint as `.safetensors`, written once per session from checkpoint.pt
    (the repository stores only the `.pt`: the same 174 tensors). safetensors cannot store
    shared storage (the `.pt`'s alias keys share it), so each tensor is cloned, as the
    original file was made."""
    sd = torch.load(REFERENCE / "checkpoint.pt", map_location="cpu", weights_only=True)
    path = tmp_path_factory.mktemp("reference") / "checkpoint.safetensors"
    save_file({k: v.clone() for k, v in sd.items()}, path, metadata=CHECKPOINT_METADATA)
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
