from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "docs"


@pytest.fixture
def sample_pdf() -> bytes:
    return (SAMPLES / "reference" / "operations.pdf").read_bytes()
