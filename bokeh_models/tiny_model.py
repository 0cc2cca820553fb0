"""The tiny model: a pixel-space UNet2DConditionModel, a small CLIP text encoder and a word-level
tokenizer built offline from the training captions, in the Stable Diffusion folder layout
(unet/, text_encoder/, tokenizer/, scheduler/; no vae/: it denoises pixels). Trained from scratch.

With ``bokeh_time_embedding`` the UNet also takes the bokeh condition as a class label added to its
timestep embedding (``BokehUNetAdapter`` passes it), so K reaches every ResNet block at every scale, as a
class label does in class-conditional diffusion; with ``resnet_time_scale_shift="scale_shift"`` that
embedding scales and shifts the normalised features (FiLM) instead of being added to them. With
``text_time_embedding`` the caption joins that embedding too (diffusers' ``addition_embed_type="text"``:
the text encoder's tokens attention-pooled into one vector), so the caption reaches every ResNet block
and not only the cross-attention of the low-resolution levels. With ``patch_size`` p > 1 the UNet
denoises p x p pixel patches as 3 p^2 channels (space-to-depth, as a latent without a VAE): its first
level runs at 1/p of the image side, so a step costs much less and the freed time buys channels."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")

#: Sizes of the tiny model; ``model.tiny`` in the config overrides any of them.
TINY_DEFAULTS: dict[str, Any] = dict(
    patch_size=1,
    block_out_channels=[32, 48, 64, 64],
    attention_levels=2,
    layers_per_block=1,
    text_width=64,
    text_layers=2,
    text_heads=2,
    max_tokens=24,
    attention_head_dim=8,
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon",
    bokeh_time_embedding=False,
    text_time_embedding=False,
    resnet_time_scale_shift="default",
)


def caption_words(captions: Iterable[str]) -> list[str]:
    """The sorted lowercase words (and punctuation marks) of ``captions``."""
    words: set[str] = set()
    for caption in captions:
        words.update(re.findall(r"\w+|[^\w\s]", caption.lower()))
    return sorted(words)


def build_tokenizer(captions: Iterable[str], max_tokens: int) -> Any:
    """A word-level fast tokenizer over the words of ``captions`` ([UNK] for any other word)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in caption_words(captions):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
        model_max_length=max_tokens,
    )


def build_tiny_model(directory: str | Path, captions: Iterable[str], resolution: int, seed: int = 0, **sizes: Any) -> Path:
    """Write a randomly initialised tiny model for ``resolution`` px images to ``directory``; returns it."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unknown = sorted(set(sizes) - set(TINY_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown tiny model setting(s) {unknown} (known: {sorted(TINY_DEFAULTS)})")
    cfg = {**TINY_DEFAULTS, **sizes}
    directory = Path(directory)
    tokenizer = build_tokenizer(captions, cfg["max_tokens"])
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg["text_width"], intermediate_size=2 * cfg["text_width"],
        num_hidden_layers=cfg["text_layers"], num_attention_heads=cfg["text_heads"],
        max_position_embeddings=cfg["max_tokens"], pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    ))
    patch = cfg["patch_size"]
    channels = list(cfg["block_out_channels"])
    levels, attention = len(channels), cfg["attention_levels"]
    if not 1 <= attention <= levels:
        raise ValueError(f"attention_levels must be in 1..{levels} (the number of deepest levels with attention)")
    if not (isinstance(patch, int) and patch >= 1):
        raise ValueError(f"patch_size must be a whole number >= 1, got {patch!r}")
    multiple = patch * 2 ** (levels - 1)
    if resolution % multiple:
        raise ValueError(f"the resolution {resolution} must be a multiple of {multiple} (patch_size {patch} x 2^{levels - 1} "
                         f"downsamplings of {levels} levels)")
    unet = UNet2DConditionModel(
        sample_size=resolution // patch,
        in_channels=3 * patch * patch,
        out_channels=3 * patch * patch,
        down_block_types=["DownBlock2D"] * (levels - attention) + ["CrossAttnDownBlock2D"] * attention,
        up_block_types=["CrossAttnUpBlock2D"] * attention + ["UpBlock2D"] * (levels - attention),
        block_out_channels=channels,
        layers_per_block=cfg["layers_per_block"],
        cross_attention_dim=cfg["text_width"],
        attention_head_dim=cfg["attention_head_dim"],
        norm_num_groups=min(8, channels[0]),
        resnet_time_scale_shift=cfg["resnet_time_scale_shift"],
        **(dict(class_embed_type="projection", projection_class_embeddings_input_dim=1) if cfg["bokeh_time_embedding"] else {}),
        **(dict(addition_embed_type="text", addition_embed_type_num_heads=cfg["text_heads"]) if cfg["text_time_embedding"] else {}),
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"], beta_schedule=cfg["beta_schedule"],
        prediction_type=cfg["prediction_type"],
    )
    tokenizer.save_pretrained(directory / "tokenizer")
    text_encoder.save_pretrained(directory / "text_encoder")
    unet.save_pretrained(directory / "unet")
    scheduler.save_pretrained(directory / "scheduler")
    return directory
