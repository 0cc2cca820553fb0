"""Bokeh Diffusion adapter for a diffusers FluxTransformer2DModel, in the released checkpoint layout.

State dict: ``embedding_layer.{0,2}.{weight,bias}`` and, for every adapted block i (i = position in
``transformer.attn_processors``), ``adapter_modules.{i}.{to_k_bokeh,to_v_bokeh,to_q_adp,to_k_adp}.{down,up}.weight``.
With FLUX.1-dev dimensions and all 57 blocks that is 145,736,576 parameters, loadable from the official
``atfortes/BokehDiffusion`` files unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from bokeh_models.adapter_base import DEFAULT_AVOID, BokehAdapter, model_device
from bokeh_models.attention_processors import BokehFluxAttnProcessor, FluxJointAttnProcessor, PivotIds
from bokeh_models.bokeh_embedding import BokehLevels


def standalone_layer_names(blocks: Optional[Sequence[str]], attn_hidden_dim: Optional[int]) -> list[str]:
    """The transformer's attention layers as a config names them without the transformer: every double-stream
    block ``transformer_blocks.0..n-1`` (n >= 1) then every single-stream one (the released config lists all 57)."""
    if blocks is None or attn_hidden_dim is None:
        raise ValueError("an adapter built without its transformer needs blocks and attn_hidden_dim")
    blocks = list(blocks)
    double = sum(b.startswith("transformer_blocks.") for b in blocks)
    complete = [f"transformer_blocks.{i}" for i in range(double)]
    complete += [f"single_transformer_blocks.{i}" for i in range(len(blocks) - double)]
    if not double or blocks != complete:
        raise ValueError("this adapter adapts only some of the transformer's blocks: pass the transformer to place them")
    return [f"{b}.attn.processor" for b in blocks]


class BokehFluxAdapter(BokehAdapter):
    """Bokeh embedding + decoupled low-rank bokeh attention and grounded q / k adapters in FLUX blocks.

    ``blocks`` names the adapted blocks (``transformer_blocks.N`` / ``single_transformer_blocks.N``;
    default all of them); the other blocks run plain attention.
    """

    config_fields = (
        "blocks", "attn_hidden_dim", "bokeh_input_dim", "bokeh_hidden_dim", "bokeh_context_dim",
        "lora_rank", "lora_alpha", "lora_scale", "bokeh_scale", "unfreeze_q", "unfreeze_k",
    )

    def __init__(
        self,
        transformer: Optional[nn.Module] = None,
        blocks: Optional[Sequence[str]] = None,
        attn_hidden_dim: Optional[int] = None,
        bokeh_input_dim: int = 1,
        bokeh_hidden_dim: int = 64,
        bokeh_context_dim: int = 768,
        lora_rank: int = 128,
        lora_alpha: Optional[float] = None,
        lora_scale: float = 1.0,
        bokeh_scale: float = 1.0,
        unfreeze_q: bool = True,
        unfreeze_k: bool = True,
        *,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = torch.float32,
    ) -> None:
        if transformer is None:
            names = standalone_layer_names(blocks, attn_hidden_dim)
        else:
            names = list(transformer.attn_processors)
        block_of = {name: name.split(".attn")[0] for name in names}
        available = list(block_of.values())
        blocks = available if blocks is None else list(blocks)
        unknown = [b for b in blocks if b not in available]
        if unknown:
            raise ValueError(f"no attention block named {unknown[:3]} in this transformer (it has {available[:1]}...)")
        if transformer is not None:
            inner_dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
            if attn_hidden_dim is None:
                attn_hidden_dim = inner_dim
            if attn_hidden_dim != inner_dim:
                raise ValueError(f"attn_hidden_dim {attn_hidden_dim} != the transformer's attention width {inner_dim}")
            device = device or model_device(transformer)
        super().__init__(
            dict(
                blocks=blocks, attn_hidden_dim=attn_hidden_dim, bokeh_input_dim=bokeh_input_dim,
                bokeh_hidden_dim=bokeh_hidden_dim, bokeh_context_dim=bokeh_context_dim, lora_rank=lora_rank,
                lora_alpha=lora_alpha, lora_scale=lora_scale, bokeh_scale=bokeh_scale,
                unfreeze_q=unfreeze_q, unfreeze_k=unfreeze_k,
            ),
            device=device,
            dtype=dtype,
        )
        adapted = set(blocks)
        processors = [
            BokehFluxAttnProcessor(
                attn_hidden_dim, bokeh_context_dim, lora_rank, lora_alpha, unfreeze_q=unfreeze_q,
                unfreeze_k=unfreeze_k, bokeh_scale=bokeh_scale, lora_scale=lora_scale,
                device=device, dtype=dtype,
            )
            if block_of[name] in adapted
            else FluxJointAttnProcessor()
            for name in names
        ]
        self._attach(transformer, names, processors)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, Path],
        transformer: Optional[nn.Module] = None,
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[Union[str, torch.dtype]] = None,
        avoid: str = DEFAULT_AVOID,
        **kwargs: Any,
    ) -> "BokehFluxAdapter":
        """Load ``config.json`` + ``model.safetensors`` (fp32 unless ``dtype`` / ``torch_dtype``) from a folder or hub
        id, e.g. ``atfortes/BokehDiffusion``; installed on ``transformer`` when given (else ``adapter.install(t)``
        later; a config adapting only some blocks needs the transformer to place them).

        Failures (offline, missing files, keys or shapes not matching) raise ModelUnavailableError.
        """
        return cls._load(pretrained_model_name_or_path, transformer, device, dtype, avoid, kwargs)

    def default_processor(self) -> Any:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        return FluxAttnProcessor()

    def forward(
        self,
        transformer: nn.Module,
        bokeh: BokehLevels,
        pivot_ids: PivotIds = None,
        *,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        pooled_projections: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        txt_ids: torch.Tensor,
        img_ids: torch.Tensor,
        guidance: Optional[torch.Tensor] = None,
        joint_attention_kwargs: Optional[dict[str, Any]] = None,
    ) -> torch.Tensor:
        """The transformer's prediction for packed latents ``hidden_states`` at bokeh levels K.

        ``bokeh``: K in 0..30 per row (or one for all; negative = no condition). ``pivot_ids``: per row
        the index of its pivot row, or None / -1 (see ``pivot_index``); None switches grounding off.
        ``timestep`` and ``guidance`` as the transformer takes them (sigma in [0, 1], guidance scale).
        """
        self.check_installed(transformer)
        batch = hidden_states.shape[0]
        kwargs = {**(joint_attention_kwargs or {}), **self.attention_kwargs(bokeh, pivot_ids, batch, hidden_states.device)}
        return transformer(
            hidden_states=hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            timestep=timestep,
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance,
            joint_attention_kwargs=kwargs,
            return_dict=False,
        )[0]
