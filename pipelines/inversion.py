"""Deterministic inversion of a sampler: the clean latents of a photo walked back to noise along the steps the
sampler takes forward, so that sampling from the result retraces (approximately) the photo.

Both functions return the trajectory in sampling order: ``[x at the first (noisiest) timestep, ..., x at the
last timestep, the clean latents]``, one entry per timestep plus the clean end. The model is evaluated at the
point the walk has reached with the timestep it is walking to (the only approximation: forward, that
timestep sees its own point), so the error of one step shrinks with the step size.
"""
from __future__ import annotations

from typing import Callable

import torch

#: ``predict(latents, t) -> model output`` (the prediction the sampler steps with, guidance included).
Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clean_and_noise(output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor,
                    prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean sample and the noise a model ``output`` implies for ``sample`` at cumulative alpha ``alpha_bar``
    (``sample = sqrt(alpha_bar) * clean + sqrt(1 - alpha_bar) * noise``), for epsilon, sample or v prediction.
    A sample-predicting model says nothing about the noise of a clean sample (``alpha_bar`` 1): zero is taken."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (sample - s * output) / a, output
    if prediction_type == "v_prediction":
        return a * sample - s * output, a * output + s * sample
    if prediction_type == "sample":
        noise = (sample - a * output) / s if float(s) > 0 else torch.zeros_like(sample)
        return output, noise
    raise ValueError(f"DDIM inversion takes epsilon, sample or v_prediction models, not {prediction_type!r}")


def ddim_inversion(predict: Predict, latents: torch.Tensor, scheduler) -> list[torch.Tensor]:
    """Invert the deterministic DDIM sampler (eta 0) of ``scheduler`` (a ``DDIMScheduler`` whose ``set_timesteps``
    has run): each forward step from timestep t to t - ratio moves along ``sqrt(a) * clean + sqrt(1 - a) * noise``,
    so the inverse step keeps the clean sample and noise the model gives and moves to t's alpha instead."""
    config = scheduler.config
    alphas = scheduler.alphas_cumprod.to(latents.device)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, device=latents.device)
    ratio = config.num_train_timesteps // scheduler.num_inference_steps
    x = latents
    trajectory = [x]
    for t in reversed(scheduler.timesteps):
        below = int(t) - ratio
        here = alphas[below] if below >= 0 else final
        clean, noise = clean_and_noise(predict(x, t).to(torch.float32), x.to(torch.float32), here, config.prediction_type)
        if config.clip_sample:  # the forward step clips the clean sample too
            clean = clean.clamp(-config.clip_sample_range, config.clip_sample_range)
        target = alphas[int(t)]
        x = (target.sqrt() * clean + (1 - target).sqrt() * noise).to(latents.dtype)
        trajectory.append(x)
    return trajectory[::-1]


def flow_inversion(predict: Predict, latents: torch.Tensor, scheduler) -> list[torch.Tensor]:
    """Invert the Euler sampler of a flow-matching ``scheduler`` (``FlowMatchEulerDiscreteScheduler`` whose
    ``set_timesteps`` has run): integrate ``dx / dsigma = v`` from sigma 0 (the clean latents) up to the first
    sigma along the sampler's own sigmas, one Euler step each."""
    sigmas = scheduler.sigmas.to(latents.device, torch.float32)
    timesteps = scheduler.timesteps
    x = latents
    trajectory = [x]
    for i in reversed(range(len(timesteps))):
        velocity = predict(x, timesteps[i]).to(torch.float32)
        x = (x.to(torch.float32) + (sigmas[i] - sigmas[i + 1]) * velocity).to(latents.dtype)
        trajectory.append(x)
    return trajectory[::-1]
