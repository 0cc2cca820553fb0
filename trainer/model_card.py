"""The model card (``README.md``) of a trained adapter folder: Hub metadata (huggingface_hub's ``ModelCardData``)
and a page on what the adapter is, what K means, what it trained on and how, how to sample it, and the scores of a
``bokeh eval`` run on it when its ``eval.json`` is found.

Everything comes from the checkpoint the adapter belongs to: its ``state.json`` (step, trained modules and the
run's settings, ``trainer.config.job_settings``), the dataset's Parquet footers (row count) and ``eval.json``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

CARD = "README.md"
EVAL_FILE = "eval.json"
TAGS = ["bokeh", "bokeh-diffusion", "depth-of-field", "text-to-image"]
#: Licences of well-known base models, as Hub metadata fields (a local base folder's own card is read instead).
BASE_LICENSES: dict[str, dict[str, str]] = {
    "black-forest-labs/FLUX.1-dev": {
        "license": "other", "license_name": "flux-1-dev-non-commercial-license",
        "license_link": "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md",
    },
    "black-forest-labs/FLUX.1-schnell": {"license": "apache-2.0"},
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {"license": "creativeml-openrail-m"},
    "runwayml/stable-diffusion-v1-5": {"license": "creativeml-openrail-m"},
    "stabilityai/stable-diffusion-2-1": {"license": "openrail++"},
}
#: The settings the card lists under "Training", in this order (dotted keys of the job settings).
HIGHLIGHTS = ("model.family", "model.train_base", "adapter", "data.resolution", "data.batch_size", "processes",
              "run.gradient_accumulation_steps", "data.contrastive_ratio", "data.tie_probability", "data.k_dropout",
              "data.caption_dropout", "data.subject_weight", "optim.learning_rate", "optim.lr_scheduler",
              "optim.warmup_steps", "optim.ema_decay", "run.max_steps", "run.mixed_precision", "run.seed")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(name: Optional[str]) -> Optional[str]:
    """``name`` when it reads as a Hub repository id (owner/name) and is no local path, else None."""
    if not name or Path(name).expanduser().exists() or not _REPO_ID.match(name):
        return None
    return name


def base_license(base: Optional[str]) -> dict[str, str]:
    """The license metadata of ``base``: a local folder's own card, else the table of known ids; {} when unknown."""
    if not base:
        return {}
    card = Path(base).expanduser() / CARD
    if card.is_file():
        from huggingface_hub import ModelCard

        try:
            data = ModelCard.load(card).data
        except Exception:  # noqa: BLE001 - a card without or with broken metadata: the licence is unknown
            return {}
        return {key: getattr(data, key) for key in ("license", "license_name", "license_link") if getattr(data, key, None)}
    return dict(BASE_LICENSES.get(base, {}))


def dataset_rows(dataset: str) -> Optional[int]:
    """Rows of a local ``bokeh build`` output (or folder of Parquet files), from the Parquet footers; None otherwise."""
    import pyarrow.parquet as pq

    folder = Path(dataset).expanduser()
    files = sorted(folder.glob("data/*.parquet")) or sorted(folder.glob("*.parquet"))
    if not files:
        return None
    try:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except (OSError, ValueError):
        return None


def find_eval(adapter_dir: Path) -> Optional[Path]:
    """The ``eval.json`` next to the adapter: in its folder, else in the checkpoint folder holding it."""
    for folder in (adapter_dir, adapter_dir.parent):
        if (folder / EVAL_FILE).is_file():
            return folder / EVAL_FILE
    return None


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict, bool)) or value is None:
        return json.dumps(value)
    return str(value)


def _score(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def _training_table(settings: dict[str, Any]) -> list[str]:
    lines = ["| setting | value |", "|---|---|"]
    for key in HIGHLIGHTS:
        if key == "adapter":
            adapter = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("adapter.")}
            if adapter:
                lines.append(f"| `adapter` | `{json.dumps(adapter)}` |")
        elif key in settings:
            lines.append(f"| `{key}` | `{_value(settings[key])}` |")
    return lines


def _eval_lines(path: Path) -> list[str]:
    """The pass / fail targets of a ``bokeh eval`` result as a table (one line saying why when it cannot be read)."""
    try:
        scores = json.loads(path.read_text())
        targets = scores["targets"]
        rows = [f"| {t['name']} | {_score(t['value'])} | {t['status']} |" for t in targets]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"`{path.name}` could not be read ({type(exc).__name__}): no scores shown."]
    settings = scores.get("settings", {})
    levels = ", ".join(f"{k:g}" for k in settings.get("levels", []))
    return [f"`bokeh eval` at K = {levels}, seeds {settings.get('seeds')}, modes {settings.get('modes')}:", "",
            "| target | value | status |", "|---|---|---|", *rows]


def _dataset_text(dataset: str, dataset_id: Optional[str]) -> str:
    """The Hub dataset's id, or a local folder by its name only (a card must not publish local paths)."""
    if dataset_id:
        return f"[`{dataset_id}`](https://huggingface.co/datasets/{dataset_id})"
    return f"`{Path(dataset).name}` (a local `bokeh build` output)" if dataset else "unknown"


def model_card(state: dict[str, Any], adapter_ref: str = "ADAPTER_DIR", eval_path: Optional[Path] = None) -> Any:
    """The ``huggingface_hub.ModelCard`` of the adapter whose checkpoint wrote ``state`` (its ``state.json``);
    ``adapter_ref`` is how the sampling lines name the adapter (a folder or a Hub id)."""
    from huggingface_hub import ModelCard, ModelCardData

    settings = state.get("settings") or {}
    step = state.get("step")
    family = settings.get("model.family")
    base = settings.get("model.base_model")
    dataset = settings.get("data.dataset", "")
    rows = dataset_rows(dataset) if dataset else None
    base_id, dataset_id = hub_id(base), hub_id(dataset)
    data = ModelCardData(library_name="diffusers", base_model=base_id, datasets=[dataset_id] if dataset_id else None,
                         tags=list(TAGS), pipeline_tag="text-to-image", **base_license(base))
    trained = state.get("trained_modules") or []

    if family is None:
        base_text, base_arg = "not recorded (the adapter has no checkpoint state)", "BASE"
    elif family == "tiny":
        base_text = ("the tiny pixel-space UNet that `bokeh train` builds from scratch and trains with the adapter; "
                     "the trained model is the checkpoint's `model/` folder, next to this adapter")
        base_arg = "CHECKPOINT/model" if hub_id(adapter_ref) else str(Path(adapter_ref).parent / "model")
    else:
        base_text = f"`{base}`" + (f" (its {', '.join(trained)} trained along, saved in the checkpoint's `model/`)" if trained else "")
        base_arg = base or "BASE"
    sample_k = "0 10 20 30"
    lines = [
        "# Bokeh Diffusion adapter" + (f" ({family})" if family else ""),
        "",
        "A Bokeh Diffusion adapter (arXiv 2503.08434) trained with the Bokeh Diffusion toolkit (`bokeh train`): it "
        "adds one number, the bokeh level K, to a text-to-image model, so that the background blur of an image is "
        "set by K while the scene stays the same.",
        "",
        f"- **Base model:** {base_text}",
        f"- **Trained steps:** {'not recorded' if step is None else step}",
        f"- **Dataset:** {_dataset_text(dataset, dataset_id)}" + (f", {rows} rows" if rows is not None else ""),
        "",
        "## The bokeh level K",
        "",
        "K runs from 0 (everything sharp) to 30 (a very shallow depth of field). It is the blur radius, in pixels of "
        "an image whose short side is 512 px, of a point one unit of normalised disparity away from the focal plane "
        "(disparity 0 = farthest, 1 = nearest): the background's blur radius grows linearly with K, and scales with "
        "the image's short side S as `K * S / 512`. The model reads K / 30; K = -1 means no bokeh condition. "
        "See the toolkit's docs/design.md, section 1.",
        "",
        "## Sampling",
        "",
        "```bash",
        f'bokeh sample --base {base_arg} --adapter {adapter_ref} --prompt "a portrait in a garden" --bokeh {sample_k} -o samples',
        "```",
        "",
        "```python",
        "from pipelines.loading import load_pipeline",
        "",
        f'pipe = load_pipeline("{base_arg}", "{adapter_ref}")',
        f'images = pipe("a portrait in a garden", bokeh=[{sample_k.replace(" ", ", ")}], seed=0).images  # one PIL image per K',
        "```",
        "",
        "## Training",
        "",
        *_training_table(settings),
        "",
        "## Evaluation",
        "",
        *(_eval_lines(eval_path) if eval_path is not None else
          ["No `bokeh eval` result was found next to this adapter (`eval.json`)."]),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def write_model_card(adapter_dir: Path, state: dict[str, Any], adapter_ref: Optional[str] = None,
                     eval_path: Optional[Path] = None) -> Path:
    """Write ``adapter_dir/README.md`` (eval scores from ``eval_path``, else an ``eval.json`` found next to the
    adapter); returns its path."""
    adapter_dir = Path(adapter_dir)
    card = model_card(state, adapter_ref or str(adapter_dir), eval_path or find_eval(adapter_dir))
    path = adapter_dir / CARD
    card.save(path)
    return path
