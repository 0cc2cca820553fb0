"""Experiment trackers (run.report_to): TensorBoard events read back with TensorBoard's own reader equal
logs/train.jsonl and hold the validation grids, also across a resume; MLflow (when installed) the same through
its client; a missing tracker package is one line before any work."""
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from estimators.cli_util import UserError
from test_train_data import write_dataset
from test_train_loop import tiny_config
from tiny_diffusion import single_thread
from trainer.config import config_from_dict, resume_changes
from trainer.tracking import hyperparameters


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("track_ds"))


def _config(dataset, out, **run):
    config = tiny_config(dataset, out, **run)
    config.validation.every = 2
    config.validation.prompts = ["a red sphere in front of a wall"]
    config.validation.levels = [0, 30]
    config.validation.steps = 2
    return config


def _jsonl(out):
    return [json.loads(line) for line in (Path(out) / "logs" / "train.jsonl").read_text().splitlines()]


def _events(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(out) / "logs" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def _assert_scalars_match_jsonl(events, records):
    for name in ("loss", "lr", "grad_norm", "elapsed_s"):
        logged = {e.step: e.value for e in events.Scalars(f"train/{name}")}
        expected = {r["step"]: r[name] for r in records}
        assert sorted(logged) == sorted(expected), name
        for step, value in expected.items():  # TensorBoard stores float32
            assert math.isclose(logged[step], value, rel_tol=1e-6, abs_tol=1e-12), (name, step)


def test_tensorboard_scalars_equal_train_jsonl_and_grids_are_there(dataset, tmp_path):
    from trainer.training import train

    out = tmp_path / "run"
    with single_thread():
        train(_config(dataset, out, max_steps=3, checkpoint_every=0))
    records = _jsonl(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    events = _events(out)
    _assert_scalars_match_jsonl(events, records)
    images = events.Images("validation/grid")
    assert [e.step for e in images] == [2, 3]
    for event in images:  # the PNG TensorBoard holds is the grid saved in validation/
        logged = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        saved = np.asarray(Image.open(out / "validation" / f"step-{event.step:07d}.png").convert("RGB"))
        assert logged.shape == saved.shape and np.array_equal(logged, saved)
    hparams = list((out / "logs" / "tensorboard").glob("*/hparams.yml"))
    assert len(hparams) == 1 and "run.max_steps: 3" in hparams[0].read_text()


def test_resumed_run_replaces_the_tensorboard_steps_after_its_checkpoint(dataset, tmp_path):
    from trainer.training import train

    out = tmp_path / "run"
    with single_thread():
        train(_config(dataset, out, max_steps=3, checkpoint_every=2, keep_last=5))
        first = {r["step"]: r["elapsed_s"] for r in _jsonl(out)}
        train(_config(dataset, out, max_steps=4, checkpoint_every=2, keep_last=5), resume=str(out / "checkpoints" / "step-0000002"))
    records = _jsonl(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[1]["elapsed_s"] == first[2]
    assert records[2]["elapsed_s"] != first[3]  # step 3 trained again
    events = _events(out)
    _assert_scalars_match_jsonl(events, records)  # step 3 of the first run is purged: one value per step
    assert [e.step for e in events.Images("validation/grid")] == [2, 4]


def test_report_to_none_writes_no_tracker_files_and_may_change_on_resume(dataset, tmp_path):
    from trainer.training import train

    out = tmp_path / "run"
    with single_thread():
        train(_config(dataset, out, max_steps=1, checkpoint_every=0, report_to="none"))
    assert (out / "logs" / "train.jsonl").is_file() and not (out / "logs" / "tensorboard").exists()
    refused, allowed = resume_changes({"run.report_to": "tensorboard"}, {"run.report_to": "wandb"})
    assert refused == [] and allowed == ["run.report_to: tensorboard -> wandb"]


def test_report_to_is_checked(dataset, tmp_path):
    with pytest.raises(UserError, match="run.report_to must be one of"):
        config_from_dict(dict(data=dict(dataset=str(dataset)), run=dict(report_to="comet")))


@pytest.mark.parametrize("name", ["wandb", "mlflow"])
def test_missing_tracker_package_is_one_line_before_any_work(dataset, tmp_path, monkeypatch, capsys, name):
    import importlib.util

    from bokeh_cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{dataset: {dataset}}}\nrun: {{output_dir: {out}, report_to: {name}}}\n")
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"bokeh train: error: run.report_to={name} needs the {name} package: pip install {name}"
    assert not out.exists()


def test_hyperparameters_keep_scalars_and_write_lists_as_json():
    settings = {"validation.levels": [0, 30], "validation.prompts": ["a b"], "run.seed": 3, "optim.snr_gamma": None,
                "run.progress": False, "optim.learning_rate": 1e-4, "data.dataset": "/d"}
    assert hyperparameters(settings) == {"validation.levels": "[0, 30]", "validation.prompts": '["a b"]', "run.seed": 3,
                                         "optim.snr_gamma": None, "run.progress": False, "optim.learning_rate": 1e-4,
                                         "data.dataset": "/d"}


def test_mlflow_metrics_equal_train_jsonl_and_grids_are_artifacts(dataset, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from trainer.training import train

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    with single_thread():
        train(_config(dataset, out, max_steps=2, checkpoint_every=0, report_to="mlflow"))
    client = MlflowClient(tracking_uri=uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "bokeh-diffusion"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.data.params["run.max_steps"] == "2"
    for record in _jsonl(out):
        for name in ("loss", "lr", "grad_norm"):
            (metric,) = [m for m in client.get_metric_history(run.info.run_id, f"train/{name}") if m.step == record["step"]]
            assert math.isclose(metric.value, record[name], rel_tol=1e-12)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "validation")]
    assert artifacts == ["validation/step-0000002.png"]


def test_overwrite_clears_the_tracker_folders_and_keeps_other_files(tmp_path):
    from trainer.run_folder import MARKER, clear

    (tmp_path / MARKER).write_text("{}")
    for name in ("logs/tensorboard/events.out.tfevents.1.host", "logs/wandb/run-1/files/a", "logs/mine.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    clear(tmp_path)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["mine.txt"]
