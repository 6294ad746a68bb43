"""Tests of the graph, MF, LightGCN and InfoDCL under the Recommender contract, and every ablation switch.

Spec sections 2-5 and 7: propagation against a dense hand computation, losses by hand, training smoke tests.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

import infodcl.models.psnet as psnet_module
from infodcl.config import ConfigError, LossWeights, ModelConfig, PSNetConfig
from infodcl.data.dataset import InteractionData
from infodcl.data.graph import lightgcn_propagate, normalized_adjacency, symmetric_spmm
from infodcl.errors import DataError
from infodcl.models import build_model
from infodcl.models.base import Batch
from infodcl.models.infodcl import InfoDCL, full_catalogue_infonce
from infodcl.models.lightgcn import LightGCN
from infodcl.models.mf import MF
from infodcl.models.psnet import PSNet

DIM = 16


def make_channels(n_items: int, widths=(("social", DIM), ("knowledge", 7)), seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=(n_items, width)).astype(np.float32) for name, width in widths}


def infodcl_cfg(**changes) -> ModelConfig:
    return ModelConfig(name="infodcl", dim=DIM, steps=50, **changes)


def fixed_batch(data: InteractionData, size: int | None = None, seed: int = 0) -> Batch:
    users, items = data.pairs["train"]
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(users))[:size]
    return Batch(torch.from_numpy(users[pick]), torch.from_numpy(items[pick]),
                 torch.from_numpy(rng.integers(0, data.n_items, len(pick))))


def total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(terms.values())


# --------------------------------------------------------------------------- graph
def tiny_graph():
    # 2 users, 4 items; item 3 has no train user (an isolated node).
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=np.float32))
    adjacency = np.zeros((6, 6))
    adjacency[:2, 2:] = train.toarray()
    adjacency[2:, :2] = train.toarray().T
    degree = adjacency.sum(1)
    inv_sqrt = np.array([1 / np.sqrt(d) if d > 0 else 0.0 for d in degree])
    return train, inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]


def test_normalized_adjacency_matches_dense_hand_computation():
    train, expected = tiny_graph()
    assert expected[0, 3] == pytest.approx(1 / np.sqrt(2 * 2))  # user 0 (deg 2) - item 1 (deg 2)
    assert expected[0, 2] == pytest.approx(1 / np.sqrt(2 * 1))  # user 0 - item 0 (deg 1)
    adjacency = normalized_adjacency(train)
    assert adjacency.layout == torch.sparse_csr
    assert np.allclose(adjacency.to_dense().numpy(), expected, atol=1e-7)


def test_propagation_equals_dense_mean_of_layers():
    train, dense = tiny_graph()
    adjacency = normalized_adjacency(train)
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    stacked = np.vstack([users, items])
    layers = [stacked, dense @ stacked, dense @ dense @ stacked]
    expected = sum(layers) / 3
    out_u, out_i = lightgcn_propagate(adjacency, torch.tensor(users, dtype=torch.float32),
                                      torch.tensor(items, dtype=torch.float32), 2)
    assert np.allclose(out_u.numpy(), expected[:2], atol=1e-6)
    assert np.allclose(out_i.numpy(), expected[2:], atol=1e-6)
    assert np.allclose(out_i[3].numpy(), items[3] / 3, atol=1e-6)  # isolated item: only layer 0 survives


def test_propagation_with_zero_layers_returns_inputs():
    train, _ = tiny_graph()
    users, items = torch.randn(2, 3), torch.randn(4, 3)
    out_u, out_i = lightgcn_propagate(normalized_adjacency(train), users, items, 0)
    assert out_u is users and out_i is items
    with pytest.raises(ValueError, match="layers"):
        lightgcn_propagate(normalized_adjacency(train), users, items, -1)


def test_symmetric_spmm_gradient_equals_dense():
    train, dense = tiny_graph()
    adjacency = normalized_adjacency(train)
    weight = torch.randn(6, 3)
    x = torch.randn(6, 3, requires_grad=True)
    (symmetric_spmm(adjacency, x) * weight).sum().backward()
    assert torch.allclose(x.grad, torch.tensor(dense.T, dtype=torch.float32) @ weight, atol=1e-6)


def test_repeated_pairs_are_one_edge():
    train = sp.coo_matrix((np.ones(3, np.float32), ([0, 0, 1], [0, 0, 1])), shape=(2, 2))
    dense = normalized_adjacency(train).to_dense()
    assert dense[0, 2].item() == pytest.approx(1.0)


# --------------------------------------------------------------------------- MF and LightGCN
def test_mf_loss_by_hand(tiny_data):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mf", dim=DIM, l2=0.01), tiny_data)
    assert isinstance(model, MF)
    batch = fixed_batch(tiny_data, 32)
    terms = model.loss(batch)
    u = model.user_embedding[batch.users]
    p, n = model.item_embedding[batch.pos_items], model.item_embedding[batch.neg_items]
    expected_bpr = -torch.log(torch.sigmoid((u * p).sum(1) - (u * n).sum(1))).mean()
    expected_reg = 0.01 * 0.5 * (u.pow(2).sum() + p.pow(2).sum() + n.pow(2).sum()) / 32
    assert set(terms) == {"bpr", "reg"}
    assert terms["bpr"].item() == pytest.approx(expected_bpr.item(), rel=1e-5)
    assert terms["reg"].item() == pytest.approx(expected_reg.item(), rel=1e-5)
    scores = model.full_sort_scores(torch.tensor([0, 1]))
    assert torch.allclose(scores, model.user_embedding[:2] @ model.item_embedding.T)


def test_lightgcn_loss_uses_propagated_scores_and_layer0_l2(tiny_data):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="lightgcn", dim=DIM, layers=2, l2=1e-4), tiny_data)
    assert isinstance(model, LightGCN)
    batch = fixed_batch(tiny_data, 32)
    terms = model.loss(batch)
    users, items = lightgcn_propagate(normalized_adjacency(tiny_data.train_matrix), model.user_embedding,
                                      model.item_embedding, 2)
    u, p, n = users[batch.users], items[batch.pos_items], items[batch.neg_items]
    assert terms["bpr"].item() == pytest.approx(F.softplus((u * n).sum(1) - (u * p).sum(1)).mean().item(), rel=1e-5)
    u0, i0 = model.layer0()
    raw = [u0[batch.users], i0[batch.pos_items], i0[batch.neg_items]]
    assert terms["reg"].item() == pytest.approx(1e-4 * 0.5 * sum(r.pow(2).sum() for r in raw).item() / 32, rel=1e-5)
    assert u0 is model.user_embedding
    propagated_u, _ = model.propagate()
    assert not torch.allclose(propagated_u, u0)


def test_embedding_init_normal_and_xavier(tiny_data):
    torch.manual_seed(0)
    normal = build_model(ModelConfig(name="mf", dim=64), tiny_data)
    assert normal.user_embedding.std().item() == pytest.approx(0.1, rel=0.1)
    xavier = build_model(ModelConfig(name="mf", dim=64, init="xavier"), tiny_data)
    bound = np.sqrt(6 / (tiny_data.n_users + 64))
    assert xavier.user_embedding.abs().max().item() <= bound
    assert xavier.user_embedding.std().item() == pytest.approx(bound / np.sqrt(3), rel=0.1)


# --------------------------------------------------------------------------- every model trains
@pytest.mark.parametrize("cfg", [ModelConfig(name="mf", dim=DIM), ModelConfig(name="lightgcn", dim=DIM, layers=2),
                                 infodcl_cfg(), infodcl_cfg(psnet=PSNetConfig(cr_form="light"), denoiser="mlp2")],
                         ids=["mf", "lightgcn", "infodcl", "infodcl-light-mlp2"])
def test_loss_falls_in_30_adam_steps(tiny_data, cfg):
    torch.manual_seed(0)
    model = build_model(cfg, tiny_data, make_channels(tiny_data.n_items))
    batch = fixed_batch(tiny_data)  # every train pair

    def evaluate() -> float:
        torch.manual_seed(123)  # the same noise and t before and after training
        with torch.no_grad():
            return total(model.loss(batch)).item()

    before = evaluate()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(30):
        loss = total(model.loss(fixed_batch(tiny_data, 64, seed=step)))
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < 0.9 * before, (before, after)


# --------------------------------------------------------------------------- InfoDCL losses
def test_infodcl_terms_are_the_weighted_spec_losses(tiny_data):
    torch.manual_seed(0)
    weights = LossWeights(rec=0.3, bpr=0.7, reg=0.01, cb=0.02, cl=0.05)
    model = build_model(infodcl_cfg(weights=weights), tiny_data, make_channels(tiny_data.n_items)).eval()
    batch = fixed_batch(tiny_data, 40)
    torch.manual_seed(1)
    terms = model.loss(batch)
    assert list(terms) == ["rec", "cl", "cb", "bpr", "reg"]
    # Replay the same random draws: t first, then eps per channel in order.
    torch.manual_seed(1)
    views = model.diffuse(batch.pos_items)
    x0 = model.item_embedding[batch.pos_items]
    table = F.normalize(model.item_embedding, dim=1)
    rec = sum(F.mse_loss(v["x0_hat"], x0) for v in views.values())
    cl = sum(F.cross_entropy(F.normalize(v["x0_hat"], dim=1) @ table.T / 0.5, batch.pos_items, reduction="sum")
             for v in views.values())
    cb = sum(v["x0_hat"].pow(2).sum() / 40 for v in views.values())
    u, n = model.user_embedding[batch.users], model.item_embedding[batch.neg_items]
    bpr = F.softplus((u * n).sum(1) - (u * x0).sum(1)).mean()
    reg = 0.5 * (u.pow(2).sum() + x0.pow(2).sum()) / 40
    for name, value, weight in [("rec", rec, 0.3), ("cl", cl, 0.05), ("cb", cb, 0.02), ("bpr", bpr, 0.7),
                                ("reg", reg, 0.01)]:
        assert terms[name].item() == pytest.approx(weight * value.item(), rel=1e-4), name


def test_one_t_per_row_shared_by_channels_and_eps_per_channel(tiny_data):
    torch.manual_seed(0)
    model = build_model(infodcl_cfg(), tiny_data, make_channels(tiny_data.n_items)).eval()
    items = torch.arange(10)
    views = model.diffuse(items)
    social, knowledge = views["social"], views["knowledge"]
    assert torch.equal(social["t"], knowledge["t"])
    assert social["t"].shape == (10,) and not (social["t"] == social["t"][0]).all()
    assert not torch.allclose(social["noise"], knowledge["noise"])


def test_full_catalogue_infonce_equals_cross_entropy_and_its_gradient():
    torch.manual_seed(0)
    anchor = F.normalize(torch.randn(6, 5), dim=1).requires_grad_(True)
    table = F.normalize(torch.randn(9, 5), dim=1).requires_grad_(True)
    targets = torch.tensor([0, 3, 3, 8, 1, 2])
    ours = full_catalogue_infonce(anchor, table, targets, 0.2, workspace=torch.empty(6, 9))
    ours.backward()
    grads = anchor.grad.clone(), table.grad.clone()
    anchor.grad = table.grad = None
    reference = F.cross_entropy(anchor @ table.T / 0.2, targets, reduction="sum")
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
    assert torch.allclose(grads[0], anchor.grad, atol=1e-5) and torch.allclose(grads[1], table.grad, atol=1e-5)


def test_reused_workspace_cannot_silently_corrupt_a_pending_backward():
    anchor = F.normalize(torch.randn(4, 3), dim=1).requires_grad_(True)
    table = F.normalize(torch.randn(5, 3), dim=1)
    workspace = torch.empty(4, 5)
    first = full_catalogue_infonce(anchor, table, torch.tensor([0, 1, 2, 3]), 0.5, workspace)
    full_catalogue_infonce(anchor, table, torch.tensor([4, 4, 4, 4]), 0.5, workspace)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()


@pytest.mark.parametrize("negatives", ["in_batch", "sampled"])
def test_other_negative_options(tiny_data, negatives):
    torch.manual_seed(0)
    model = build_model(infodcl_cfg(negatives=negatives, num_sampled=25), tiny_data,
                        make_channels(tiny_data.n_items)).eval()
    batch = fixed_batch(tiny_data, 16)
    torch.manual_seed(1)
    x0_hat = model.diffuse(batch.pos_items)["social"]["x0_hat"]
    torch.manual_seed(2)
    value = model.view_contrast(x0_hat, batch.pos_items)
    anchor = F.normalize(x0_hat, dim=1)
    positives = F.normalize(model.item_embedding[batch.pos_items], dim=1)
    if negatives == "in_batch":
        expected = F.cross_entropy(anchor @ positives.T / 0.5, torch.arange(16), reduction="sum")
    else:
        torch.manual_seed(2)
        sampled = F.normalize(model.item_embedding[torch.randint(0, tiny_data.n_items, (25,))], dim=1)
        logits = torch.cat([(anchor * positives).sum(1, keepdim=True), anchor @ sampled.T], 1) / 0.5
        expected = F.cross_entropy(logits, torch.zeros(16, dtype=torch.long), reduction="sum")
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- ablation switches
def loss_and_grads(model, batch, seed=1):
    model.zero_grad()
    torch.manual_seed(seed)
    terms = model.loss(batch)
    total(terms).backward()
    return terms


def test_gaussian_noise_never_calls_psnet(tiny_data, monkeypatch):
    calls = []
    original = PSNet.forward
    monkeypatch.setattr(PSNet, "forward", lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(0)
    model = build_model(infodcl_cfg(noise="gaussian"), tiny_data, make_channels(tiny_data.n_items))
    batch = fixed_batch(tiny_data, 32)
    loss_and_grads(model, batch)
    assert calls == []
    assert all(p.grad is None for branch in model.branches.values() for p in branch.psnet.parameters())
    assert all(branch.c_null.grad is not None for branch in model.branches.values())  # channels kept
    torch.manual_seed(1)
    views = model.diffuse(batch.pos_items)
    assert list(views) == ["social", "knowledge"]
    informative = build_model(infodcl_cfg(), tiny_data, make_channels(tiny_data.n_items))
    informative.load_state_dict(model.state_dict())
    loss_and_grads(informative, batch)
    assert calls == [1, 1]  # once per channel


def test_without_sr_no_svd_in_a_training_step(tiny_data, monkeypatch):
    calls = []
    original = psnet_module.guarded_svd
    monkeypatch.setattr(psnet_module, "guarded_svd", lambda m: calls.append(1) or original(m))
    model = build_model(infodcl_cfg(psnet=PSNetConfig(sr=False)), tiny_data, make_channels(tiny_data.n_items))
    loss_and_grads(model, fixed_batch(tiny_data, 32))
    assert calls == []
    assert all(p.grad is None for b in model.branches.values() for p in b.psnet.sr.parameters())
    full = build_model(infodcl_cfg(), tiny_data, make_channels(tiny_data.n_items))
    loss_and_grads(full, fixed_batch(tiny_data, 32))
    assert len(calls) == 2


def test_without_cr_cr_parameters_get_no_gradient(tiny_data):
    for cr, expect_grad in ((False, False), (True, True)):
        torch.manual_seed(0)
        model = build_model(infodcl_cfg(psnet=PSNetConfig(cr=cr)), tiny_data, make_channels(tiny_data.n_items))
        loss_and_grads(model, fixed_batch(tiny_data, 32))
        for branch in model.branches.values():
            grads = [p.grad for p in list(branch.psnet.cr.parameters()) + [branch.psnet.b]]
            assert all((g is not None) == expect_grad for g in grads)


def test_zero_cb_weight_zeroes_only_the_balance_term(tiny_data):
    channels = make_channels(tiny_data.n_items)
    batch = fixed_batch(tiny_data, 32)
    results = {}
    for cb in (5e-2, 0.0):
        torch.manual_seed(0)
        model = build_model(infodcl_cfg(weights=LossWeights(cb=cb)), tiny_data, channels)
        torch.manual_seed(1)
        results[cb] = {k: v.item() for k, v in model.loss(batch).items()}
    assert results[0.0]["cb"] == 0.0 and results[5e-2]["cb"] > 0
    for name in ("rec", "cl", "bpr", "reg"):
        assert results[0.0][name] == pytest.approx(results[5e-2][name], rel=1e-6)


def test_channels_none_means_all_in_order_and_a_list_selects(tiny_data):
    channels = make_channels(tiny_data.n_items, widths=(("b", 4), ("a", 5), ("c", 6)))
    model = build_model(infodcl_cfg(), tiny_data, channels)
    assert model.channel_names == ["b", "a", "c"] and list(model.branches) == ["b", "a", "c"]
    selected = build_model(infodcl_cfg(channels=["c", "a"]), tiny_data, channels)
    assert list(selected.branches) == ["c", "a"]
    assert torch.equal(selected.branches["c"].metadata, torch.from_numpy(channels["c"]))
    assert selected.branches["a"].psnet.metadata_proj.in_features == 5
    single = build_model(infodcl_cfg(channels=["a"]), tiny_data, channels)
    torch.manual_seed(1)
    assert list(single.diffuse(torch.arange(4))) == ["a"]


def test_bad_channels_are_reported(tiny_data):
    channels = make_channels(tiny_data.n_items)
    with pytest.raises(ConfigError, match="'missing' is not available"):
        build_model(infodcl_cfg(channels=["missing"]), tiny_data, channels)
    with pytest.raises(ConfigError, match="at least one metadata channel"):
        build_model(infodcl_cfg(), tiny_data, None)
    with pytest.raises(DataError, match=r"channel 'short': expected a \(40, f\) matrix"):
        build_model(infodcl_cfg(), tiny_data, {"short": np.zeros((39, 4), np.float32)})
    broken = np.zeros((tiny_data.n_items, 4), np.float32)
    broken[7, 2] = np.nan
    with pytest.raises(DataError, match="channel 'broken': row 7"):
        build_model(infodcl_cfg(), tiny_data, {"broken": broken})


def test_inference_layers_change_propagation_and_zero_is_raw(tiny_data):
    channels = make_channels(tiny_data.n_items)
    outputs = {}
    for layers in (0, 1, 2, 3):
        torch.manual_seed(0)
        model = build_model(infodcl_cfg(inference_layers=layers), tiny_data, channels)
        outputs[layers] = model.propagate()
        if layers == 0:
            assert outputs[0][0] is model.user_embedding and outputs[0][1] is model.item_embedding
        expected = lightgcn_propagate(normalized_adjacency(tiny_data.train_matrix), model.user_embedding,
                                      model.item_embedding, layers)
        assert torch.allclose(outputs[layers][0], expected[0]) and torch.allclose(outputs[layers][1], expected[1])
    for a, b in ((0, 1), (1, 2), (2, 3)):
        assert not torch.allclose(outputs[a][0], outputs[b][0])


def test_full_sort_scores_use_the_cached_propagation(tiny_data):
    torch.manual_seed(0)
    model = build_model(infodcl_cfg(inference_layers=2), tiny_data, make_channels(tiny_data.n_items))
    model.eval()
    users = torch.tensor([0, 5, 9])
    user_emb, item_emb = model.propagate()
    scores = model.full_sort_scores(users)
    assert scores.shape == (3, tiny_data.n_items)
    assert torch.allclose(scores, user_emb[users] @ item_emb.T, atol=1e-6)


def test_state_dict_round_trip_and_graph_not_stored(tiny_data):
    channels = make_channels(tiny_data.n_items)
    torch.manual_seed(0)
    model = build_model(infodcl_cfg(), tiny_data, channels)
    state = model.state_dict()
    assert "adjacency" not in state and "branches.social.metadata" in state
    torch.manual_seed(99)
    clone = build_model(infodcl_cfg(), tiny_data, channels)
    clone.load_state_dict(state)
    assert torch.allclose(clone.propagate()[1], model.propagate()[1])


def test_infodcl_training_step_stays_finite_with_repeated_items_and_tiny_batch(tiny_data):
    torch.manual_seed(0)
    model = build_model(infodcl_cfg(), tiny_data, make_channels(tiny_data.n_items))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    repeated = Batch(torch.arange(40) % 7, torch.full((40,), 3), torch.full((40,), 5))  # one item 40 times
    small = Batch(torch.tensor([0, 1, 2]), torch.tensor([4, 4, 6]), torch.tensor([1, 2, 3]))  # B = 3 < d
    for batch in (repeated, small):
        terms = model.loss(batch)
        assert all(torch.isfinite(v) for v in terms.values())
        optimizer.zero_grad()
        total(terms).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()


def test_build_model_types(tiny_data):
    channels = make_channels(tiny_data.n_items)
    assert isinstance(build_model(ModelConfig(name="infodcl", dim=DIM), tiny_data, channels), InfoDCL)
    assert isinstance(build_model(ModelConfig(name="lightgcn", dim=DIM), tiny_data), LightGCN)
    assert isinstance(build_model(ModelConfig(name="mf", dim=DIM), tiny_data, channels), MF)
