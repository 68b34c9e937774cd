"""The pure token-reduction core (compress/merge.py, compress/token_pruning.py) against naive per-row loops."""

import math

import pytest
import torch

from slimformer.compress.merge import bipartite_soft_matching, size_bias, uniform_merge
from slimformer.compress.token_pruning import attention_received, attentive_pruning

TOL = 1e-5


def naive_merge(metric, x, size, protected, r):
    """One row at a time, one token at a time: what bipartite soft matching means."""
    out_x, out_size = [], []
    for b in range(x.shape[0]):
        ok = [bool(size[b, t] > 0 and not protected[b, t]) for t in range(x.shape[1])]
        a = [t for t in range(0, x.shape[1], 2) if ok[t]]
        bs = [t for t in range(1, x.shape[1], 2) if ok[t]]
        proposals = []
        for t in a:
            sims = [float(torch.cosine_similarity(metric[b, t], metric[b, u], dim=0)) for u in bs]
            best = max(range(len(bs)), key=lambda i: (sims[i], -i)) if bs else None
            if best is not None:
                proposals.append((sims[best], t, bs[best]))
        n = min(r, sum(ok) // 2, len(a)) if bs else 0
        chosen = sorted(proposals, key=lambda p: -p[0])[:n]
        groups = {t: [t] for t in range(x.shape[1])}
        for _, src, dst in chosen:
            groups[dst].append(src)
            del groups[src]
        live = [t for t in sorted(groups) if size[b, t] > 0]
        xs = [sum(x[b, u] * size[b, u] for u in groups[t]) / sum(size[b, u] for u in groups[t]) for t in live]
        out_x.append(torch.stack(xs))
        out_size.append(torch.stack([sum(size[b, u] for u in groups[t]) for t in live]))
    return out_x, out_size


def random_case(b=3, t=11, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, c, generator=g)
    metric = torch.randn(b, t, c, generator=g)
    size = torch.randint(1, 4, (b, t), generator=g).float()
    size[1, 8:] = 0  # padding
    size[2, 5:] = 0
    protected = torch.zeros(b, t, dtype=torch.bool)
    protected[:, 0] = True
    protected[0, 7] = True
    return metric, x, size, protected


@pytest.mark.parametrize("r", [0, 1, 2, 3, 5])
def test_matching_equals_naive(r):
    metric, x, size, protected = random_case()
    red = bipartite_soft_matching(metric, r, size, protected)
    y, new_size, new_protected = red.apply(x, size, protected)
    ref_x, ref_size = naive_merge(metric, x, size, protected, r)
    for b in range(x.shape[0]):
        n = len(ref_x[b])
        assert torch.allclose(y[b, :n], ref_x[b], atol=TOL)
        assert torch.equal(new_size[b, :n], ref_size[b])
        assert (new_size[b, n:] == 0).all()  # the rest is dead padding
    assert new_protected.sum() == protected.sum()  # protected tokens survive, never merged


@pytest.mark.parametrize("t, r", [(11, 1), (11, 5), (11, 9), (12, 4), (50, 8), (3, 1), (2, 1)])
def test_uniform_merge_equals_naive(t, r):
    """The static-shape path for alike rows (no padding, first token protected) merges exactly the
    same tokens into the same groups, keeps reading order, and conserves the size-weighted sum."""
    g = torch.Generator().manual_seed(t * 100 + r)
    x, metric = torch.randn(3, t, 6, generator=g), torch.randn(3, t, 5, generator=g)
    size = torch.randint(1, 4, (3, t), generator=g).float()
    protected = torch.zeros(3, t, dtype=torch.bool)
    protected[:, 0] = True
    y, new_size = uniform_merge(x, size, metric, r, protect_first=True)
    ref_x, ref_size = naive_merge(metric, x, size, protected, r)
    for b in range(3):
        assert torch.allclose(y[b], ref_x[b], atol=TOL)
        assert torch.equal(new_size[b], ref_size[b])
    assert torch.allclose((y * new_size[..., None]).sum(1), (x * size[..., None]).sum(1), atol=1e-4)


@pytest.mark.parametrize("t, r", [(11, 2), (12, 3), (12, 9), (20, 4), (3, 1)])
def test_uniform_merge_protecting_both_ends_equals_naive(t, r):
    """Unpadded text: [CLS] first and [SEP] last never merge, whichever set (A or B) the last falls in."""
    g = torch.Generator().manual_seed(t * 10 + r)
    x, metric = torch.randn(2, t, 6, generator=g), torch.randn(2, t, 5, generator=g)
    metric[:, -1] = metric[:, -2]  # the last token is the best match of its neighbour: protection must win
    size = torch.ones(2, t)
    protected = torch.zeros(2, t, dtype=torch.bool)
    protected[:, 0] = protected[:, -1] = True
    y, new_size = uniform_merge(x, size, metric, r, protect_first=True, protect_last=True)
    ref_x, ref_size = naive_merge(metric, x, size, protected, r)
    for b in range(2):
        assert torch.allclose(y[b], ref_x[b], atol=TOL)
        assert torch.equal(new_size[b], ref_size[b])
        assert new_size[b, 0] == 1 and new_size[b, -1] == 1 and torch.equal(y[b, -1], x[b, -1])


def test_size_weighted_sum_is_conserved():
    metric, x, size, protected = random_case(seed=1)
    red = bipartite_soft_matching(metric, torch.tensor([3, 2, 1]), size, protected)
    y, new_size, _ = red.apply(x, size, protected)
    assert torch.allclose((y * new_size[..., None]).sum(1), (x * size[..., None]).sum(1), atol=TOL)
    assert torch.equal(new_size.sum(1), size.sum(1))


def test_r0_and_keep_all_are_identity():
    metric, x, size, protected = random_case(seed=2)
    for red in (bipartite_soft_matching(metric, 0, size, protected),
                attentive_pruning(torch.rand(size.shape), 1.0, size, protected, fuse=True)):
        y, new_size, _ = red.apply(x, size, protected)
        live = int((size > 0).sum(1).max())
        assert torch.equal(y, x[:, :live]) and torch.equal(new_size, size[:, :live])


def test_padding_row_reduces_like_the_unpadded_row():
    metric, x, size, protected = random_case(seed=3)
    red = bipartite_soft_matching(metric, 2, size, protected)
    y, new_size, _ = red.apply(x, size, protected)
    n = 5  # row 2 has 5 real tokens
    alone = bipartite_soft_matching(metric[2:, :n], 2, size[2:, :n], protected[2:, :n])
    y1, s1, _ = alone.apply(x[2:, :n], size[2:, :n], protected[2:, :n])
    assert torch.allclose(y[2, :y1.shape[1]], y1[0], atol=TOL) and torch.equal(new_size[2, :s1.shape[1]], s1[0])


def test_unmerge_gives_every_token_its_group_value():
    metric, x, size, protected = random_case(seed=4)
    red = bipartite_soft_matching(metric, 3, size, protected)
    y, _, _ = red.apply(x, size, protected)
    back = red.unmerge(y)
    target = red.target
    for b in range(x.shape[0]):
        for t in range(x.shape[1]):
            if size[b, t] > 0:
                assert torch.equal(back[b, t], back[b, target[b, t]])


def test_pruning_keeps_top_scores_and_fuses_the_rest():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 9, 4, generator=g)
    size = torch.ones(2, 9)
    size[1, 6:] = 0
    protected = torch.zeros(2, 9, dtype=torch.bool)
    protected[:, 0] = True
    score = torch.rand(2, 9, generator=g)
    red = attentive_pruning(score, 0.5, size, protected, fuse=True)
    y, new_size, _ = red.apply(x, size, protected)
    for b, n in ((0, 8), (1, 5)):
        keep = math.ceil(0.5 * n)
        order = sorted(range(1, n + 1), key=lambda t: -float(score[b, t]))
        kept, dropped = sorted(order[:keep]), order[keep:]
        assert torch.equal(y[b, :keep + 1], x[b, [0, *kept]])
        w = score[b, dropped]
        fused = (x[b, dropped] * w[:, None]).sum(0) / w.sum()
        assert torch.allclose(y[b, keep + 1], fused, atol=TOL)
        assert new_size[b, keep + 1] == len(dropped) and new_size[b].sum() == size[b].sum()
    plain = attentive_pruning(score, 0.5, size, protected, fuse=False)
    _, s, _ = plain.apply(x, size, protected)
    assert s.sum(1).tolist() == [5.0, 4.0]  # cls + ceil(n/2) kept, the rest gone


def test_attention_received_and_size_bias():
    g = torch.Generator().manual_seed(6)
    q, k = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    size = torch.tensor([[1.0, 2, 1, 3, 1], [1, 1, 1, 0, 0]])
    bias = size_bias(size, True, torch.float32)
    probs = ((q @ k.transpose(-1, -2)) / 2 + bias).softmax(-1)  # scale 1/sqrt(4)
    assert torch.allclose(attention_received(q, k, bias, size, "cls"), probs[:, :, 0].mean(1), atol=TOL)
    mean = torch.stack([probs[0].mean(0).mean(0), probs[1, :, :3].mean(0).mean(0)])
    assert torch.allclose(attention_received(q, k, bias, size, "mean"), mean, atol=TOL)
    assert probs[1, ..., 3:].max() == 0  # dead slots get no attention
