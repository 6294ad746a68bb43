"""Tests of the diffusion pieces: schedules against hand formulas, q_sample, timestep embedding, denoiser.

Spec section 3 and section 9 (timestep embedding); golden values pinned on fixed seeds.
"""
from __future__ import annotations

import math

import pytest
import torch

from infodcl.models.diffusion import (Denoiser, ForwardDiffusion, TimestepEmbedding, beta_schedule,
                                      sinusoidal_embedding)


def test_exp_schedule_matches_hand_formula():
    steps, b_min, b_max = 4, 0.1, 10.0
    betas = beta_schedule("exp", steps, beta_min=b_min, beta_max=b_max)
    xs = [1 + k * (2 * steps) / (steps - 1) for k in range(steps)]  # linspace(1, 2T+1, T)
    expected = [1 - math.exp(-b_min / steps - x * (b_max - b_min) / (2 * steps ** 2)) for x in xs]
    assert betas.tolist() == pytest.approx(expected, rel=1e-12)


def test_exp_schedule_final_alpha_bar_closed_form():
    # sum_t -log(1 - beta_t) = b_min + (b_max - b_min)(T + 1) / (2T) because sum of linspace(1, 2T+1, T) = T(T+1).
    steps = 200
    diffusion = ForwardDiffusion(beta_schedule("exp", steps))
    expected = math.exp(-(0.1 + 9.9 * (steps + 1) / (2 * steps)))
    assert diffusion.alpha_bar[-1].item() == pytest.approx(expected, rel=1e-5)


def test_linear_schedule_endpoints_and_even_spacing():
    betas = beta_schedule("linear", 5, beta_start=1e-4, beta_end=0.02)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.diff(betas).tolist() == pytest.approx([(0.02 - 1e-4) / 4] * 4, rel=1e-9)


def test_cosine_schedule_matches_hand_formula():
    steps, s = 5, 0.008

    def f(t):
        return math.cos((t / steps + s) / (1 + s) * math.pi / 2) ** 2

    expected = [min(max(1 - f(t + 1) / f(t), 1e-4), 0.9999) for t in range(steps)]
    assert beta_schedule("cosine", steps).tolist() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kind", ["exp", "linear", "cosine"])
def test_alpha_bar_is_cumprod_and_strictly_decreasing(kind):
    betas = beta_schedule(kind, 200)
    diffusion = ForwardDiffusion(betas)
    alpha_bar = diffusion.alpha_bar.double()
    assert alpha_bar[0].item() == pytest.approx(1 - betas[0].item(), rel=1e-6)
    assert torch.allclose(alpha_bar, torch.cumprod(1 - betas, 0), rtol=1e-5)
    assert (torch.diff(alpha_bar) < 0).all()
    assert 0 < alpha_bar[-1] < alpha_bar[0] < 1


def test_unknown_schedule_and_bad_steps_raise():
    with pytest.raises(ValueError, match="unknown beta schedule"):
        beta_schedule("sqrt", 10)
    with pytest.raises(ValueError, match="steps"):
        beta_schedule("exp", 0)


def test_q_sample_formula_and_endpoints():
    diffusion = ForwardDiffusion(beta_schedule("exp", 200))
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 8), torch.randn(3, 8)
    t = torch.tensor([0, 100, 199])
    x_t = diffusion.q_sample(x0, t, noise)
    ab = diffusion.alpha_bar[t].unsqueeze(1)
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)
    # t = 0 barely perturbs x0 (alpha_bar_0 = 1 - beta_0 ~ 0.99938); t = T-1 is mostly noise.
    assert torch.allclose(x_t[0], x0[0], atol=0.03 * noise[0].abs().max().item() + 1e-3)
    assert (x_t[2] - noise[2]).abs().max() < 0.1 * (x0[2].abs().max() + noise[2].abs().max())


def test_q_sample_uses_the_given_noise():
    diffusion = ForwardDiffusion(beta_schedule("linear", 10))
    x0 = torch.zeros(2, 4)
    t = torch.tensor([9, 9])
    a = diffusion.q_sample(x0, t, torch.ones(2, 4))
    b = diffusion.q_sample(x0, t, 2 * torch.ones(2, 4))
    assert torch.allclose(b, 2 * a)


def test_sinusoidal_embedding_by_hand():
    t = torch.tensor([0, 3])
    emb = sinusoidal_embedding(t, 8)
    freqs = [math.exp(-math.log(10000) * k / 3) for k in range(4)]
    expected_t3 = [math.sin(3 * f) for f in freqs] + [math.cos(3 * f) for f in freqs]
    assert emb[0].tolist() == pytest.approx([0, 0, 0, 0, 1, 1, 1, 1])
    assert emb[1].tolist() == pytest.approx(expected_t3, abs=1e-6)


def test_sinusoidal_embedding_odd_dim_is_padded_and_tiny_dim_rejected():
    emb = sinusoidal_embedding(torch.tensor([2]), 9)
    assert emb.shape == (1, 9) and emb[0, -1].item() == 0.0
    with pytest.raises(ValueError, match="dim >= 4"):
        sinusoidal_embedding(torch.tensor([1]), 3)


def test_denoiser_mlp1_is_one_linear_over_the_concatenation():
    torch.manual_seed(0)
    denoiser = Denoiser(4, "mlp1")
    x_t, c_null, temb = torch.randn(2, 4), torch.randn(1, 4), torch.randn(2, 4)
    out = denoiser(x_t, c_null, temb)
    joined = torch.cat([x_t, c_null.expand(2, 4), temb], dim=1)
    assert torch.allclose(out, joined @ denoiser.net.weight.T + denoiser.net.bias, atol=1e-6)
    with pytest.raises(ValueError, match="unknown denoiser"):
        Denoiser(4, "mlp3")


def test_golden_timestep_embedding_and_denoisers():
    torch.manual_seed(0)
    temb = TimestepEmbedding(8)
    mlp1, mlp2 = Denoiser(8, "mlp1"), Denoiser(8, "mlp2")
    x_t, c_null = torch.randn(3, 8), torch.randn(1, 8)
    t = torch.tensor([0, 7, 199])
    time_embedding = temb(t)
    out1, out2 = mlp1(x_t, c_null, time_embedding), mlp2(x_t, c_null, time_embedding)
    assert time_embedding[1].tolist() == pytest.approx(GOLDEN_TEMB_ROW1, abs=1e-5)
    assert out1[2].tolist() == pytest.approx(GOLDEN_MLP1_ROW2, abs=1e-5)
    assert out2[0].tolist() == pytest.approx(GOLDEN_MLP2_ROW0, abs=1e-5)
    assert out2.sum().item() == pytest.approx(GOLDEN_MLP2_SUM, abs=1e-4)


# Computed once with torch 2.13 CPU from the code above (seed 0).
GOLDEN_TEMB_ROW1 = [-0.174005, -0.073773, -0.056181, -0.480244, 0.219841, -0.307373, 0.045827, 0.133317]
GOLDEN_MLP1_ROW2 = [0.211224, -0.251759, -1.023278, -0.825097, -0.127663, 0.829679, -0.062247, 0.380940]
GOLDEN_MLP2_ROW0 = [0.156428, -0.077881, 0.365054, 0.061461, 0.236765, 0.231642, -0.118693, 0.021024]
GOLDEN_MLP2_SUM = 1.838936
