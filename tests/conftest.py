"""Shared test fixtures: where ../shared lives, and skips with reasons."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "samples" / "osum_fake_data"
REFERENCE = SHARED / "reference"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present (CI and sessions have ../shared beside the checkout)")
    return path


@pytest.fixture
def samples_dir() -> Path:
    return _need(SAMPLES)


@pytest.fixture
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
