"""PSNet: turns Gaussian noise and a channel's metadata rows into informative noise for the diffusion.

Spec section 2 and section 9: spectral rectification (SR), contextual re-encoding (CR, reference and light forms),
output eps_info = SR(s) + (2 sigmoid(a) - 1) m_hat + b CR(s) with s = eps + m_hat.

Ablation reading (spec section 7): sr=False ("w/o SR", CR only) replaces SR(s) by s; cr=False ("w/o CR", SR only)
drops the b CR(s) term. Every sub-network is constructed whatever the switches, so two ablation runs with the same
seed start from the same weights for what they share; a switched-off part is simply never called (no gradient).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from infodcl.config import PSNetConfig


# --------------------------------------------------------------------------- SVD with a guarded gradient
def gram_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a float64 (m, n) matrix through the eigendecomposition of its small Gram matrix.

    For the (2000, 64) batches of PSNet this is ~5x faster than LAPACK's gesdd and, in float64, accurate to
    ~1e-16 * cond^2 (the noise keeps cond small). Singular vectors whose singular value is (numerically) zero
    are returned as zero columns: they are arbitrary in any SVD and multiply nothing in U diag(S) V^T.
    """
    m, n = matrix.shape
    tall = m >= n
    gram = matrix.T @ matrix if tall else matrix @ matrix.T          # (k, k), k = min(m, n)
    eigenvalues, eigenvectors = torch.linalg.eigh(gram)              # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    S = eigenvalues.clamp_min(0).sqrt()                              # (k,) descending
    floor = S[0] * max(m, n) * torch.finfo(matrix.dtype).eps * 1e3
    inverse = torch.where(S > floor, 1.0 / S.clamp_min(torch.finfo(matrix.dtype).tiny), torch.zeros_like(S))
    if tall:
        V = eigenvectors                                             # (n, k)
        U = (matrix @ V) * inverse.unsqueeze(0)                      # (m, k)
    else:
        U = eigenvectors                                             # (m, k)
        V = (matrix.T @ U) * inverse.unsqueeze(0)                    # (n, k)
    return U, S, V.T.contiguous()


class _GuardedSVD(torch.autograd.Function):
    """Thin SVD A = U diag(S) V^T (float64) whose backward stays finite at repeated or zero singular values.

    The exact gradient divides by s_j^2 - s_i^2 and by s_i; both blow up when singular values coincide (e.g.
    a batch with repeated rows is rank deficient). We use torch's own formula (FunctionsManual svd_backward,
    real case) with those denominators kept at least `relative_gap * s_max^2` (resp. `relative_gap * s_max`)
    away from zero, so the gradient equals the exact one whenever the spectrum is well separated.
    """

    relative_gap = 1e-6

    @staticmethod
    def forward(ctx, matrix: torch.Tensor):
        U, S, Vh = gram_svd(matrix)
        ctx.save_for_backward(U, S, Vh)
        return U, S, Vh

    @staticmethod
    def backward(ctx, grad_U, grad_S, grad_Vh):
        U, S, Vh = ctx.saved_tensors
        m, n, k = U.shape[0], Vh.shape[1], S.shape[0]
        V = Vh.transpose(0, 1)                                   # (n, k)
        if grad_U is None and grad_Vh is None:
            if grad_S is None:
                return None
            return (U * grad_S.unsqueeze(0)) @ Vh
        scale = S.max().clamp_min(torch.finfo(S.dtype).tiny)
        gap = _GuardedSVD.relative_gap

        def guard(denominator: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
            sign = torch.where(denominator >= 0, 1.0, -1.0).to(denominator.dtype)
            return torch.where(denominator.abs() < floor, sign * floor, denominator)

        S2 = S * S
        E = S2.unsqueeze(0) - S2.unsqueeze(1)                    # (k, k): s_j^2 - s_i^2
        E = guard(E, gap * scale * scale)
        S_safe = guard(S, gap * scale)
        inner = torch.diag(grad_S) if grad_S is not None else torch.zeros(k, k, dtype=S.dtype, device=S.device)
        if grad_U is not None:
            UhgU = U.transpose(0, 1) @ grad_U                    # (k, k)
            inner = inner + ((UhgU - UhgU.transpose(0, 1)) / E) * S.unsqueeze(0)
        grad_V = grad_Vh.transpose(0, 1) if grad_Vh is not None else None
        if grad_V is not None:
            VhgV = V.transpose(0, 1) @ grad_V                    # (k, k)
            inner = inner + S.unsqueeze(1) * ((VhgV - VhgV.transpose(0, 1)) / E)
        if m > k and grad_U is not None:
            # U inner Vh + (I - U U^T) grad_U S^-1 Vh, grouped so only two (m, k)-sized products remain.
            inverse = 1.0 / S_safe.unsqueeze(0)                   # (1, k)
            left = U @ (inner - UhgU * inverse) + grad_U * inverse   # (m, k)
            grad_A = left @ Vh                                    # (m, n)
        else:
            grad_A = U @ inner @ Vh                               # (m, n)
        if n > k and grad_V is not None:
            outside = grad_V - V @ (V.transpose(0, 1) @ grad_V)  # (n, k)
            grad_A = grad_A + U @ (outside / S_safe.unsqueeze(0)).transpose(0, 1)
        return grad_A


def guarded_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD in float64 with a finite gradient; returns U (B, k), S (k,), Vh (k, d), k = min(B, d)."""
    return _GuardedSVD.apply(matrix.to(torch.float64))


# --------------------------------------------------------------------------- SR
class SpectralRectification(nn.Module):
    """SR(s) = s + MLP_F([Lin_U(U), Lin_V(V^T[0]), MLP_S(S)]) * g  (spec 2)."""

    def __init__(self, dim: int, fix_signs: bool = False, scale_singular: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.fix_signs = fix_signs
        self.scale_singular = scale_singular
        self.lin_u = nn.Linear(dim, dim)
        self.lin_v = nn.Linear(dim, dim)
        self.mlp_s = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.mlp_f = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.g = nn.Parameter(torch.ones(1, dim))

    def spectrum(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """U (B, d) zero-padded, S (d,) zero-padded, first right singular vector (d,); in s's dtype."""
        batch_size = s.shape[0]
        U, S, Vh = guarded_svd(s)                                 # (B, k), (k,), (k, d)
        if self.fix_signs:
            # A singular pair (u_k, v_k) is defined up to a joint sign: make v_k's largest-magnitude entry positive.
            pivot = Vh.abs().argmax(dim=1, keepdim=True)          # (k, 1)
            signs = torch.sign(Vh.gather(1, pivot)).squeeze(1).detach()
            signs = torch.where(signs == 0, torch.ones_like(signs), signs)
            U = U * signs.unsqueeze(0)
            Vh = Vh * signs.unsqueeze(1)
        if self.scale_singular:
            S = S / math.sqrt(batch_size)                         # singular values grow with sqrt(B)
        missing = self.dim - S.shape[0]
        if missing > 0:                                           # B < d: pad U and S with zeros (spec 9)
            U = nn.functional.pad(U, (0, missing))
            S = nn.functional.pad(S, (0, missing))
        return U.to(s.dtype), S.to(s.dtype), Vh[0].to(s.dtype)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        U, S, first_right = self.spectrum(s)
        batch_size = s.shape[0]
        u_feat = self.lin_u(U)                                              # (B, d)
        v_feat = self.lin_v(first_right).unsqueeze(0).expand(batch_size, -1)  # (B, d)
        s_feat = self.mlp_s(S).unsqueeze(0).expand(batch_size, -1)            # (B, d)
        fused = self.mlp_f(torch.cat([u_feat, v_feat, s_feat], dim=1))        # (B, d)
        return s + fused * self.g


# --------------------------------------------------------------------------- CR
def keep_mask(shape: tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A boolean dropout keep-mask, P(keep) = 1 - p up to 2^-16 (p is rounded to a multiple of 1/65536).

    Built from random 16-bit words cut out of 64-bit draws: a quarter of the generator calls of
    torch.rand and ~9x faster on CPU than bernoulli_ (what F.dropout uses); on the 2-core CPU the CR's
    dropout masks otherwise cost more than its matrix products.
    """
    if torch.device(device).type != "cpu":
        return torch.rand(shape, device=device) >= p  # accelerators generate uniforms cheaply
    count = math.prod(shape)
    words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((count + 3) // 4,), dtype=torch.int64, device=device)
    words = words.view(torch.int16)[:count].view(shape)          # uniform on [-32768, 32767]
    threshold = round(p * 65536) - 32768
    return words >= threshold


def _dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with `keep_mask` (one float mask holding 0 or 1/(1-p): the cheapest form measured)."""
    if not training or p == 0.0:
        return x
    return x * (keep_mask(tuple(x.shape), p, x.device).to(x.dtype) * (1.0 / (1.0 - p)))


def single_token_encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """What `layer` computes for a sequence of ONE token (B, d), without the work that cannot matter.

    With a single key the attention weights are exactly 1 (softmax over one entry), so attention is
    out_proj(W_v x + b_v): the query and key projections and the softmax drop out. Attention dropout acts on
    those unit weights, i.e. it zeroes whole heads of the value. Post-norm, as PyTorch's default.
    """
    attention = layer.self_attn
    batch_size, dim = x.shape
    heads = attention.num_heads
    value = nn.functional.linear(x, attention.in_proj_weight[2 * dim:], attention.in_proj_bias[2 * dim:])  # (B, d)
    if layer.training and attention.dropout > 0:
        keep = keep_mask((batch_size, heads, 1), attention.dropout, x.device).to(x.dtype)  # (B, h, 1)
        value = (value.view(batch_size, heads, dim // heads) * keep).view(batch_size, dim) / (1 - attention.dropout)
    attended = attention.out_proj(value)                                                     # (B, d)
    x = layer.norm1(x + _dropout(attended, layer.dropout1.p, layer.training))
    hidden = _dropout(layer.activation(layer.linear1(x)), layer.dropout.p, layer.training)   # (B, 4d)
    return layer.norm2(x + _dropout(layer.linear2(hidden), layer.dropout2.p, layer.training))


class ReferenceContextualReencoding(nn.Module):
    """CR(s) = TransformerEncoder(s as a single token) + s; PyTorch encoder defaults (post-norm, ReLU, dropout 0.1).

    The weights live in a real nn.TransformerEncoder (state dict as the reference's); the forward pass uses
    `single_token_encoder_layer`, equal to the module's own output (tested) at a fraction of the cost.
    """

    def __init__(self, dim: int, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=heads, dim_feedforward=4 * dim, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)

    def forward(self, s: torch.Tensor, eps: torch.Tensor, m_hat: torch.Tensor) -> torch.Tensor:
        hidden = s
        for layer in self.encoder.layers:
            hidden = single_token_encoder_layer(layer, hidden)   # (B, d)
        if self.encoder.norm is not None:
            hidden = self.encoder.norm(hidden)
        return hidden + s                                        # (B, d)


class LightContextualReencoding(nn.Module):
    """The paper's light form: CR = s + r * LayerNorm(W [eps, m_hat] + b), r a learnable scalar starting at 1."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.r = nn.Parameter(torch.ones(1))

    def forward(self, s: torch.Tensor, eps: torch.Tensor, m_hat: torch.Tensor) -> torch.Tensor:
        return s + self.r * self.norm(self.linear(torch.cat([eps, m_hat], dim=1)))  # (B, d)


# --------------------------------------------------------------------------- PSNet
class PSNet(nn.Module):
    """eps_info = SR(s) + (2 sigmoid(a) - 1) m_hat + b CR(s), s = eps + W_m m + b_m."""

    def __init__(self, in_features: int, dim: int, cfg: PSNetConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or PSNetConfig()
        self.use_sr, self.use_cr, self.standardize = cfg.sr, cfg.cr, cfg.standardize
        self.metadata_proj = nn.Linear(in_features, dim)  # f -> d
        self.sr = SpectralRectification(dim, fix_signs=cfg.fix_signs, scale_singular=cfg.scale_singular)
        if cfg.cr_form == "reference":
            self.cr = ReferenceContextualReencoding(dim)
        else:
            self.cr = LightContextualReencoding(dim)
        self.a = nn.Parameter(torch.ones(1))
        self.b = nn.Parameter(torch.ones(1))

    def forward(self, eps: torch.Tensor, metadata: torch.Tensor) -> torch.Tensor:
        m_hat = self.metadata_proj(metadata)                 # (B, d)
        s = eps + m_hat                                      # (B, d)
        rectified = self.sr(s) if self.use_sr else s         # w/o SR: SR(s) -> s
        out = rectified + (2 * torch.sigmoid(self.a) - 1) * m_hat
        if self.use_cr:                                      # w/o CR: the term is dropped
            out = out + self.b * self.cr(s, eps, m_hat)
        if self.standardize:
            # The informative noise has std ~3 at init; optionally bring each row to zero mean, unit variance.
            out = (out - out.mean(dim=1, keepdim=True)) / (out.std(dim=1, unbiased=False, keepdim=True) + 1e-6)
        return out                                           # (B, d)
