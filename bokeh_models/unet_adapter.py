"""Bokeh Diffusion adapter for a diffusers UNet2DConditionModel (Stable Diffusion 1.5 family).

Decoupled bokeh cross-attention (dense K_b / V_b from the bokeh token) in the cross-attention layers
under ``blocks`` and grounded self-attention (low-rank q / k adapters) in the self-attention layers
under ``grounded_blocks``; both default to the decoder (``up_blocks``). State dict:
``embedding_layer.*``, ``adapter_modules.{i}.to_k_bokeh.weight`` / ``to_v_bokeh.weight`` and
``adapter_modules.{i}.to_q_adp`` / ``to_k_adp`` ``.down`` / ``.up`` weights, i = position in
``unet.attn_processors``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from bokeh_models.adapter_base import DEFAULT_AVOID, BokehAdapter, model_device
from bokeh_models.attention_processors import (
    BokehCrossAttnProcessor,
    GroundedSelfAttnProcessor,
    PivotIds,
    UNetAttnProcessor,
)
from bokeh_models.bokeh_embedding import BokehLevels, bokeh_condition


def takes_bokeh_class_label(unet: nn.Module) -> bool:
    """Whether ``unet`` adds a projection of a 1-number class label to its timestep embedding (the tiny
    model's ``bokeh_time_embedding``): the bokeh condition (K/30, -1 = none) then conditions every ResNet block."""
    config = getattr(unet, "config", None)
    return (getattr(config, "class_embed_type", None) == "projection"
            and getattr(config, "projection_class_embeddings_input_dim", None) == 1)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


class BokehUNetAdapter(BokehAdapter):
    """Bokeh embedding + decoupled bokeh cross-attention and grounded self-attention in a UNet.

    ``blocks`` / ``grounded_blocks`` are module-path prefixes (``"up_blocks"``, ``"up_blocks.1"``,
    ``"mid_block"`` ...); each must contain at least one layer of its kind.
    """

    config_fields = (
        "blocks", "grounded_blocks", "bokeh_input_dim", "bokeh_hidden_dim", "bokeh_context_dim",
        "lora_rank", "lora_alpha", "lora_scale", "bokeh_scale",
    )

    def __init__(
        self,
        unet: Optional[nn.Module] = None,
        blocks: Sequence[str] = ("up_blocks",),
        grounded_blocks: Sequence[str] = ("up_blocks",),
        bokeh_input_dim: int = 1,
        bokeh_hidden_dim: int = 64,
        bokeh_context_dim: int = 768,
        lora_rank: int = 64,
        lora_alpha: Optional[float] = None,
        lora_scale: float = 1.0,
        bokeh_scale: float = 1.0,
        *,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = torch.float32,
    ) -> None:
        if unet is None:
            raise ValueError("a UNet adapter is built on its UNet's attention layers: pass the unet")
        blocks, grounded_blocks = list(blocks), list(grounded_blocks)
        device = device or model_device(unet)
        super().__init__(
            dict(
                blocks=blocks, grounded_blocks=grounded_blocks, bokeh_input_dim=bokeh_input_dim,
                bokeh_hidden_dim=bokeh_hidden_dim, bokeh_context_dim=bokeh_context_dim, lora_rank=lora_rank,
                lora_alpha=lora_alpha, lora_scale=lora_scale, bokeh_scale=bokeh_scale,
            ),
            device=device,
            dtype=dtype,
        )
        names = list(unet.attn_processors)
        used: set[str] = set()
        processors = []
        for name in names:
            attn = unet.get_submodule(name.removesuffix(".processor"))
            cross = bool(getattr(attn, "is_cross_attention", False))
            bokeh_prefix = next((p for p in blocks if _under(name, p)), None) if cross else None
            ground_prefix = next((p for p in grounded_blocks if _under(name, p)), None) if not cross else None
            if bokeh_prefix is not None:
                used.add(f"bokeh:{bokeh_prefix}")
                processors.append(BokehCrossAttnProcessor(
                    bokeh_context_dim, attn.to_k.out_features, attn.to_v.out_features, bokeh_scale,
                    device=device, dtype=dtype,
                ))
            elif ground_prefix is not None:
                used.add(f"ground:{ground_prefix}")
                processors.append(GroundedSelfAttnProcessor(
                    attn.to_q.out_features, attn.to_k.out_features, lora_rank, lora_alpha, lora_scale,
                    device=device, dtype=dtype,
                ))
            else:
                processors.append(UNetAttnProcessor())
        unused = [f"blocks: {p}" for p in blocks if f"bokeh:{p}" not in used]
        unused += [f"grounded_blocks: {p}" for p in grounded_blocks if f"ground:{p}" not in used]
        if unused:
            raise ValueError(f"no attention layer of the right kind under {unused} in this UNet")
        self._attach(unet, names, processors)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: Union[str, Path],
        unet: Optional[nn.Module] = None,
        *,
        device: Optional[Union[str, torch.device]] = None,
        dtype: Optional[Union[str, torch.dtype]] = None,
        avoid: str = DEFAULT_AVOID,
        **kwargs: Any,
    ) -> "BokehUNetAdapter":
        """Load ``config.json`` + ``model.safetensors`` (fp32 unless ``dtype`` / ``torch_dtype``) from a folder or hub
        id and install on ``unet`` (the processors' sizes are the UNet's, so it is needed).

        Failures (offline, missing files, keys or shapes not matching, no unet) raise ModelUnavailableError.
        """
        return cls._load(pretrained_model_name_or_path, unet, device, dtype, avoid, kwargs)

    def default_processor(self) -> Any:
        from diffusers.models.attention_processor import AttnProcessor2_0

        return AttnProcessor2_0()

    def forward(
        self,
        unet: nn.Module,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        bokeh: BokehLevels,
        pivot_ids: PivotIds = None,
        **unet_kwargs: Any,
    ) -> torch.Tensor:
        """The UNet's prediction for ``sample`` at bokeh levels K (one per row or one for all;
        negative = no condition); ``pivot_ids`` as in ``pivot_index``; other UNet arguments pass through.
        A UNet that takes the bokeh condition as its class label (``takes_bokeh_class_label``) gets it there too."""
        self.check_installed(unet)
        batch = sample.shape[0]
        kwargs = {**(unet_kwargs.pop("cross_attention_kwargs", None) or {}),
                  **self.attention_kwargs(bokeh, pivot_ids, batch, sample.device)}
        if takes_bokeh_class_label(unet) and "class_labels" not in unet_kwargs:
            unet_kwargs["class_labels"] = bokeh_condition(bokeh, batch, sample.device, sample.dtype)
        return unet(
            sample, timestep, encoder_hidden_states, cross_attention_kwargs=kwargs, return_dict=False, **unet_kwargs
        )[0]
