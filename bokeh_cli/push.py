"""``bokeh push PATH REPO_ID``: publish a trained adapter or a built dataset to the Hugging Face Hub.

PATH is a training run folder (its latest checkpoint's adapter), a checkpoint folder or an adapter folder (a model
repository: the adapter's config, weights and model card, the card rewritten first with the repository's id in its
sampling lines and the scores of an ``eval.json`` next to it), or a finished ``bokeh build`` output (a dataset
repository: its card, data shards, stats and error list; never ``_work/``). ``HfApi.create_repo`` then
``upload_folder`` with the allowed names, so nothing else in the folder leaves the machine.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from estimators.cli_util import UserError

#: What an adapter repository holds (the adapter folder's files).
ADAPTER_FILES = ["config.json", "*.safetensors", "README.md"]
#: What a dataset repository holds (the files of OUT that ``bokeh build`` publishes for readers).
DATASET_FILES = ["README.md", "stats.json", "errors.jsonl", "data/*.parquet"]


@dataclass
class PushPlan:
    """What ``bokeh push`` uploads: ``folder``'s ``files`` (matched by ``patterns``) to a ``repo_type`` repository;
    ``state`` is the adapter's checkpoint state (for its card), None for datasets and bare adapters."""

    kind: str
    repo_type: str
    folder: Path
    patterns: list[str]
    files: list[str]
    state: Optional[dict[str, Any]] = None


def _matched(folder: Path, patterns: list[str]) -> list[str]:
    """The files under ``folder`` (relative POSIX paths) that ``upload_folder(allow_patterns=patterns)`` sends."""
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, allow_patterns=patterns))


def _adapter_plan(adapter: Path, what: str) -> PushPlan:
    from trainer.checkpoint import read_state

    if not ((adapter / "config.json").is_file() and list(adapter.glob("*.safetensors"))):
        raise UserError(f"{adapter}: not an adapter folder (config.json and a .safetensors file)")
    state = read_state(adapter.parent) if (adapter.parent / "state.json").is_file() else None
    files = sorted(set(_matched(adapter, ADAPTER_FILES)) | {"README.md"})  # the card is written before the upload
    return PushPlan(what, "model", adapter, ADAPTER_FILES, files, state)


def plan_push(path: str | Path) -> PushPlan:
    """What pushing ``path`` means (see the module's docstring); a one-line UserError when it is none of them."""
    from dataset_tools.writer import Layout
    from trainer.checkpoint import checkpoint_dirs

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{path}: no such folder")
    layout = Layout(folder)
    if layout.stats.is_file() or layout.work.is_dir():
        if not layout.is_finished():
            raise UserError(f"{path} is an unfinished `bokeh build` output (_work/ is there): finish it with "
                            "`bokeh build ... --resume` before pushing")
        plan = PushPlan("dataset", "dataset", folder, DATASET_FILES, _matched(folder, DATASET_FILES))
        if not any(f.startswith("data/") for f in plan.files):
            raise UserError(f"{path}: a `bokeh build` output without data shards (data/*.parquet): nothing to push")
        return plan
    if (folder / "adapter").is_dir():
        return _adapter_plan(folder / "adapter", "checkpoint")
    if (folder / "checkpoints").is_dir():
        found = checkpoint_dirs(folder)
        if not found:
            raise UserError(f"{path}: a training run without a finished checkpoint: nothing to push")
        return _adapter_plan(found[-1] / "adapter", f"run (latest checkpoint {found[-1].name})")
    if (folder / "config.json").is_file():
        return _adapter_plan(folder, "adapter")
    raise UserError(f"{path}: neither a training run, a checkpoint, an adapter folder nor a `bokeh build` output")


def _hub_error(exc: Exception) -> UserError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return UserError(f"the Hub refused or could not be reached ({type(exc).__name__}: {first[:200]})")


def push(plan: PushPlan, repo_id: str, private: bool = False, revision: Optional[str] = None,
         eval_path: Optional[Path] = None) -> str:
    """Create ``repo_id`` (when absent) and upload ``plan``'s files to it (to branch ``revision``, created when
    absent); an adapter's card is rewritten first. Returns the commit URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import is_offline_mode

    if is_offline_mode():
        raise UserError("HF_HUB_OFFLINE is set: the Hub is off for this shell; unset it to push")
    if plan.repo_type == "model":
        from trainer.model_card import write_model_card

        write_model_card(plan.folder, plan.state or {}, adapter_ref=repo_id, eval_path=eval_path)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type=plan.repo_type, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=plan.folder, repo_type=plan.repo_type, revision=revision,
                                 allow_patterns=plan.patterns, commit_message=f"bokeh push: {plan.kind}")
    except Exception as exc:  # noqa: BLE001 - network, authentication and Hub errors: one line
        raise _hub_error(exc) from None
    return str(getattr(info, "commit_url", info))


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``push`` subcommand."""
    parser = sub.add_parser(
        "push",
        help="upload a trained adapter (run, checkpoint or adapter folder) or a built dataset to the Hugging Face Hub",
        description="Upload PATH to the Hub repository REPO_ID (created when absent). A training run folder pushes its "
        "latest checkpoint's adapter, a checkpoint or adapter folder its adapter (config.json, weights and README.md, the "
        "model card, rewritten with REPO_ID and the scores of an eval.json next to the adapter); a `bokeh build` output "
        "pushes README.md, data/, stats.json and errors.jsonl as a dataset repository. Log in first (hf auth login or HF_TOKEN).",
    )
    parser.add_argument("path", metavar="PATH", help="training run, checkpoint, adapter folder or `bokeh build` output")
    parser.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, owner/name")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", metavar="BRANCH", help="push to this branch (created from main when absent)")
    parser.add_argument("--eval", dest="eval_path", metavar="EVAL_JSON", type=Path,
                        help="the `bokeh eval` result whose scores the model card shows (default: eval.json next to the adapter)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded, and upload nothing")
    parser.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    """Plan the upload, then list it (--dry-run) or push it."""
    plan = plan_push(args.path)
    if args.eval_path is not None and (plan.repo_type != "model" or not args.eval_path.is_file()):
        raise UserError(f"--eval {args.eval_path}: " + ("a dataset has no scores" if plan.repo_type != "model" else "no such file"))
    if args.dry_run:
        card = " (README.md: the model card, rewritten for the push)" if plan.repo_type == "model" else ""
        print(f"would push {plan.kind} {plan.folder} to {plan.repo_type} repository {args.repo_id}{card}:")
        for name in plan.files:
            path = plan.folder / name
            print(f"  {name}\t" + (f"{path.stat().st_size} bytes" if path.is_file() else "written at the push"))
        return 0
    url = push(plan, args.repo_id, args.private, args.revision, args.eval_path)
    print(f"pushed {len(plan.files)} files of {plan.kind} {plan.folder} to {args.repo_id}: {url}")
    return 0
