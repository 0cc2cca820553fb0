"""The weight average (optim.ema_decay): the recurrence worked by hand, swapping in and out, a run's
checkpoints against the recurrence applied to a plain run's weights, and exact resume."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from estimators.cli_util import UserError
from test_train_data import write_dataset
from test_train_loop import _log, tiny_config
from tiny_diffusion import single_thread
from trainer.ema import WeightAverage

UNET_FILE = Path("model/unet/diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("ema_ds"))


@pytest.fixture
def on_cpu(monkeypatch, fresh_accelerate_state):
    """Training on the CPU also where a GPU is visible: the test compares separate runs bit for bit, which CUDA runs
    are not (GPU kernels add in no fixed order)."""
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")


def test_average_follows_the_warmed_up_decay_by_hand():
    p = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([p], decay=0.2)
    assert [average.decay_at(n) for n in (0, 1, 2, 50)] == [0.1, pytest.approx(2 / 11), 0.2, 0.2]
    with torch.no_grad():
        p.fill_(1.0)
    average.update(0)  # 0.1 * 0 + 0.9 * 1
    assert torch.allclose(average.shadow[0], torch.full((2,), 0.9))
    average.update(1)  # (2/11) * 0.9 + (9/11) * 1 = 10.8 / 11
    assert torch.allclose(average.shadow[0], torch.full((2,), 10.8 / 11))
    with torch.no_grad():
        p.fill_(-1.0)
    average.update(2)  # 0.2 * 10.8/11 + 0.8 * -1
    assert torch.allclose(average.shadow[0], torch.full((2,), 0.2 * 10.8 / 11 - 0.8))
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        WeightAverage([p], decay=1.0)


def test_swapped_gives_the_average_inside_and_the_trained_weights_back_exactly():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))
    average = WeightAverage([p], decay=0.5)
    average.shadow[0].copy_(torch.tensor([0.1234567, 0.5, -7.25]))
    with average.swapped():
        assert torch.equal(p.detach(), torch.tensor([0.1234567, 0.5, -7.25]).to(torch.bfloat16))
    assert torch.equal(p.detach(), torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16))
    assert average.shadow[0].dtype == torch.float32 and average.shadow[0][0].item() == pytest.approx(0.1234567, abs=1e-7)


def test_checkpoints_hold_the_average_of_a_plain_runs_weights_and_resume_exactly(dataset, tmp_path, on_cpu):
    """The run's weights do not depend on the average: a plain run's per-step checkpoints give w_1..w_4, the base
    folder w_0, and the recurrence s <- d_n s + (1 - d_n) w_(n+1) worked over them must equal the averaged run's
    step-4 UNet; the averaged run's trained_weights file must equal w_4, and a resumed run the uninterrupted one."""
    from trainer.training import train

    decay = 0.2
    with single_thread():
        train(tiny_config(dataset, tmp_path / "plain", checkpoint_every=1, keep_last=10))
        averaged = tiny_config(dataset, tmp_path / "avg")
        averaged.optim.ema_decay = decay
        train(averaged)
    plain, avg = tmp_path / "plain", tmp_path / "avg"
    assert [r["loss"] for r in _log(plain)] == [r["loss"] for r in _log(avg)]  # the average never feeds back

    w = [load_file(str(plain / "base/unet/diffusion_pytorch_model.safetensors"))]
    w += [load_file(str(plain / f"checkpoints/step-{n:07d}" / UNET_FILE)) for n in range(1, 5)]
    expected = {k: v.double() for k, v in w[0].items()}
    for n in range(4):
        d = min(decay, (1 + n) / (10 + n))
        expected = {k: d * v + (1 - d) * w[n + 1][k].double() for k, v in expected.items()}
    got = load_file(str(avg / "checkpoints/step-0000004" / UNET_FILE))
    assert got.keys() == expected.keys()
    moved = [k for k in got if not torch.equal(w[4][k], w[0][k])]
    assert moved, "training moved no UNet weight"
    for k in got:
        assert torch.allclose(got[k].double(), expected[k], rtol=0, atol=1e-6), k
    assert any(not torch.allclose(got[k], w[4][k], atol=1e-6) for k in moved)  # the average, not the last weights

    trained = load_file(str(avg / "checkpoints/step-0000004/trained_weights.safetensors"))
    unet_trained = [t for t in trained.values() if any(t.shape == w[4][k].shape and torch.equal(t, w[4][k]) for k in moved)]
    assert unet_trained, "trained_weights.safetensors does not hold the last trained UNet weights"

    # resume from step 2: with the average on, the same average; with it off, the same training
    for ema, name in ((decay, "cut"), (0.0, "cut_plain")):
        cut = tmp_path / name
        shutil.copytree(avg, cut)
        shutil.rmtree(cut / "checkpoints/step-0000004")
        config = tiny_config(dataset, cut)
        config.optim.ema_decay = ema
        with single_thread():
            train(config, resume="latest")
        assert [r["loss"] for r in _log(cut)] == [r["loss"] for r in _log(avg)]
    resumed = load_file(str(tmp_path / "cut/checkpoints/step-0000004" / UNET_FILE))
    assert all(torch.equal(resumed[k], got[k]) for k in got)
    resumed_plain = load_file(str(tmp_path / "cut_plain/checkpoints/step-0000004" / UNET_FILE))
    assert all(torch.equal(resumed_plain[k], w[4][k]) for k in got)


@pytest.mark.parametrize("decay", [1.0, -0.1, float("nan")])
def test_bad_decay_is_one_line(decay):
    from trainer.config import config_from_dict

    with pytest.raises(UserError, match=r"optim.ema_decay must be in \[0, 1\)"):
        config_from_dict(dict(model=dict(family="tiny"), data=dict(dataset="x"), optim=dict(ema_decay=decay)))
