"""Training objectives as the base models define them: DDPM noise / v / sample prediction for UNets
(the scheduler config's ``prediction_type``) and rectified flow matching for FLUX.

Both take ``u`` in [0, 1) per row (the timestep draw) and the noise, so that rows tied to a pivot can
be given the pivot's timestep and noise by the caller.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from bokeh_models.attention_processors import pivot_index
from bokeh_models.flux_latents import latent_image_ids, pack_latents


def ddpm_timesteps(u: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Integer timesteps ``floor(u * T)`` in 0..T-1."""
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def ddpm_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict: the noise (epsilon), the velocity (v_prediction) or the clean sample."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r} in the scheduler config")


def snr_weights(scheduler: Any, timesteps: torch.Tensor, gamma: Optional[float], floor: Optional[float] = None) -> torch.Tensor:
    """Loss weights that clamp the SNR: in x0 terms ``min(SNR, gamma)`` (min-SNR-gamma, Hang et al. 2023),
    raised to at least ``floor`` (``max(SNR, 1)`` is Salimans & Ho's truncated-SNR weighting, which keeps
    the high-noise steps that lay out the scene from getting ~0 weight); converted to the scheduler's
    prediction type: divided by SNR for epsilon, by SNR + 1 for v."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]
    snr = alphas / (1 - alphas)
    weights = snr.clamp(min=floor, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        weights = weights / snr
    elif kind == "v_prediction":
        weights = weights / (snr + 1)
    return weights.float()


def row_mse(pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The mean squared error of each row (in fp32); with ``weights`` (broadcastable to ``pred``, e.g. one
    weight per position for every channel) the weighted mean ``sum(w * err) / sum(w)``."""
    err = (pred.float() - target.float()).square()
    if weights is None:
        return err.flatten(1).mean(1)
    w = weights.float().expand_as(err)
    return (err * w).flatten(1).sum(1) / w.flatten(1).sum(1)


def gradient_mse(pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None,
                 patch: int = 1) -> torch.Tensor:
    """Per row, the mean squared error of the image gradients (differences of horizontal and of vertical
    neighbours) of ``pred`` against ``target``: the error at spatial frequency f counted 4 sin^2(pi f) times
    per axis, 0 for flat offsets, up to 4x at the 2 px period, where blur and fine detail live. ``patch`` > 1:
    tensors of 3 p^2 channels are pixel patches and are compared as pixels. ``weights`` [B, 1, h, w] weigh
    each difference by the mean of its two positions'."""
    err = pred.float() - target.float()
    if patch > 1:
        err = torch.nn.functional.pixel_shuffle(err, patch)
        if weights is not None:
            weights = weights.repeat_interleave(patch, -2).repeat_interleave(patch, -1)
    if weights is None:
        weights = err.new_ones(err.shape[0], 1, *err.shape[-2:])
    w = weights.float()
    total = err.new_zeros(err.shape[0])
    norm = err.new_zeros(err.shape[0])
    for dim in (-1, -2):
        n = err.shape[dim]
        diff = err.narrow(dim, 1, n - 1) - err.narrow(dim, 0, n - 1)
        pair = (w.narrow(dim, 1, n - 1) + w.narrow(dim, 0, n - 1)) / 2
        total = total + (diff.square() * pair).flatten(1).sum(1)
        norm = norm + pair.expand_as(diff).flatten(1).sum(1)
    return total / norm


def tied_difference_mse(pred: torch.Tensor, target: torch.Tensor, pivot_ids: Any,
                        weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per row, :func:`row_mse` of (its prediction - its pivot's) against (its target - its pivot's); 0 for
    rows not tied to a pivot (``pivot_ids`` as grounded attention reads them). Tied rows show the pivot's
    scene with its noise and timestep, so this scores what their condition (K) changes: the background's
    blur, and the subject staying put."""
    index = pivot_index(pivot_ids, pred.shape[0], pred.device)
    if index is None:
        return pred.new_zeros(pred.shape[0], dtype=torch.float32)
    return row_mse(pred - pred[index], target - target[index], weights)


def unet_loss(
    adapter: Any,
    unet: torch.nn.Module,
    scheduler: Any,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    levels: Any,
    pivot_ids: Optional[list[int]],
    noise: torch.Tensor,
    u: torch.Tensor,
    snr_gamma: Optional[float] = None,
    snr_floor: Optional[float] = None,
    weights: Optional[torch.Tensor] = None,
    difference_weight: float = 0.0,
    detail_weight: float = 0.0,
    patch: int = 1,
) -> torch.Tensor:
    """Mean squared error of the adapted UNet's prediction on ``latents`` noised at ``u`` (per position
    weighted by ``weights`` [B, 1, h, w] when given) plus ``difference_weight`` times
    :func:`tied_difference_mse` and ``detail_weight`` times :func:`gradient_mse` (on pixels when the latents
    are ``patch`` x ``patch`` pixel patches), per row weighted by ``snr_weights`` when ``snr_gamma`` or
    ``snr_floor`` is set."""
    timesteps = ddpm_timesteps(u, scheduler.config.num_train_timesteps).to(latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = ddpm_target(scheduler, latents, noise, timesteps)
    pred = adapter(unet, noisy, timesteps, encoder_hidden_states, bokeh=levels, pivot_ids=pivot_ids)
    per_row = row_mse(pred, target, weights)
    if difference_weight:
        per_row = per_row + difference_weight * tied_difference_mse(pred, target, pivot_ids, weights)
    if detail_weight:
        per_row = per_row + detail_weight * gradient_mse(pred, target, weights, patch)
    if snr_gamma is None and snr_floor is None:
        return per_row.mean()
    return (per_row * snr_weights(scheduler, timesteps, snr_gamma, snr_floor)).mean()


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Flow-matching noise levels ``shift * u / (1 + (shift - 1) * u)`` (the schedulers' time shift)."""
    return shift * u / (1 + (shift - 1) * u)


def flux_loss(
    adapter: Any,
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled_prompt_embeds: torch.Tensor,
    text_ids: torch.Tensor,
    levels: Any,
    pivot_ids: Optional[list[int]],
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    guidance: float = 3.5,
    weights: Optional[torch.Tensor] = None,
    difference_weight: float = 0.0,
) -> torch.Tensor:
    """Flow matching: ``x_s = (1 - s) x0 + s * noise``, target velocity ``noise - x0``, on packed latents
    (per latent position weighted by ``weights`` [B, 1, h, w] when given), plus ``difference_weight``
    times :func:`tied_difference_mse`."""
    s = sigmas.to(latents.device, latents.dtype).view(-1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    guidance_vec = None
    if getattr(transformer.config, "guidance_embeds", False):
        guidance_vec = torch.full((latents.shape[0],), float(guidance), device=latents.device, dtype=latents.dtype)
    pred = adapter(
        transformer, levels, pivot_ids,
        hidden_states=pack_latents(noisy), timestep=sigmas.to(latents.device, latents.dtype), guidance=guidance_vec,
        pooled_projections=pooled_prompt_embeds, encoder_hidden_states=prompt_embeds,
        txt_ids=text_ids, img_ids=latent_image_ids(latents),
    )
    packed = None if weights is None else pack_latents(weights.expand_as(latents))
    target = pack_latents(noise - latents)
    per_row = row_mse(pred, target, packed)
    if difference_weight:
        per_row = per_row + difference_weight * tied_difference_mse(pred, target, pivot_ids, packed)
    return per_row.mean()
