"""The tiny model's word-level tokenizer knows only its training captions' words: a prompt with other words
samples with a warning that names them, once per pipeline call."""
from __future__ import annotations

import warnings

import pytest

CAPTION = "a red star on a street in front of a wall"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    from bokeh_models.components import load_unet_components
    from bokeh_models.tiny_model import build_tiny_model
    from bokeh_models.unet_adapter import BokehUNetAdapter
    from pipelines.pipeline_sd import BokehStableDiffusionPipeline

    base = build_tiny_model(tmp_path_factory.mktemp("tiny") / "base", [CAPTION], 16, block_out_channels=[16, 32],
                            attention_levels=1, text_width=32)
    parts = load_unet_components(str(base))
    pipe = BokehStableDiffusionPipeline(**parts, adapter=BokehUNetAdapter(parts["unet"], bokeh_context_dim=32, lora_rank=4))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sample(pipe, prompt, **kwargs) -> list[str]:
    """The warnings one pipeline call gives."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe(prompt, [0, 30], pivot=15, num_inference_steps=1, seed=0, **kwargs)
    said = [w for w in caught if "vocabulary" in str(w.message)]
    assert all(w.filename == __file__ for w in said)  # the warning points at the caller's line
    return [str(w.message) for w in said]


def test_unknown_prompt_words_warn_once_per_call_and_name_the_words(pipe):
    said = _sample(pipe, "a Dog on a sunny beach, with a dog")  # "dog" is "Dog" (the tokenizer lowercases)
    assert len(said) == 1  # one call, one warning, though the sweep encodes the prompt for each of its passes
    assert said[0].startswith("words outside the text encoder's vocabulary: 'Dog', 'sunny', 'beach', 'with'; ")
    assert "','" not in said[0]  # the comma, unknown too, is no word
    # every prompt of a list and the negative prompt, each word once
    said = _sample(pipe, ["a dog on a street", "a cat on a street"], negative_prompt="blurry dog")
    assert len(said) == 1 and said[0].startswith("words outside the text encoder's vocabulary: 'dog', 'cat', 'blurry'; ")


def test_prompts_of_known_words_sample_without_a_warning(pipe):
    assert _sample(pipe, "A red star in front of a wall") == []  # the tokenizer lowercases
    assert pipe.unknown_words([CAPTION, "", "on a street"]) == []


def test_tokenizers_without_an_unknown_token_are_not_checked(pipe):
    class ByteLevel:  # as a byte-level BPE tokenizer: every text has tokens
        unk_token_id = None
        is_fast = True

    known = pipe.tokenizer
    pipe.tokenizer = ByteLevel()
    try:
        assert pipe.unknown_words(["a dog on a sunny beach"]) == []
    finally:
        pipe.tokenizer = known


def test_a_prompt_longer_than_the_encoder_takes_warns_with_the_words_cut_off(pipe):
    import logging

    limit = pipe.tokenizer.model_max_length - pipe.tokenizer.num_special_tokens_to_add()
    words = CAPTION.split()
    long = " ".join((words * (limit // len(words) + 2))[:limit + 3])  # 3 words past the limit, one token each
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    pipe.tokenizer.deprecation_warnings.clear()  # transformers says its length warning once per tokenizer
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe(long, [0, 30], pivot=15, num_inference_steps=1, seed=0)
    finally:
        library.removeHandler(handler)
    cut = [str(w.message) for w in caught if "cut off" in str(w.message)]
    assert len(cut) == 1 and cut[0].endswith(repr(" ".join(long.split()[limit:])))
    assert not [m for m in logged if "sequence length" in m]  # the checks tokenize without the library's own warning
    assert pipe.truncated_text(" ".join(long.split()[:limit])) == ""
