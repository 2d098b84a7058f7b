import pytest
import torch
from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=50, derandomize=True)
settings.load_profile("ci")


@pytest.fixture
def rng() -> torch.Generator:
    """A freshly seeded CPU generator, so each test sees the same random stream."""
    return torch.Generator().manual_seed(0)
