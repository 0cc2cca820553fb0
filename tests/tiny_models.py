"""Builders of tiny random-weight models saved with their processors, for offline tests.

Each builder writes a directory that ``from_pretrained`` loads exactly like a hub checkout
(config, weights, processor config) and returns its path. No network is used.
"""
from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_depth_anything(path: str | Path, metric: bool = False, max_depth: int = 20, seed: int = 0) -> Path:
    """A Depth Anything (Dinov2 backbone, hidden 32, 4 layers, patch 14) and its DPT processor in ``path``.

    ``metric`` selects the metric head (sigmoid * ``max_depth``, metres) instead of the relative one
    (ReLU, relative inverse depth), as the hub's V2 "Metric" and relative checkpoints do.
    """
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    path = Path(path)
    backbone = Dinov2Config(
        image_size=56,
        patch_size=14,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
        apply_layernorm=True,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=14,
        reassemble_hidden_size=32,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="metric" if metric else "relative",
        max_depth=max_depth if metric else 1,
    )
    torch.manual_seed(seed)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        # The library's std-0.02 init shrinks activations layer by layer to ~1e-7 at the head, where
        # float rounding would dominate; PyTorch's default (fan-in scaled) init keeps them O(1).
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                module.reset_parameters()
        if not metric:
            # Keep the relative output above its final ReLU and spread over a few units, as a trained
            # model's inverse depth is (random weights would otherwise give a constant 0 map).
            model.head.conv3.weight.mul_(100.0)
            model.head.conv3.bias.fill_(10.0)
    model.save_pretrained(path)
    DPTImageProcessor(
        do_resize=True,
        size={"height": 56, "width": 56},
        keep_aspect_ratio=True,
        ensure_multiple_of=14,
        resample=3,  # bicubic, as the released Depth Anything processors
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        do_pad=False,
    ).save_pretrained(path)
    return path


def build_tiny_sam(path: str | Path, seed: int = 0) -> Path:
    """A SAM (ViT hidden 32, 2 layers, 64 px input, 8 px patches) and its SamProcessor in ``path``."""
    from transformers import (
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    path = Path(path)
    image_size, patch_size, width = 64, 8, 32
    vision = SamVisionConfig(
        hidden_size=width,
        output_channels=width,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        window_size=4,
        global_attn_indexes=[1],
        num_pos_feats=width // 2,
        mlp_dim=64,
    )
    prompt = SamPromptEncoderConfig(
        hidden_size=width, image_size=image_size, patch_size=patch_size, mask_input_channels=4
    )
    decoder = SamMaskDecoderConfig(
        hidden_size=width, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
    )
    config = SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(seed)
    SamModel(config).eval().save_pretrained(path)
    mask_side = image_size // patch_size * 4  # the decoder's low-resolution mask side
    processor = SamProcessor(
        SamImageProcessor(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": mask_side},
            mask_pad_size={"height": mask_side, "width": mask_side},
        )
    )
    processor.save_pretrained(path)
    return path
