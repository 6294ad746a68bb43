"""Forward diffusion with a given noise and the x0-predicting denoiser of InfoDCL.

Spec section 3 (paper Eq. 9) and section 9 (timestep embedding): beta schedules, alpha_bar, q_sample, temb, mlp1/mlp2.
"""
from __future__ import annotations

import math

import torch
from torch import nn


# --------------------------------------------------------------------------- 1. beta schedules
def exp_beta_schedule(steps: int, beta_min: float = 0.1, beta_max: float = 10.0) -> torch.Tensor:
    """The reference default: x = linspace(1, 2T+1, T), beta = 1 - exp(-b_min/T - x (b_max - b_min) / (2 T^2))."""
    x = torch.linspace(1, 2 * steps + 1, steps, dtype=torch.float64)
    return 1.0 - torch.exp(-beta_min / steps - x * (beta_max - beta_min) / (2 * steps * steps))


def linear_beta_schedule(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)


def cosine_beta_schedule(steps: int, offset: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped to [1e-4, 0.9999] as the reference."""
    x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
    alpha_bar = torch.cos(((x / steps) + offset) / (1 + offset) * math.pi * 0.5) ** 2
    alpha_bar = alpha_bar / alpha_bar[0]
    return torch.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 1e-4, 0.9999)


def beta_schedule(kind: str, steps: int, beta_min: float = 0.1, beta_max: float = 10.0,
                  beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """(T,) float64 betas of the named schedule."""
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {steps}")
    if kind == "exp":
        return exp_beta_schedule(steps, beta_min, beta_max)
    if kind == "linear":
        return linear_beta_schedule(steps, beta_start, beta_end)
    if kind == "cosine":
        return cosine_beta_schedule(steps)
    raise ValueError(f"unknown beta schedule {kind!r}; expected exp, linear or cosine")


# --------------------------------------------------------------------------- 2. forward process (Eq. 9)
class ForwardDiffusion(nn.Module):
    """Holds sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t); t counts from 0, so alpha_bar_t = alpha_bar[t]."""

    def __init__(self, betas: torch.Tensor) -> None:
        super().__init__()
        betas = betas.to(torch.float64)
        alpha_bar = torch.cumprod(1.0 - betas, dim=0)  # (T,)
        self.steps = int(betas.shape[0])
        # Not persistent: fully determined by the config, recomputed on construction.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)
        self.register_buffer("sqrt_alpha_bar", alpha_bar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha_bar", (1.0 - alpha_bar).sqrt().float(), persistent=False)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise, per row t."""
        signal_scale = self.sqrt_alpha_bar[t].unsqueeze(1)           # (B, 1)
        noise_scale = self.sqrt_one_minus_alpha_bar[t].unsqueeze(1)  # (B, 1)
        return signal_scale * x0 + noise_scale * noise               # (B, d)


# --------------------------------------------------------------------------- 3. timestep embedding and denoiser
def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Half sin, half cos, frequencies exp(-ln(10000) k / (dim/2 - 1)), k = 0..dim/2-1 (spec 9).

    An odd dim gets a zero last column so the output is always (B, dim).
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"timestep embedding needs dim >= 4, got {dim}")
    k = torch.arange(half, device=t.device, dtype=torch.float32)
    frequencies = torch.exp(-math.log(10000.0) * k / (half - 1))      # (dim/2,)
    angles = t.to(torch.float32).unsqueeze(1) * frequencies.unsqueeze(0)  # (B, dim/2)
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)         # (B, 2*(dim/2))
    if dim % 2:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """sinusoidal(d) -> Linear(d, 2d) -> GELU -> Linear(2d, d)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal_embedding(t, self.dim))  # (B, d)


class Denoiser(nn.Module):
    """Predicts x0 from [x_t, c_null, temb(t)]: mlp1 = Linear(3d, d); mlp2 = Linear(3d, 2d)-GELU-Linear(2d, d)."""

    def __init__(self, dim: int, kind: str = "mlp1") -> None:
        super().__init__()
        if kind == "mlp1":
            self.net = nn.Linear(3 * dim, dim)
        elif kind == "mlp2":
            self.net = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        else:
            raise ValueError(f"unknown denoiser {kind!r}; expected mlp1 or mlp2")

    def forward(self, x_t: torch.Tensor, condition: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        condition = condition.expand_as(x_t)  # (B, d): the unconditional slot c_null is one shared vector
        return self.net(torch.cat([x_t, condition, time_embedding], dim=1))  # (B, d)
