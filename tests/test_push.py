"""`bokeh push`: what each kind of folder uploads (--dry-run, and the arguments HfApi receives with its upload
recorded), the model card rewritten for the repository, refusals as one line, and a fast one-line failure offline."""
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard

from bokeh_cli import main

ROOT = Path(__file__).resolve().parent.parent
ADAPTER_FILES = {"config.json": "{}", "model.safetensors": "weights"}


def _checkpoint(run: Path, step: int) -> Path:
    """A run folder's checkpoint with an adapter and the trainer's other files (which must not be pushed)."""
    folder = run / "checkpoints" / f"step-{step:07d}"
    (folder / "adapter").mkdir(parents=True)
    for name, text in ADAPTER_FILES.items():
        (folder / "adapter" / name).write_text(text)
    (folder / "adapter" / "scratch.txt").write_text("not the adapter's")
    (folder / "optimizer.pt").write_text("state")
    settings = {"model.family": "unet", "model.base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                "data.dataset": "someone/bokeh-set", "run.max_steps": 20}
    (folder / "state.json").write_text(json.dumps({"step": step, "trained_modules": [], "settings": settings}))
    return folder


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    _checkpoint(run, 10)
    _checkpoint(run, 20)
    (run / ".bokeh-train.lock").write_text("pid 1")
    (run / "logs").mkdir()
    (run / "logs" / "train.jsonl").write_text("{}\n")
    return run


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "built"
    (out / "data").mkdir(parents=True)
    for name in ("README.md", "stats.json", "errors.jsonl", "data/train-00000-of-00001.parquet", "data/.train.tmp", "notes.txt"):
        (out / name).write_text(name)
    return out


@pytest.fixture
def recorded(monkeypatch):
    """HfApi's repository calls recorded instead of sent; the upload records the files its patterns select."""
    calls = []
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        sent = [f for f in files if any(fnmatch.fnmatchcase(f, pattern) for pattern in kwargs["allow_patterns"])]
        calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "sent": sent}))
        return "https://hub.example/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_run_folder_pushes_its_latest_adapter_with_a_card(run, recorded, capsys):
    checkpoint = run / "checkpoints" / "step-0000020"
    (checkpoint / "eval.json").write_text(json.dumps({"settings": {"levels": [0, 30]}, "targets": [
        {"name": "LVCorr >= 0.8 (unbounded)", "value": 0.875, "status": "pass", "detail": ""}]}))
    assert main(["push", str(run), "me/bokeh-adapter", "--private", "--revision", "v1"]) == 0
    (_, repo, create), (_, _, branch), (_, _, upload) = recorded
    assert (repo, create) == ("me/bokeh-adapter", {"repo_type": "model", "private": True, "exist_ok": True})
    assert branch == {"branch": "v1", "repo_type": "model", "exist_ok": True}
    assert Path(upload["folder_path"]) == checkpoint / "adapter" and upload["revision"] == "v1"
    assert upload["sent"] == ["README.md", "config.json", "model.safetensors"]
    card = ModelCard.load(checkpoint / "adapter" / "README.md")
    assert card.data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5" and card.data.license == "creativeml-openrail-m"
    assert card.data.datasets == ["someone/bokeh-set"] and "**Trained steps:** 20" in card.text
    assert "--adapter me/bokeh-adapter" in card.text and "| LVCorr >= 0.8 (unbounded) | 0.875 | pass |" in card.text
    assert "me/bokeh-adapter" in capsys.readouterr().out


def test_dataset_pushes_its_card_data_stats_and_errors_only(dataset, recorded):
    assert main(["push", str(dataset), "me/bokeh-set"]) == 0
    (_, _, create), (_, _, upload) = recorded
    assert create["repo_type"] == "dataset" and create["private"] is False
    assert upload["repo_type"] == "dataset" and upload["revision"] is None
    assert upload["sent"] == ["README.md", "data/train-00000-of-00001.parquet", "errors.jsonl", "stats.json"]


def test_dry_run_lists_the_files_and_sends_nothing(run, dataset, recorded, capsys):
    adapter = run / "checkpoints" / "step-0000010" / "adapter"
    for path in (run / "checkpoints" / "step-0000010", adapter):
        assert main(["push", str(path), "me/a", "--dry-run"]) == 0
        listed = [line.split("\t")[0].strip() for line in capsys.readouterr().out.splitlines()[1:]]
        assert listed == ["README.md", "config.json", "model.safetensors"]
    assert not (adapter / "README.md").exists()  # a dry run writes nothing
    assert main(["push", str(dataset), "me/d", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [line.split("\t")[0].strip() for line in out.splitlines()[1:]] == [
        "README.md", "data/train-00000-of-00001.parquet", "errors.jsonl", "stats.json"]
    assert "dataset repository me/d" in out and recorded == []


@pytest.mark.parametrize("case,message", [
    ("unfinished", "is an unfinished `bokeh build` output"),
    ("empty_run", "a training run without a finished checkpoint"),
    ("other", "neither a training run, a checkpoint, an adapter folder nor a `bokeh build` output"),
    ("missing", "no such folder"),
])
def test_what_cannot_be_pushed_is_one_line(tmp_path, dataset, capsys, case, message):
    path = {"unfinished": dataset, "empty_run": tmp_path / "r", "other": tmp_path / "o", "missing": tmp_path / "m"}[case]
    if case == "unfinished":
        (dataset / "_work").mkdir()
    elif case == "empty_run":
        (path / "checkpoints").mkdir(parents=True)
    elif case == "other":
        path.mkdir()
    assert main(["push", str(path), "me/x"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_offline_push_fails_at_once_with_one_line(run):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HOME": str(run)}
    done = subprocess.run([sys.executable, "-m", "bokeh_cli", "push", str(run), "me/x"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "bokeh push: error: HF_HUB_OFFLINE is set: the Hub is off for this shell; unset it to push\n"


def test_hub_errors_are_one_line(run, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def refuse(self, repo_id, **kwargs):
        raise PermissionError("401 Client Error: Unauthorized for url\nmore detail")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    assert main(["push", str(run), "me/x"]) == 2
    assert capsys.readouterr().err == ("bokeh push: error: the Hub refused or could not be reached (PermissionError: "
                                       "401 Client Error: Unauthorized for url)\n")
