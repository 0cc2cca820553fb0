"""Hostile inputs and operator mistakes around `bokeh train` and its run folder: a new run into a folder that
holds one, two runs at once, changed settings on resume, a truncated data shard, a crafted pickle, a corrupt
image row, and checkpoints made durable before they are named."""
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from estimators.cli_util import UserError
from test_train_data import write_dataset
from test_train_loop import _log, tiny_config
from tiny_diffusion import assert_same_floats, single_thread

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("safety_ds"))


def _train(config, **kwargs):
    from trainer.training import train

    with single_thread():
        return train(config, **kwargs)


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (but the lock, whose holder line changes) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".bokeh-train.lock"}


# --- a new run into a folder that holds a run; --overwrite; the lock ---------------------------------------------


def test_new_run_into_a_folder_holding_a_run_is_refused_before_any_work(dataset, tmp_path):
    out = tmp_path / "run"
    _train(tiny_config(dataset, out))
    before = _snapshot(out)
    with pytest.raises(UserError) as exc:
        _train(tiny_config(dataset, out, max_steps=2))
    message = str(exc.value)
    assert "\n" not in message and "step 4" in message
    assert "--resume latest" in message and "--overwrite" in message
    assert _snapshot(out) == before  # nothing written, nothing pruned


def test_overwrite_removes_only_what_the_trainer_wrote(dataset, tmp_path):
    from pipelines.loading import checkpoint_paths

    out = tmp_path / "run"
    _train(tiny_config(dataset, out))
    own = {"notes.txt": b"mine", "logs/mine.txt": b"mine too", "checkpoints/README": b"keep"}
    for name, data in own.items():
        (out / name).write_bytes(data)
    result = _train(tiny_config(dataset, out, max_steps=2, checkpoint_every=1), overwrite=True)
    assert result["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["README", "step-0000001", "step-0000002"]
    assert [r["step"] for r in _log(out)] == [1, 2]  # the previous run's lines are gone
    assert all((out / name).read_bytes() == data for name, data in own.items())
    assert checkpoint_paths(out)[1].endswith("step-0000002/adapter")  # what `bokeh sample --checkpoint` takes


def test_overwrite_needs_the_trainers_marker_and_contradicts_resume(dataset, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-0000005").mkdir(parents=True)
    (out / "config.yaml").write_text("not written by bokeh train\n")
    before = _snapshot(out)
    for overwrite in (False, True):
        with pytest.raises(UserError, match="no .bokeh-train.json marker") as exc:
            _train(tiny_config(dataset, out), overwrite=overwrite)
        assert "\n" not in str(exc.value)
    assert _snapshot(out) == before
    with pytest.raises(UserError, match="--overwrite .*--resume"):
        _train(tiny_config(dataset, tmp_path / "other"), resume="latest", overwrite=True)


def test_a_run_that_failed_before_training_can_be_run_again(dataset, tmp_path):
    out = tmp_path / "run"
    config = tiny_config(dataset, out, max_steps=1)
    config.adapter["no_such_setting"] = 1
    with pytest.raises(UserError, match="adapter settings"):
        _train(config)
    assert _train(tiny_config(dataset, out, max_steps=1))["step"] == 1  # no --overwrite needed: nothing was trained


def test_a_second_run_into_a_locked_folder_fails_at_once(dataset, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from trainer.run_folder import RunLock\n"
         f"with RunLock({str(out)!r}):\n    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError) as exc:
            _train(tiny_config(dataset, out))
        message = str(exc.value)
        assert "\n" not in message and f"pid {holder.pid}" in message and "in use" in message
        assert not (out / "logs").exists() and not (out / "base").exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert _train(tiny_config(dataset, out, max_steps=1))["step"] == 1  # released with its holder


# --- settings on resume ------------------------------------------------------------------------------------------


def test_resume_refuses_settings_that_change_the_job(dataset, tmp_path):
    out = tmp_path / "run"
    _train(tiny_config(dataset, out, max_steps=2))
    before = _snapshot(out)
    changes = [("optim", "learning_rate", 2e-3, "optim.learning_rate: 0.001 -> 0.002"),
               ("adapter", "lora_rank", 4, "adapter.lora_rank: 2 -> 4"),
               ("data", "batch_size", 2, "data.batch_size: 3 -> 2"),
               ("run", "seed", 1, "run.seed: 0 -> 1")]
    for section, key, value, said in changes:
        config = tiny_config(dataset, out, max_steps=4)
        node = getattr(config, section)
        if isinstance(node, dict):
            node[key] = value
        else:
            setattr(node, key, value)
        with pytest.raises(UserError) as exc:
            _train(config, resume="latest")
        assert "\n" not in str(exc.value) and said in str(exc.value), str(exc.value)
    assert _snapshot(out) == before


def test_resume_changes_sorts_settings_into_kept_and_free():
    from trainer.config import job_settings, resume_changes

    saved = job_settings(tiny_config("hub/some-dataset", "runs/a"), processes=1)
    current = job_settings(tiny_config("hub/some-dataset", "elsewhere/b", max_steps=9, keep_last=1), processes=2)
    current.update({"validation.steps": 3, "optim.ema_decay": 0.9, "model.tiny.max_tokens": 20})
    refused, allowed = resume_changes(saved, current)
    # more processes draw more rows a step; the tiny model's size is the network's shape; the folder is not compared
    assert refused == ["model.tiny.max_tokens: 12 -> 20", "processes: 1 -> 2"]
    assert allowed == ["optim.ema_decay: 0.0 -> 0.9", "run.keep_last: 5 -> 1", "run.max_steps: 4 -> 9", "validation.steps: 25 -> 3"]
    assert resume_changes(saved, {**current, "adapter.lora_rank": None})[0][0] == "adapter.lora_rank: 2 -> null"
    del current["adapter.lora_rank"]
    assert resume_changes(saved, current)[0][0] == "adapter.lora_rank: 2 -> unset"


def test_resume_allows_and_says_steps_logging_and_checkpoints(dataset, tmp_path, capsys):
    import yaml

    out = tmp_path / "run"
    _train(tiny_config(dataset, out, max_steps=2))
    capsys.readouterr()
    result = _train(tiny_config(dataset, out, max_steps=4, log_every=2, checkpoint_every=4), resume="latest")
    said = capsys.readouterr().err
    assert result["step"] == 4
    assert "run.max_steps: 2 -> 4" in said and "run.log_every: 1 -> 2" in said and "run.checkpoint_every: 2 -> 4" in said
    assert [r["step"] for r in _log(out)] == [1, 2, 4]
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["max_steps"] == 4


def test_max_steps_at_or_below_the_checkpoint(dataset, tmp_path, capsys):
    from bokeh_cli import main

    out = tmp_path / "run"
    _train(tiny_config(dataset, out, max_steps=4))
    before = _snapshot(out)
    with pytest.raises(UserError, match=r"is at step 4.*nothing to train; raise run.max_steps above 4"):
        _train(tiny_config(dataset, out, max_steps=3), resume="latest")
    assert _snapshot(out) == before
    # equal: the run is complete; exit 0 (a retry loop of `--resume latest` must not fail on a finished run)
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(tiny_config(dataset, out).to_dict()))
    capsys.readouterr()
    with single_thread():
        assert main(["train", str(config), "--resume", "latest"]) == 0
    printed = capsys.readouterr().out
    assert "nothing to train" in printed and "step 4" in printed and "loss nan" not in printed
    assert _snapshot(out) == before
    with single_thread():
        assert main(["train", str(config), "run.max_steps=2", "--resume", "latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "raise run.max_steps above 4" in err


def test_resume_from_an_earlier_checkpoint_drops_the_later_ones(dataset, tmp_path):
    from trainer.checkpoint import checkpoint_dirs

    out = tmp_path / "run"
    _train(tiny_config(dataset, out, checkpoint_every=1))
    result = _train(tiny_config(dataset, out, max_steps=3, checkpoint_every=1), resume=str(out / "checkpoints" / "step-0000002"))
    assert result["step"] == 3
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000001", "step-0000002", "step-0000003"]
    assert [r["step"] for r in _log(out)] == [1, 2, 3]


# --- untrusted files ----------------------------------------------------------------------------------------------


def test_truncated_training_shard_is_one_line(dataset, tmp_path, capsys):
    import shutil

    from bokeh_cli import main

    data = tmp_path / "data_copy"
    shutil.copytree(dataset, data)
    shard = next((data / "data").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(tiny_config(data, tmp_path / "run").to_dict()))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and shard.name in err and "Traceback" not in err


class _Payload:
    """Unpickling this calls ``Path.write_text``: code a checkpoint must never run."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "ran"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch on the plain pickle
def test_crafted_optimizer_pickle_does_not_run_and_is_one_line(dataset, tmp_path):
    out = tmp_path / "run"
    _train(tiny_config(dataset, out, max_steps=2))
    ckpt = out / "checkpoints" / "step-0000002"
    saved = (ckpt / "optimizer.pt").read_bytes()
    target = tmp_path / "pwned.txt"
    for write in (lambda f: pickle.dump({"state": _Payload(target), "param_groups": []}, f),  # a plain pickle
                  lambda f: torch.save({"state": _Payload(target), "param_groups": []}, f),  # torch's zip layout
                  lambda f: torch.save({"x": torch.zeros(1)}, f)):  # loads, but is no optimizer state
        with open(ckpt / "optimizer.pt", "wb") as f:
            write(f)
        with pytest.raises(UserError) as exc:
            _train(tiny_config(dataset, out, max_steps=4), resume="latest")
        assert not target.exists()
        assert "\n" not in str(exc.value) and str(ckpt / "optimizer.pt") in str(exc.value)
    (ckpt / "optimizer.pt").write_bytes(saved)
    (ckpt / "rng.pt").write_bytes(saved[: len(saved) // 2])  # truncated
    with pytest.raises(UserError, match=f"cannot load {ckpt / 'rng.pt'}"):
        _train(tiny_config(dataset, out, max_steps=4), resume="latest")


def test_damaged_checkpoint_weights_are_one_line(dataset, tmp_path, capsys):
    from bokeh_cli import main

    out = tmp_path / "run"
    _train(tiny_config(dataset, out, max_steps=2))
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps(tiny_config(dataset, out, max_steps=3).to_dict()))
    ckpt = out / "checkpoints" / "step-0000002"
    for damaged in (ckpt / "model" / "unet" / "diffusion_pytorch_model.safetensors", ckpt / "state.json"):
        whole = damaged.read_bytes()
        damaged.write_bytes(whole[:40])
        with single_thread():
            assert main(["train", str(config), "--resume", "latest"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("bokeh train: error:")]  # (libraries draw progress bars)
        assert len(errors) == 1 and str(damaged) in errors[0] and "Traceback" not in err
        damaged.write_bytes(whole)
    state = ckpt / "state.json"
    whole = state.read_bytes()
    state.write_text(json.dumps({k: v for k, v in json.loads(whole).items() if k != "settings"}))
    with single_thread():
        assert main(["train", str(config), "--resume", "latest"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bokeh train: error:")]
    assert len(errors) == 1 and "records no run settings" in errors[0] and str(ckpt) in errors[0]
    state.write_bytes(whole)
    with single_thread():
        assert main(["train", str(config), "--resume", "latest"]) == 0  # the mended checkpoint resumes


# --- a corrupt image row --------------------------------------------------------------------------------------------


def _with_corrupt_row(source: Path, out: Path, row_id: str) -> Path:
    """A copy of the dataset whose row ``row_id`` holds bytes that are no image."""
    out.mkdir(parents=True)
    (out / "data").mkdir()
    for shard in (source / "data").glob("*.parquet"):
        rows = pq.read_table(shard).to_pylist()
        for row in rows:
            if row["id"] == row_id:
                row["image"] = {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": "broken.png"}
        pq.write_table(pa.Table.from_pylist(rows), out / "data" / shard.name)
    return out


def test_a_corrupt_row_is_skipped_recorded_and_changes_no_other_batch(dataset, tmp_path):
    from trainer.data import BatchSampler, load_rows

    def config(data, name, **run):
        c = tiny_config(data, tmp_path / name, **{"max_steps": 6, **run})
        c.optim.learning_rate = 0.0  # each step's loss then depends on its batch only
        return c

    probe = config(dataset, "probe")
    d = probe.data
    rows = load_rows(str(dataset))
    sampler = BatchSampler(rows, d.batch_size, probe.run.seed, d.contrastive_ratio, d.tie_probability, d.k_dropout,
                           d.caption_dropout, d.real_rows, d.crop_min_fraction, d.uncond_dropout)
    bad = rows.ids[sampler.plan(1).rows[-1]]  # a row of step 2's batch
    hit = [bad in {rows.ids[r] for r in sampler.plan(n).rows} for n in range(6)]
    assert hit[1] and not all(hit)
    broken = _with_corrupt_row(dataset, tmp_path / "broken", bad)

    _train(config(dataset, "clean"))
    with pytest.warns(UserWarning, match=f"row {bad}: image"):
        result = _train(config(broken, "broken"))
    assert result["step"] == 6 and result["bad_rows"] == 1
    clean, skipped = [r["loss"] for r in _log(tmp_path / "clean")], [r["loss"] for r in _log(tmp_path / "broken")]
    for n in range(6):  # batches without the row are the clean run's; those with it differ
        assert (clean[n] == skipped[n]) != hit[n], n
    errors = [json.loads(line) for line in (tmp_path / "broken" / "logs" / "errors.jsonl").read_text().splitlines()]
    assert [(e["step"], e["row"]) for e in errors] == [(2, bad)] and "image" in errors[0]["error"]

    # deterministic and resumable: a run cut at step 2 and resumed repeats the uninterrupted one, errors file too
    cut = config(broken, "cut", max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _train(cut)
        _train(config(broken, "cut"), resume="latest")
    assert_same_floats([r["loss"] for r in _log(tmp_path / "cut")], skipped)
    assert (tmp_path / "cut" / "logs" / "errors.jsonl").read_text() == (tmp_path / "broken" / "logs" / "errors.jsonl").read_text()


def test_load_plan_leaves_out_unreadable_images_and_weighs_rows_of_an_unreadable_mask_alike(tmp_path):
    from test_train_data import _mask_dataset, _rewrite
    from trainer.data import BatchPlan, Crop, ImageLoader, load_rows, without_rows

    def corrupt(rows):  # the pivot's mask (shared by its renders r0, r1) and render r1's image
        rows[0]["subject_mask"] = {"bytes": b"not a png", "path": None}
        rows[2]["image"] = {"bytes": b"", "path": "r1.png"}
    with pytest.warns(UserWarning, match="1 of 4 rows have no subject mask"):
        data = load_rows(str(_rewrite(_mask_dataset(tmp_path), corrupt)), masks=True)
    plan = BatchPlan([0, 1, 2, 3], [0.0, 10.0, 20.0, 3.0], ["a box"] * 3 + ["x"], [-1, 0, 0, -1], [Crop()] * 4, False)
    loader = ImageLoader(data, 16)
    kept, pixels, weights, problems = loader.load_plan(plan, 3.0)
    assert kept.rows == [0, 1, 3] and kept.pivot_ids == [-1, 0, -1]
    assert torch.equal(pixels, loader.load([0, 1, 3], [Crop()] * 3))
    assert torch.equal(weights, torch.ones(3, 1, 16, 16))  # no usable mask: every pixel weighs 1
    assert sorted(problems) == ["p", "r1"]
    assert problems["r1"].startswith("row r1: image: ") and problems["r1"].endswith("left out of its batches")
    assert problems["p"].startswith("row p: subject mask: ") and problems["p"].endswith("weigh every pixel alike")
    assert loader.load_plan(without_rows(plan, {0, 1, 3}), None)[1] is None  # nothing readable left: an empty batch


def test_without_rows_keeps_ties_to_a_kept_pivot():
    from trainer.data import BatchPlan, Crop, without_rows

    plan = BatchPlan([7, 8, 9, 10], [0.0, 5.0, 10.0, 15.0], ["a", "b", "c", "d"], [-1, 0, -1, 0], [Crop()] * 4, True)
    kept = without_rows(plan, {9})
    assert (kept.rows, kept.levels, kept.captions, kept.pivot_ids) == ([7, 8, 10], [0.0, 5.0, 15.0], ["a", "b", "d"], [-1, 0, 0])
    orphaned = without_rows(plan, {7})  # the pivot gone: its renders are no longer tied
    assert (orphaned.rows, orphaned.pivot_ids) == ([8, 9, 10], [-1, -1, -1])
    assert without_rows(plan, set()) is plan


# --- durable checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_files_and_folders_are_synced_before_and_after_the_rename(dataset, tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "run"
    _train(tiny_config(dataset, out, max_steps=2, checkpoint_every=2))
    final = out / "checkpoints" / "step-0000002"
    tmp = out / "checkpoints" / ".step-0000002.tmp"
    moves = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(final)]
    assert len(moves) == 1 and events[moves[0]][1] == str(tmp)
    synced_before = {e[1] for e in events[: moves[0]] if e[0] == "fsync"}
    written = [tmp / p.relative_to(final) for p in final.rglob("*")] + [tmp]
    assert written and all(str(p) in synced_before for p in written), [str(p) for p in written if str(p) not in synced_before]
    assert ("fsync", str(out / "checkpoints")) in events[moves[0] + 1:]


# --- bokeh sample ----------------------------------------------------------------------------------------------------


def test_sample_refuses_a_level_given_twice(tmp_path, capsys):
    from bokeh_cli import main

    for levels in (["0", "0"], ["5", "12", "5.0"]):
        code = main(["sample", "--base", str(tmp_path / "no_base"), "--adapter", str(tmp_path / "no_adapter"), "--family", "unet",
                     "--prompt", "x", "--bokeh", *levels, "-o", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and "twice" in err and "no_base" not in err  # before any loading
    assert not (tmp_path / "o").exists()
