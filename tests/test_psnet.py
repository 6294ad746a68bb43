"""Tests of PSNet: the guarded SVD, spectral rectification, both CR forms, the output fusion and each switch.

Spec section 2 and section 9; golden values pinned on fixed seeds.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import infodcl.models.psnet as psnet_module
from infodcl.config import PSNetConfig
from infodcl.models.psnet import (LightContextualReencoding, PSNet, ReferenceContextualReencoding,
                                  SpectralRectification, guarded_svd, keep_mask)


# --------------------------------------------------------------------------- SVD
@pytest.mark.parametrize("shape", [(40, 6), (5, 9), (7, 7)])
def test_guarded_svd_is_a_thin_svd(shape):
    torch.manual_seed(0)
    matrix = torch.randn(*shape, dtype=torch.float64)
    U, S, Vh = guarded_svd(matrix)
    k = min(shape)
    assert U.shape == (shape[0], k) and S.shape == (k,) and Vh.shape == (k, shape[1])
    assert torch.allclose((U * S) @ Vh, matrix, atol=1e-10)
    assert torch.allclose(U.T @ U, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(Vh @ Vh.T, torch.eye(k, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(S, torch.linalg.svdvals(matrix), atol=1e-10)
    assert (torch.diff(S) <= 0).all()


@pytest.mark.parametrize("shape", [(40, 6), (5, 9), (7, 7)])
def test_guarded_svd_gradient_equals_torch_on_a_separated_spectrum(shape):
    torch.manual_seed(1)
    base = torch.randn(*shape, dtype=torch.float64)
    weight_u, weight_a = torch.randn(shape[0], shape[0], dtype=torch.float64), torch.randn(*shape, dtype=torch.float64)
    weight_v = torch.randn(shape[1], shape[1], dtype=torch.float64)

    def sign_invariant_loss(U, S, Vh):
        # Depends on U, S and V, but not on the arbitrary signs of the singular pairs.
        quad_u = torch.einsum("ik,ij,jk->k", U, weight_u, U)
        quad_v = torch.einsum("ki,ij,kj->k", Vh, weight_v, Vh)
        return (quad_u * S).sum() + quad_v.pow(2).sum() + (weight_a * ((U * S.sin()) @ Vh)).sum()

    ours = base.clone().requires_grad_(True)
    sign_invariant_loss(*guarded_svd(ours)).backward()
    reference = base.clone().requires_grad_(True)
    sign_invariant_loss(*torch.linalg.svd(reference, full_matrices=False)).backward()
    assert torch.allclose(ours.grad, reference.grad, atol=1e-8)


def test_guarded_svd_gradient_is_finite_with_repeated_rows():
    torch.manual_seed(2)
    distinct = torch.randn(4, 16, dtype=torch.float64)
    matrix = distinct.repeat(25, 1).requires_grad_(True)  # (100, 16), rank 4: twelve zero singular values
    U, S, Vh = guarded_svd(matrix)
    (U.sum() + S.sum() + Vh[0].sum() + (U * S).pow(2).sum()).backward()
    assert torch.isfinite(matrix.grad).all()
    # Plain torch.linalg.svd gives ~1e32 here (inf once cast to float32): the guard keeps it bounded.
    assert matrix.grad.abs().max() < 1e3


# --------------------------------------------------------------------------- SR
def test_sr_gradients_finite_with_repeated_rows_and_small_batch():
    torch.manual_seed(3)
    sr = SpectralRectification(16)
    repeated = torch.randn(3, 16).repeat(20, 1).requires_grad_(True)  # (60, 16), rank 3
    small = torch.randn(5, 16, requires_grad=True)                     # B = 5 < d = 16
    for s in (repeated, small):
        out = sr(s)
        assert out.shape == s.shape
        out.pow(2).sum().backward()
        assert torch.isfinite(s.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in sr.parameters())
        sr.zero_grad()


def test_small_batch_pads_u_and_s_with_zeros():
    torch.manual_seed(4)
    sr = SpectralRectification(16)
    U, S, first_right = sr.spectrum(torch.randn(5, 16))
    assert U.shape == (5, 16) and S.shape == (16,) and first_right.shape == (16,)
    assert (U[:, 5:] == 0).all() and (S[5:] == 0).all() and (S[:5] > 0).all()


def test_sr_fuses_u_v_s_as_written():
    torch.manual_seed(5)
    sr = SpectralRectification(6)
    s = torch.randn(10, 6)
    U, S, first_right = sr.spectrum(s)
    fused = sr.mlp_f(torch.cat([sr.lin_u(U), sr.lin_v(first_right).expand(10, 6), sr.mlp_s(S).expand(10, 6)], 1))
    with torch.no_grad():
        sr.g.fill_(0.5)
    assert torch.allclose(sr(s), s + 0.5 * fused, atol=1e-6)


def test_fix_signs_makes_largest_entry_of_each_right_vector_positive():
    torch.manual_seed(6)
    s = torch.randn(30, 8)
    fixed = SpectralRectification(8, fix_signs=True)
    free = SpectralRectification(8, fix_signs=False)
    U_fixed, _, v_fixed = fixed.spectrum(s)
    U_free, _, v_free = free.spectrum(s)
    assert v_fixed[v_fixed.abs().argmax()] > 0
    # Same vectors up to a joint sign per singular pair.
    signs = torch.sign((U_fixed * U_free).sum(0))
    assert torch.allclose(U_fixed, U_free * signs, atol=1e-5)
    _, _, Vh = guarded_svd(s)
    pivot_signs = torch.sign(Vh.gather(1, Vh.abs().argmax(1, keepdim=True))).squeeze(1).float()
    assert torch.allclose(signs, pivot_signs)


def test_scale_singular_divides_by_sqrt_batch():
    torch.manual_seed(7)
    s = torch.randn(64, 8)
    _, S_raw, _ = SpectralRectification(8).spectrum(s)
    _, S_scaled, _ = SpectralRectification(8, scale_singular=True).spectrum(s)
    assert torch.allclose(S_scaled, S_raw / 8.0, atol=1e-6)


# --------------------------------------------------------------------------- CR
def test_reference_cr_equals_the_transformer_module_in_eval_mode():
    torch.manual_seed(8)
    cr = ReferenceContextualReencoding(16).eval()
    s = torch.randn(12, 16)
    expected = cr.encoder(s.unsqueeze(1)).squeeze(1) + s
    assert torch.allclose(cr(s, s, s), expected, atol=1e-5)


def test_reference_cr_is_pytorch_default_encoder():
    cr = ReferenceContextualReencoding(64)
    layers = cr.encoder.layers
    assert len(layers) == 2
    for layer in layers:
        assert layer.self_attn.num_heads == 4 and layer.linear1.out_features == 256
        assert layer.norm_first is False and layer.dropout.p == 0.1 and layer.self_attn.dropout == 0.1
        assert layer.activation is nn.functional.relu


def test_reference_cr_training_mode_matches_module_statistics():
    # Dropout draws differ from PyTorch's, the distribution must not: compare means over many rows.
    torch.manual_seed(9)
    cr = ReferenceContextualReencoding(8).train()
    s = torch.randn(1, 8).expand(20000, 8).contiguous()
    ours = cr(s, s, s)
    module = cr.encoder(s.unsqueeze(1)).squeeze(1) + s
    assert not torch.allclose(ours[0], ours[1])  # dropout active
    assert torch.allclose(ours.mean(0), module.mean(0), atol=0.03)
    assert torch.allclose(ours.std(0), module.std(0), atol=0.03)


def test_keep_mask_rate():
    torch.manual_seed(10)
    mask = keep_mask((1000, 1000), 0.1, torch.device("cpu"))
    assert mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.9) < 2e-3
    assert keep_mask((10, 10), 0.0, torch.device("cpu")).all()


def test_light_cr_formula_by_hand():
    torch.manual_seed(11)
    cr = LightContextualReencoding(6)
    eps, m_hat = torch.randn(4, 6), torch.randn(4, 6)
    s = eps + m_hat
    with torch.no_grad():
        cr.r.fill_(0.7)
    hidden = torch.cat([eps, m_hat], 1) @ cr.linear.weight.T + cr.linear.bias
    normed = (hidden - hidden.mean(1, keepdim=True)) / torch.sqrt(hidden.var(1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(cr(s, eps, m_hat), s + 0.7 * normed, atol=1e-5)


# --------------------------------------------------------------------------- PSNet
def make_inputs(batch=24, features=5, dim=8, seed=12):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=generator), torch.randn(batch, features, generator=generator)


def cr_parameters(net: PSNet):
    return list(net.cr.parameters()) + [net.b]


def test_psnet_output_formula():
    torch.manual_seed(13)
    net = PSNet(5, 8).eval()
    eps, metadata = make_inputs()
    m_hat = net.metadata_proj(metadata)
    s = eps + m_hat
    expected = net.sr(s) + (2 * torch.sigmoid(net.a) - 1) * m_hat + net.b * net.cr(s, eps, m_hat)
    assert torch.allclose(net(eps, metadata), expected, atol=1e-6)
    assert net.a.item() == 1.0 and net.b.item() == 1.0 and (net.sr.g == 1).all()


def test_without_sr_no_svd_is_computed_and_sr_gets_no_gradient(monkeypatch):
    calls = []
    original = psnet_module.guarded_svd
    monkeypatch.setattr(psnet_module, "guarded_svd", lambda m: calls.append(1) or original(m))
    torch.manual_seed(14)
    net = PSNet(5, 8, PSNetConfig(sr=False)).eval()
    eps, metadata = make_inputs()
    out = net(eps, metadata)
    out.sum().backward()
    assert calls == []
    assert all(p.grad is None for p in net.sr.parameters())
    m_hat = net.metadata_proj(metadata)
    s = eps + m_hat
    expected = s + (2 * torch.sigmoid(net.a) - 1) * m_hat + net.b * net.cr(s, eps, m_hat)
    assert torch.allclose(out, expected, atol=1e-6)
    net_with_sr = PSNet(5, 8, PSNetConfig(sr=True)).eval()
    net_with_sr.load_state_dict(net.state_dict())
    net_with_sr(eps, metadata)
    assert calls == [1]


def test_without_cr_cr_gets_no_gradient_and_term_is_dropped():
    torch.manual_seed(15)
    net = PSNet(5, 8, PSNetConfig(cr=False))
    eps, metadata = make_inputs()
    out = net(eps, metadata)
    out.pow(2).sum().backward()
    assert all(p.grad is None for p in cr_parameters(net))
    assert net.sr.g.grad is not None
    m_hat = net.metadata_proj(metadata)
    assert torch.allclose(out, net.sr(eps + m_hat) + (2 * torch.sigmoid(net.a) - 1) * m_hat, atol=1e-6)
    with_cr = PSNet(5, 8, PSNetConfig(cr=True))
    with_cr.load_state_dict(net.state_dict())
    with_cr(eps, metadata).pow(2).sum().backward()
    assert all(p.grad is not None for p in cr_parameters(with_cr))


def test_switches_build_the_same_initial_weights():
    torch.manual_seed(16)
    full = PSNet(5, 8).state_dict()
    torch.manual_seed(16)
    ablated = PSNet(5, 8, PSNetConfig(sr=False, cr=False)).state_dict()
    assert full.keys() == ablated.keys()
    assert all(torch.equal(full[k], ablated[k]) for k in full)


def test_standardize_gives_zero_mean_unit_std_rows():
    torch.manual_seed(17)
    net = PSNet(5, 8, PSNetConfig(standardize=True))
    out = net(*make_inputs())
    assert torch.allclose(out.mean(1), torch.zeros(24), atol=1e-5)
    assert torch.allclose(out.std(1, unbiased=False), torch.ones(24), atol=1e-4)


def test_psnet_gradients_finite_with_repeated_metadata_rows_and_small_batch():
    torch.manual_seed(18)
    net = PSNet(5, 16)
    metadata = torch.randn(2, 5).repeat(50, 1)           # the same item 50 times
    for eps, rows in ((torch.zeros(100, 16), metadata), (torch.randn(3, 16), metadata[:3])):
        net.zero_grad()
        net(eps, rows).pow(2).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


def test_psnet_maps_any_feature_width():
    torch.manual_seed(19)
    eps = torch.randn(10, 8)
    assert PSNet(3, 8)(eps, torch.randn(10, 3)).shape == (10, 8)
    assert PSNet(100, 8)(eps, torch.randn(10, 100)).shape == (10, 8)


@pytest.mark.parametrize("form", ["reference", "light"])
def test_golden_psnet_output(form):
    torch.manual_seed(20)
    # fix_signs makes the output a function of the input alone (SVD signs are otherwise the solver's choice).
    net = PSNet(5, 8, PSNetConfig(cr_form=form, fix_signs=True)).eval()
    eps, metadata = make_inputs(batch=12)
    out = net(eps, metadata)
    golden = GOLDEN_PSNET[form]
    assert out.sum().item() == pytest.approx(golden["sum"], abs=1e-4)
    assert out.pow(2).sum().item() == pytest.approx(golden["sq"], abs=1e-3)
    assert out[0].tolist() == pytest.approx(golden["row0"], abs=1e-4)


# Computed once with torch 2.13 CPU from the code above (seed 20).
GOLDEN_PSNET = {
    "reference": {"sum": -9.536705, "sq": 806.15253,
                  "row0": [0.058426, 2.887258, 0.824770, -1.001815, -0.482406, -2.465908, -4.585822, 1.513306]},
    "light": {"sum": -9.536711, "sq": 599.13318,
              "row0": [1.193567, 2.592889, -0.394004, -0.382432, -1.392758, -1.660735, -4.103558, 0.894839]},
}
