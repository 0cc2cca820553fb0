"""Shared fixtures: tiny random-weight models saved once per session, and the repo's data folders."""
from pathlib import Path

import pytest

from tiny_models import build_tiny_depth_anything, build_tiny_sam

ROOT = Path(__file__).resolve().parent.parent
DEMO_PHOTOS = ROOT / "demo" / "photos"
TEST_PHOTOS = Path(__file__).resolve().parent / "data" / "photos"


@pytest.fixture(scope="session")
def relative_dir(tmp_path_factory):
    """A tiny relative Depth Anything checkpoint directory."""
    return build_tiny_depth_anything(tmp_path_factory.mktemp("da_relative"))


@pytest.fixture(scope="session")
def metric_dir(tmp_path_factory):
    """A tiny metric Depth Anything checkpoint directory (max depth 20 m)."""
    return build_tiny_depth_anything(tmp_path_factory.mktemp("da_metric"), metric=True, max_depth=20)


@pytest.fixture(scope="session")
def sam_dir(tmp_path_factory):
    """A tiny SAM checkpoint directory with its processor."""
    return build_tiny_sam(tmp_path_factory.mktemp("sam"))


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process (device, mixed precision): reset before and after a test that sets it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
