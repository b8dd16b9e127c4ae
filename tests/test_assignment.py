"""kd2m.metrics.assignment (device auction solver) against scipy's linear_sum_assignment.

Values are compared to rel 1e-12 (float64); on tie-free costs the assignment itself
must equal scipy's. Costs with ties are checked for a valid permutation of optimal value.
"""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import kd2m.metrics.assignment as A

RTOL = 1e-12


def _scipy(C):
    C = np.asarray(C, dtype=np.float64)
    _, cols = linear_sum_assignment(C)
    return cols, C[np.arange(len(C)), cols].sum()


def _check(C, cols, *, same_cols):
    """cols is a permutation whose value is scipy's optimum (to RTOL); equal to scipy's if asked."""
    Cn = C.detach().double().cpu().numpy()
    cols = cols.cpu().numpy()
    n = len(Cn)
    assert cols.shape == (n,) and sorted(cols.tolist()) == list(range(n)), cols
    ref_cols, ref = _scipy(Cn)
    value = Cn[np.arange(n), cols].sum()
    assert abs(value - ref) <= RTOL * abs(ref), (value, ref, value - ref)
    if same_cols:
        np.testing.assert_array_equal(cols, ref_cols)


def _features(n, seed, d=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    return torch.cdist(x, z) ** 2


@pytest.mark.parametrize("n", [1, 2, 3, 17, 128])
def test_random_costs_match_scipy_exactly(n):
    g = torch.Generator().manual_seed(n)
    C = torch.rand(n, n, generator=g, dtype=torch.float64)
    _check(C, A.assign(C), same_cols=True)
    C = _features(n, seed=n)
    _check(C, A.assign(C), same_cols=True)


def test_n512_squared_euclidean_once():
    C = _features(512, seed=5, d=64)
    res = A.solve(C)
    assert res.fallbacks == 0
    _check(C, res.cols, same_cols=True)
    assert 0 <= float(res.gap) <= 1e-12 * float(C[torch.arange(512), res.cols].sum())


def test_constant_cost_any_permutation():
    for v in (0.0, 3.0, -2.5):
        C = torch.full((64, 64), v, dtype=torch.float64)
        res = A.solve(C)
        assert res.fallbacks == 0
        _check(C, res.cols, same_cols=False)


def test_repeated_rows_and_columns():
    g = torch.Generator().manual_seed(1)
    rows = torch.rand(6, 48, generator=g, dtype=torch.float64)
    C = rows[torch.randint(0, 6, (48,), generator=g)]  # only 6 distinct rows
    _check(C, A.assign(C), same_cols=False)
    _check(C.T.contiguous(), A.assign(C.T.contiguous()), same_cols=False)
    both = C[:, torch.randint(0, 5, (48,), generator=g)]  # duplicated rows and columns
    _check(both, A.assign(both), same_cols=False)


@pytest.mark.parametrize("high", [2, 10])
def test_integer_costs_with_many_optima(high):
    g = torch.Generator().manual_seed(high)
    C = torch.randint(0, high + 1, (40, 40), generator=g).to(torch.float64)
    res = A.solve(C)
    assert res.fallbacks == 0
    _check(C, res.cols, same_cols=False)
    # integer input dtype too
    _check(C, A.assign(C.to(torch.int64)), same_cols=False)


def test_costs_spanning_twelve_decades():
    g = torch.Generator().manual_seed(3)
    C = 10.0 ** torch.empty(64, 64, dtype=torch.float64).uniform_(-6, 6, generator=g)
    _check(C, A.assign(C), same_cols=True)
    _check(C * 1e-6, A.assign(C * 1e-6), same_cols=True)  # tiny costs, range ~1
    _check(C + 1e6, A.assign(C + 1e6), same_cols=False)  # large offset (value rel 1e-12)


def test_nearly_degenerate_second_best():
    """Planted optimum whose best competitor (a swap) is only 1e-9 (relative) worse."""
    n = 20
    g = torch.Generator().manual_seed(4)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    v = torch.rand(n, generator=g, dtype=torch.float64)
    R = 0.5 + 0.5 * torch.rand(n, n, generator=g, dtype=torch.float64)
    R.fill_diagonal_(0.0)
    opt = float(u.sum() + v.sum())
    R[0, 1] = R[1, 0] = 0.5e-9 * opt
    C = u[:, None] + v[None, :] + R
    p, q = torch.randperm(n, generator=g), torch.randperm(n, generator=g)
    C = C[p][:, q]
    cols = A.assign(C)
    _check(C, cols, same_cols=True)
    planted = torch.argsort(q)[p]  # row k is original row p[k], its column is q^-1(p[k])
    assert torch.equal(cols, planted)


def test_batched_equals_per_problem():
    g = torch.Generator().manual_seed(6)
    C = torch.rand(5, 30, 30, generator=g, dtype=torch.float64)
    C[2] = 1.0  # one all-tie problem in the batch
    cols = A.assign(C)
    assert cols.shape == (5, 30)
    for b in range(5):
        _check(C[b], cols[b], same_cols=b != 2)


def test_padding_keeps_every_block_optimal():
    g = torch.Generator().manual_seed(7)
    sizes = [1, 5, 13, 2, 9, 13]
    blocks = [torch.rand(m, m, generator=g, dtype=torch.float64) for m in sizes]
    blocks[3] = -blocks[3] - 100.0  # negative costs
    blocks[4] = torch.full((9, 9), 7.0, dtype=torch.float64)  # constant block
    blocks[5] = torch.randint(0, 3, (13, 13), generator=g).to(torch.float64)  # ties
    P = A.pad_blocks(blocks)
    assert P.shape == (6, 13, 13)
    cols = A.assign(P)
    for k, (m, blk) in enumerate(zip(sizes, blocks, strict=True)):
        real = cols[k, :m]
        assert bool((real < m).all()), (k, real)  # real rows keep real columns
        _check(blk, real, same_cols=k in (0, 1, 2, 3))
        # the padding lemma checked independently: scipy on the padded matrix
        ref, _ = _scipy(P[k].numpy())
        assert (ref[:m] < m).all()
    with pytest.raises(ValueError, match="size must be >="):
        A.pad_blocks(blocks, size=4)


def test_class_mask_solves_each_class():
    n = 60
    g = torch.Generator().manual_seed(8)
    y = torch.randint(0, 6, (n,), generator=g)
    C = _features(n, seed=8)
    cols = A.assign(A.class_mask_cost(C, y))
    assert torch.equal(y[cols], y)  # every match stays within its class
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero()[:, 0]
        pos = {int(i): k for k, i in enumerate(idx)}
        sub = torch.tensor([pos[int(j)] for j in cols[idx]])
        _check(C[idx][:, idx], sub, same_cols=True)


def test_float32_input():
    g = torch.Generator().manual_seed(9)
    C = torch.rand(50, 50, generator=g)
    cols = A.assign(C)
    assert cols.dtype == torch.int64
    _check(C.double(), cols, same_cols=True)


def test_fallback_when_certificate_fails():
    C = _features(40, seed=10)
    before = A.FALLBACKS
    with pytest.warns(RuntimeWarning, match="certificate failed"):
        res = A.solve(C, max_iter=3)
    assert res.fallbacks == 1 and A.FALLBACKS == before + 1
    _check(C, res.cols, same_cols=True)
    res = A.solve(C)  # an ordinary solve certifies without falling back
    assert res.fallbacks == 0 and A.FALLBACKS == before + 1


def test_check_every_changes_syncs_not_result():
    C = _features(64, seed=11)
    r1, r8 = A.solve(C, check_every=1), A.solve(C, check_every=8)
    assert torch.equal(r1.cols, r8.cols)
    assert r8.syncs <= r1.syncs // 8 + 2 and r8.syncs >= 2
    # the GPU's default schedule: reads after 16, 32, 64, 128, 128, ... rounds
    rd = A.solve(C, check_every="doubling")
    assert torch.equal(rd.cols, r1.cols)
    assert rd.iterations >= r1.iterations and rd.iterations < r1.iterations + 128
    reads, k, total = 0, 16, 0
    while total < rd.iterations:
        total, reads, k = total + k, reads + 1, min(2 * k, 128)
    assert rd.syncs == reads + 1 and rd.syncs < r1.syncs // 10  # + the certificate's read
    for bad in (0, "often", True, 2.5):
        with pytest.raises(ValueError, match="check_every must be an int >= 1 or 'doubling'"):
            A.solve(C, check_every=bad)


def test_invalid_costs_are_refused():
    with pytest.raises(ValueError, match="square"):
        A.assign(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        A.assign(torch.tensor([[0.0, float("inf")], [1.0, 2.0]]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.assign(np.zeros((2, 2)))  # type: ignore[arg-type]
    assert A.assign(torch.zeros(0, 0)).shape == (0,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_scipy():
    """The GPU check: same results on CUDA, without copying the cost to the host."""
    import warnings

    C = _features(128, seed=12).cuda()
    A.solve(C)  # warm-up
    torch.cuda.set_sync_debug_mode("warn")  # one warning per host synchronisation
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = A.solve(C)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == res.syncs, [str(w.message) for w in syncs]  # no hidden syncs
    assert res.cols.device == C.device and res.fallbacks == 0
    _check(C, res.cols, same_cols=True)
    P = A.pad_blocks([C[:40, :40], C[40:, 40:]])
    cols = A.assign(P)
    _check(C[:40, :40], cols[0, :40], same_cols=True)
    _check(C[40:, 40:], cols[1], same_cols=True)
