"""Shared test helpers: where the official reference outputs and the shared face images live."""
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("DIFFACE_FIXTURES", REPO.parent / "shared" / "fixtures" / "official"))
SHARED_DATA = Path(os.environ.get("DIFFACE_SHARED_DATA", REPO.parent / "shared" / "data"))

# Reference outputs were produced on CPU in float32; keep matmuls exact and results repeatable.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"official fixture folder not found: {FIXTURES} (set DIFFACE_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared face data not found: {SHARED_DATA} (set DIFFACE_SHARED_DATA)")
    return SHARED_DATA
