import pytest
import torch

from selfforcing.config import get_preset
from selfforcing.models.wan import WanDiT


def randomize_(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Give every parameter non-trivial random values (a fresh Wan has a zero head)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def make_model():
    def make(preset: str = "tiny-causal", seed: int = 0, **overrides) -> WanDiT:
        torch.manual_seed(seed)
        return randomize_(WanDiT(get_preset(preset).replace(**overrides)), seed=seed).eval()

    return make
