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


def _pipeline_folder(root: Path, build, model_class, subfolder: str, adapter_class, **randomise_kwargs) -> Path:
    """``root`` with a tiny random-weight base model (base/), a fresh bokeh adapter on it (fresh/) and a randomised
    one (random/)."""
    from tests.tiny_pipelines import randomise

    build(root / "base")
    model = model_class.from_pretrained(root / "base", subfolder=subfolder)
    adapter_class(model, lora_rank=4, bokeh_context_dim=32).save_pretrained(root / "fresh")
    randomise(adapter_class(model, lora_rank=4, bokeh_context_dim=32), **randomise_kwargs).save_pretrained(root / "random")
    return root


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory):
    """A tiny random-weight SD folder (base/) with a fresh (fresh/) and a randomised (random/) bokeh adapter."""
    from diffusers import UNet2DConditionModel

    from bokeh_models.unet_adapter import BokehUNetAdapter
    from tests.tiny_pipelines import build_tiny_sd

    return _pipeline_folder(tmp_path_factory.mktemp("sd"), build_tiny_sd, UNet2DConditionModel, "unet", BokehUNetAdapter,
                            seed=3)


@pytest.fixture(scope="session")
def flux_dir(tmp_path_factory):
    """A tiny random-weight FLUX folder (base/) with a fresh (fresh/) and a randomised (random/) bokeh adapter."""
    from diffusers import FluxTransformer2DModel

    from bokeh_models.flux_adapter import BokehFluxAdapter
    from tests.tiny_pipelines import build_tiny_flux

    return _pipeline_folder(tmp_path_factory.mktemp("flux"), build_tiny_flux, FluxTransformer2DModel, "transformer",
                            BokehFluxAdapter, seed=4, std=0.2)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process (device, mixed precision): reset before and after a test that sets it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
