"""Analyses of a trained InfoDCL model: SNR of x_t per timestep, singular-vector alignment, item t-SNE.

Spec section 7 (the paper's analyses; SNR = E[x]^2 / Var[x] is paper Eq. 17). Every function runs under
torch.no_grad with the model in eval mode (its mode is restored afterwards) and draws its noise from its own
`seed`, leaving the global RNG untouched, so a fixed seed gives the same numbers.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Mapping, Sequence

import numpy as np
import torch

NoiseKind = Literal["informative", "gaussian"]
VARIANCE_FLOOR = 1e-12   # keeps a constant embedding dimension from dividing by zero


# --------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _analysis_mode(model: torch.nn.Module, seed: int) -> Iterator[None]:
    """no_grad + eval() + a private RNG seeded with `seed`; the model's mode and the global RNG come back after."""
    was_training = model.training
    device = next(iter(model.parameters())).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


def sample_items(n_items: int, n_sample: int, seed: int) -> np.ndarray:
    """A fixed, sorted sample of min(n_sample, n_items) distinct item indices (numpy generator `seed`)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=min(int(n_sample), n_items), replace=False)).astype(np.int64)


def _as_index_tensor(items, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(items, dtype=np.int64), device=device)


def _require_diffusion(model) -> None:
    if not hasattr(model, "diffuse") or not hasattr(model, "diffusion"):
        raise TypeError(f"{type(model).__name__} is not an InfoDCL model (it has no diffuse()); "
                        "the diffusion analyses need one")


# --------------------------------------------------------------------------- 1. SNR (paper Eq. 17)
def snr(x: torch.Tensor | np.ndarray) -> float:
    """SNR of a (B, d) batch: per embedding dimension j, mean_j^2 / var_j over the B rows, averaged over the d dims.

    E and Var are taken over the batch rows (the items), separately for each dimension, with the population
    variance (ddof = 0) floored at VARIANCE_FLOOR; the per-dimension ratios are then averaged (not a ratio of
    averages), so each dimension counts equally whatever its scale. Computed in float64.
    """
    values = torch.as_tensor(x).detach().to(torch.float64)                # (B, d)
    if values.ndim != 2 or values.shape[0] < 2:
        raise ValueError(f"snr: expected a (B, d) matrix with B >= 2 rows, got shape {tuple(values.shape)}")
    mean = values.mean(dim=0)                                             # (d,)
    variance = values.var(dim=0, correction=0).clamp_min(VARIANCE_FLOOR)  # (d,)
    return float((mean.pow(2) / variance).mean())


def snr_per_timestep(model, items, timesteps: Sequence[int], noise: NoiseKind = "informative",
                     seed: int = 0) -> dict[str, np.ndarray]:
    """SNR (see `snr`) of x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise at each t, per channel: {channel: (len(t),)}.

    x0 are the model's item embeddings of `items` (one batch; all rows share the same t). "informative" is the
    noise the model itself diffuses with (`model.diffuse`: PSNet's output; for the w/o-PSNet ablation that is
    plain Gaussian noise, so both curves then coincide); "gaussian" is eps ~ N(0, I) at the same x0 and t.
    The base eps is re-drawn from `seed` at every t, so every t sees the same noise and the curve only
    reflects the schedule, not sampling jitter.
    """
    _require_diffusion(model)
    if noise not in ("informative", "gaussian"):
        raise ValueError(f"snr_per_timestep: noise must be 'informative' or 'gaussian', got {noise!r}")
    steps = model.diffusion.steps
    bad = [t for t in timesteps if not 0 <= int(t) < steps]
    if bad:
        raise ValueError(f"snr_per_timestep: timesteps {bad} outside 0..{steps - 1}")
    device = next(iter(model.parameters())).device
    index = _as_index_tensor(items, device)                               # (B,)
    curves: dict[str, list[float]] = {name: [] for name in model.branches}
    for t in timesteps:
        # A fresh private RNG per t with the same seed: the same eps draw at every timestep.
        with _analysis_mode(model, seed):
            t_rows = torch.full((index.shape[0],), int(t), dtype=torch.long, device=device)  # (B,)
            if noise == "informative":
                views = model.diffuse(index, t_rows)
                for name, view in views.items():
                    curves[name].append(snr(view["x_t"]))
            else:
                x0 = model.item_embedding[index]                          # (B, d)
                for name in model.branches:                               # eps drawn per channel, as diffuse
                    eps = torch.randn_like(x0)                            # (B, d)
                    curves[name].append(snr(model.diffusion.q_sample(x0, t_rows, eps)))
    return {name: np.asarray(values, dtype=np.float64) for name, values in curves.items()}


# --------------------------------------------------------------------------- 2. singular-vector alignment
def top_right_singular_vectors(x: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """The first k right singular vectors (rows, (k, d)) of the uncentred (B, d) matrix, in float64."""
    values = torch.as_tensor(x).detach().cpu().to(torch.float64)         # (B, d)
    # torch rather than numpy: torch's thread setting governs it (numpy's BLAS oversubscribes a busy CPU).
    _, _, vh = torch.linalg.svd(values, full_matrices=False)             # vh: (min(B, d), d)
    return vh[:k].numpy()


def singular_vector_cosines(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, k: int) -> np.ndarray:
    """(k, k) matrix of |cos| between right singular vector i of `a` and j of `b` (both (B, d), same d).

    Singular vectors are unit-norm and their sign is arbitrary, hence the absolute value; every entry is in
    [0, 1], and a matrix against itself gives the identity (for distinct singular values).
    """
    va, vb = top_right_singular_vectors(a, k), top_right_singular_vectors(b, k)  # (k, d) each
    if va.shape[1] != vb.shape[1]:
        raise ValueError(f"singular_vector_cosines: dims differ ({va.shape[1]} vs {vb.shape[1]})")
    return np.clip(np.abs(va @ vb.T), 0.0, 1.0)                          # (k, k)


def singular_vector_alignment(model, items, t: int, k: int = 8, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Per channel, {"x0": (k, k), "noise": (k, k)}: |cos| between the top-k right singular vectors of a
    diffusion input and those of the output x0_hat.

    Inputs: "x0", the item embeddings being diffused (what x0_hat is trained to reconstruct), and "noise",
    the channel's noise (PSNet's informative noise, or Gaussian for the w/o-PSNet ablation). Output: the
    denoiser's x0_hat at timestep t (shared by all rows), all from one `model.diffuse` call on `items`.
    Right singular vectors live in embedding space (d), so they compare across the matrices; the diagonal
    compares the i-th direction of input and output. The matrices are not centred.
    """
    _require_diffusion(model)
    if not 0 <= int(t) < model.diffusion.steps:
        raise ValueError(f"singular_vector_alignment: t={t} outside 0..{model.diffusion.steps - 1}")
    device = next(iter(model.parameters())).device
    index = _as_index_tensor(items, device)                               # (B,)
    k = min(int(k), index.shape[0], model.item_embedding.shape[1])
    with _analysis_mode(model, seed):
        t_rows = torch.full((index.shape[0],), int(t), dtype=torch.long, device=device)  # (B,)
        views = model.diffuse(index, t_rows)
        x0 = model.item_embedding[index]                                  # (B, d)
        return {name: {"x0": singular_vector_cosines(x0, view["x0_hat"], k),
                       "noise": singular_vector_cosines(view["noise"], view["x0_hat"], k)}
                for name, view in views.items()}


# --------------------------------------------------------------------------- 3. t-SNE of item embeddings
def item_embedding_tsne(models: Mapping[str, torch.nn.Module], items, seed: int = 0, perplexity: float = 30.0,
                        propagated: bool = True) -> dict[str, np.ndarray]:
    """2-D t-SNE coordinates (B, 2) of the same items' embeddings for each model (e.g. InfoDCL vs its
    Gaussian-noise variant). `propagated` uses the scoring embeddings (after LightGCN propagation), else
    the layer-0 tables. Needs scikit-learn (present in the environment through mlflow, not a declared
    dependency of this package), imported here only.
    """
    try:
        from sklearn.manifold import TSNE
    except ImportError as error:   # pragma: no cover - depends on the environment
        raise ImportError("item_embedding_tsne needs scikit-learn (pip install scikit-learn)") from error
    index = np.asarray(items, dtype=np.int64)
    perplexity = min(float(perplexity), (len(index) - 1) / 3.0)         # sklearn requires perplexity < n
    coordinates = {}
    for name, model in models.items():
        with _analysis_mode(model, seed):
            item_table = (model.propagate() if propagated else model.layer0())[1]  # (n_items, d)
            embedding = item_table[torch.as_tensor(index, device=item_table.device)].double().cpu().numpy()
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        coordinates[name] = tsne.fit_transform(embedding)                 # (B, 2)
    return coordinates
