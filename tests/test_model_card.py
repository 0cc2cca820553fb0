"""Model cards of trained adapters: every checkpoint's adapter/ gets one, its metadata parse back through
huggingface_hub, its facts match the run (steps, dataset rows counted here, settings), its sampling code runs, the
base's licence is carried over, and eval.json scores appear when present."""
import json
import re

import pytest
from huggingface_hub import ModelCard

from test_train_data import write_dataset
from test_train_loop import tiny_config
from tiny_diffusion import single_thread
from trainer.model_card import base_license, hub_id, model_card, write_model_card

GROUPS, RENDERS, SINGLES = 2, 2, 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of 2 steps with a checkpoint at each step."""
    from trainer.training import train

    root = tmp_path_factory.mktemp("card_run")
    dataset = write_dataset(root / "ds", groups=GROUPS, renders=RENDERS, singles=SINGLES)
    out = root / "run"
    with single_thread():
        train(tiny_config(dataset, out, max_steps=2, checkpoint_every=1))
    return out


def test_each_checkpoint_adapter_has_a_card_with_the_runs_facts(trained):
    for step in (1, 2):
        adapter = trained / "checkpoints" / f"step-{step:07d}" / "adapter"
        card = ModelCard.load(adapter / "README.md")
        assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
        assert card.data.tags == ["bokeh", "bokeh-diffusion", "depth-of-field", "text-to-image"]
        assert card.data.base_model is None and card.data.license is None  # the tiny model has no Hub base
        rows = GROUPS * (1 + RENDERS) + SINGLES
        assert f"**Trained steps:** {step}" in card.text and f"`ds` (a local `bokeh build` output), {rows} rows" in card.text
        assert "| `run.max_steps` | `2` |" in card.text and "| `data.resolution` | `16` |" in card.text
        assert str(trained) not in card.text.split("## Sampling")[0]  # no local path above the sampling lines
        assert "No `bokeh eval` result" in card.text


def test_the_cards_python_sampling_lines_run(trained):
    adapter = trained / "checkpoints" / "step-0000002" / "adapter"
    text = ModelCard.load(adapter / "README.md").text
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert f'load_pipeline("{adapter.parent / "model"}", "{adapter}")' in code
    scope = {}
    with single_thread():
        exec(code, scope)  # noqa: S102 - the card's own example
    assert len(scope["images"]) == 4 and scope["images"][0].size == (16, 16)


def test_base_licence_from_known_ids_and_local_cards(tmp_path):
    assert base_license("stable-diffusion-v1-5/stable-diffusion-v1-5") == {"license": "creativeml-openrail-m"}
    assert base_license("someone/unknown-model") == {} and base_license(None) == {}
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# a base\n")
    assert base_license(str(tmp_path)) == {"license": "mit"}
    assert hub_id(str(tmp_path)) is None and hub_id("a/b") == "a/b" and hub_id("runs/x/../y z") is None
    state = {"step": 3, "settings": {"model.family": "flux", "model.base_model": "black-forest-labs/FLUX.1-dev",
                                     "data.dataset": "someone/bokeh-set"}}
    data = ModelCard(str(model_card(state, "me/adapter"))).data
    assert (data.base_model, data.license, data.license_name) == ("black-forest-labs/FLUX.1-dev", "other", "flux-1-dev-non-commercial-license")
    assert data.datasets == ["someone/bokeh-set"]


def test_eval_scores_next_to_the_adapter_are_shown(tmp_path):
    adapter = tmp_path / "step-0000010" / "adapter"
    adapter.mkdir(parents=True)
    scores = {"settings": {"levels": [0, 15, 30], "seeds": [0, 1], "modes": ["unbounded"]},
              "targets": [{"name": "LVCorr >= 0.8 (unbounded)", "value": 0.91234, "status": "pass", "detail": ""},
                          {"name": "SSIM K=0 vs K=30 >= 0.9 (grounded)", "value": None, "status": "n/a", "detail": ""}]}
    (adapter.parent / "eval.json").write_text(json.dumps(scores))
    text = ModelCard.load(write_model_card(adapter, {"step": 10, "settings": {}})).text
    assert "`bokeh eval` at K = 0, 15, 30, seeds [0, 1]" in text
    assert "| LVCorr >= 0.8 (unbounded) | 0.912 | pass |" in text and "| SSIM K=0 vs K=30 >= 0.9 (grounded) | n/a | n/a |" in text
    (adapter.parent / "eval.json").write_text("{not json")
    assert "`eval.json` could not be read (JSONDecodeError)" in ModelCard.load(write_model_card(adapter, {"step": 10})).text
