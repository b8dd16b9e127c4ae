r"""Exact linear assignment on the cost's device: Jacobi auction with epsilon scaling.

``assign(cost)`` returns ``cols`` with ``cols[i]`` the column assigned to row ``i``
minimising ``sum_i cost[i, cols[i]]`` over permutations (``scipy.optimize.
linear_sum_assignment``'s problem for square costs), for one ``(n, n)`` cost or a
stack ``(B, n, n)`` of independent problems. Everything runs in torch on
``cost.device`` in float64, so on CUDA the plan never leaves the GPU.

Algorithm (Bertsekas' auction, forward, Jacobi bidding). The cost is shifted and
scaled per problem to ``c`` in ``[0, 1]`` (range units; this changes no assignment).
Every unassigned row bids at once for its best column ``j = argmin_k c_ik + p_k``,
raising the price to ``p_j + (w2 - w1) + eps`` (``w1, w2`` = best and second best
``c_ik + p_k``); each column goes to its highest bidder and its former owner becomes
unassigned. When every row of a problem is assigned and its ``eps`` is above its
stopping value, ``eps`` is divided by ``theta`` (epsilon scaling, prices kept) and
only the rows that violate the new eps-complementary slackness rebid. The stopping
value is ``eps_stop = max(rtol * min(1, |V| / R) / n, 2**-50 (P / n + max|p|))``, with
``R`` the cost's range, ``V`` the current assignment's value in the cost's units and
``P`` the same in range units (the second term: an eps below the prices' round-off
would be lost when added to them). Phases advance on the device, problem by problem,
so the only host synchronisations are the termination check (a device-side done
flag read every ``check_every`` rounds: ``ceil(rounds / check_every)`` reads; off the
CPU the default reads after 16 rounds, then after intervals doubling up to 128, about 9
reads for 900 rounds) and one final read of the certificate. The bidding-round budget
``max_iter`` bounds them.

Exactness. At the end every row is within ``eps`` of its best column (eps-CS),
hence (Bertsekas) the assignment's value is within ``n eps`` of the optimum.
Certificate, computed independently at the end: with ``u_i = min_j (c_ij + p_j)``
and ``v_j = -p_j`` (a feasible dual), the duality gap ``G = P - sum_i u_i +
sum_j p_j`` bounds ``P - OPT >= 0``. The result is accepted when
``G <= 2 rtol min(1, |V| / R) + 64 * 2**-52 (P + sum_i |u_i| + 2 n max|p|)``, the
last term the float64 round-off of the dual sums. So, in the cost's units:
``value - optimum <= 2 rtol min(R, |value|)`` + round-off; with the default
``rtol = 1e-12``, the value equals the optimum to a relative 2e-12 (and to 2e-12 of
the range). When the certificate fails (budget spent, non-convergence), that
problem is solved again with ``scipy.optimize.linear_sum_assignment`` on the CPU,
the module counter ``FALLBACKS`` is incremented and a ``RuntimeWarning`` issued:
the returned assignment is always optimal to that tolerance.

Consequences: with integer costs of range ``R < 1 / (2 rtol)`` the assignment is
exactly optimal (two integer assignments differ by >= 1); on generic real costs
(best and second best assignments further apart than the tolerance) it is *the*
optimal assignment, identical to scipy's. With ties (several optimal assignments)
any one of them may be returned; the value, and the envelope gradient of the OT loss
up to the choice among optimal plans, are the same.

Ties and price wars. Rows tied between columns would all bid for the same one in a
Jacobi round; exact ties for the best column are broken by a fixed, seeded random
priority per (row, column), which changes no cost and no bid. Repeated rows still
make price wars (about 2,500 to 4,500 rounds measured at n = 128 on integer costs in
{0, 1, 2}, against about 450 on random real costs);
they end within the budget and are certified like any other problem.

Class-conditional problems: :func:`class_mask_cost` turns the n x n cost and labels
into one problem whose optimum is the per-class optima (no per-class indexing, so
no host synchronisation); :func:`pad_blocks` stacks per-class costs of different
sizes into one ``(B, N, N)`` batch exactly (proofs in their docstrings).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "assign",
    "solve",
    "AuctionResult",
    "pad_blocks",
    "class_mask_cost",
    "bench_assignment",
    "FALLBACKS",
]

FALLBACKS = 0
"""How many problems the certificate rejected and scipy solved instead (module counter)."""

_ROUNDOFF = 64 * 2.0**-52  # round-off allowance of the certificate, per unit of the summed terms
_EPS_FLOOR = 2.0**-50  # eps below this fraction of the prices' size is lost in their round-off


@dataclass
class AuctionResult:
    """``cols`` (``(n,)`` or ``(B, n)``, int64, on the cost's device) and how it was found.

    ``iterations``: bidding rounds run (all problems of a batch together);
    ``syncs``: host synchronisations (termination checks + the final certificate);
    ``gap``: certified duality gap per problem in the cost's units (upper bound on
    ``cost(cols) - optimum`` before any fallback); ``fallbacks``: problems re-solved
    by scipy.
    """

    cols: torch.Tensor
    iterations: int
    syncs: int
    gap: torch.Tensor
    fallbacks: int


def _check_cost(cost: torch.Tensor) -> torch.Tensor:
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"cost must be a torch.Tensor; got {type(cost).__name__}")
    if cost.dim() not in (2, 3) or cost.shape[-1] != cost.shape[-2]:
        raise ValueError(
            f"cost must be square, (n, n) or a stack (B, n, n); got shape {tuple(cost.shape)} "
            "(pad rectangular problems with pad_blocks, or use ot.emd)"
        )
    if not (cost.is_floating_point() or cost.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"cost must hold real numbers; got dtype {cost.dtype}")
    return cost


def solve(
    cost: torch.Tensor,
    *,
    rtol: float = 1e-12,
    theta: float = 8.0,
    eps0: float = 0.125,
    check_every: int | str | None = None,
    max_iter: int | None = None,
    seed: int = 0,
) -> AuctionResult:
    """Solve ``min_sigma sum_i cost[i, sigma(i)]`` exactly (see the module docstring).

    ``cost``: ``(n, n)`` or ``(B, n, n)``, any real dtype (float32 is solved in float64),
    finite. ``rtol``: target gap relative to ``min(range, |value|)``. ``theta``: epsilon
    reduction per phase; ``eps0``: first epsilon (range units). ``check_every``: bidding
    rounds between host reads of the device-side done flag, or ``"doubling"`` (16 rounds,
    then intervals doubling up to 128: rounds run after a problem is done change nothing,
    so this trades at most 128 idle rounds for far fewer reads); default 1 on the CPU,
    where a read is free, ``"doubling"`` elsewhere (a guess, not yet timed on a GPU).
    ``max_iter``:
    bidding-round budget (default ``200 n + 2000``); when it is spent the certificate
    fails and scipy takes over. ``seed``: of the tie-breaking priorities.
    """
    cost = _check_cost(cost)
    batched = cost.dim() == 3
    C = (cost if batched else cost[None]).detach().to(torch.float64)
    B, n, _ = C.shape
    device = C.device
    doubling, step = _check_schedule(check_every, device)
    if not rtol > 0 or not theta > 1 or not eps0 > 0:
        raise ValueError(f"need rtol > 0, theta > 1, eps0 > 0; got {rtol}, {theta}, {eps0}")
    if device.type == "cpu" and not bool(torch.isfinite(C).all()):  # free on the CPU
        raise ValueError("cost must be finite (no inf or nan); forbid a pair with a large cost")
    if n <= 1 or B == 0:
        cols = torch.zeros(B, n, dtype=torch.long, device=device)
        gap = torch.zeros(B, dtype=torch.float64, device=device)
        return AuctionResult(cols if batched else cols[0], 0, 0, gap if batched else gap[0], 0)
    # scale each problem to [0, 1]: changes no assignment; original value = scale * (P + shift)
    lo = C.amin(dim=(1, 2))
    scale = C.amax(dim=(1, 2)) - lo
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    c = (C - lo[:, None, None]) / scale[:, None, None]
    shift = n * lo / scale
    if max_iter is None:
        max_iter = 200 * n + 2000
    gen = torch.Generator(device=device).manual_seed(seed)
    prio = torch.rand(c.shape, generator=gen, dtype=torch.float64, device=device)

    price = torch.zeros(B, n, dtype=torch.float64, device=device)
    row_col = torch.full((B, n), -1, dtype=torch.long, device=device)  # column of each row
    col_row = torch.full((B, n), -1, dtype=torch.long, device=device)  # row of each column
    eps = torch.full((B,), eps0, dtype=torch.float64, device=device)
    ar_n = torch.arange(n, device=device)
    base = (torch.arange(B, device=device) * n)[:, None]
    iters = syncs = 0
    while iters < max_iter:
        for _ in range(min(step, max_iter - iters)):
            eps, done = _bid_round(
                c, prio, price, row_col, col_row, eps, shift, rtol, theta, ar_n, base
            )
            iters += 1
        syncs += 1
        if bool(done.all()):
            break
        if doubling:
            step = min(2 * step, 128)

    cols, gap, ok = _certify(c, C, price, row_col, shift, rtol)
    syncs += 1  # _certify's one read of the device
    gap = gap * scale
    bad = (~ok).nonzero()[:, 0].tolist()
    if bad:
        cols, gap = _fallback(C, cols, gap, bad, f"(n = {n}, {iters} of max_iter = {max_iter})")
    return AuctionResult(
        cols if batched else cols[0], iters, syncs, gap if batched else gap[0], len(bad)
    )


def _check_schedule(check_every, device) -> tuple[bool, int]:
    """``(doubling, first interval)`` of the host reads (see :func:`solve`)."""
    if check_every is None:
        check_every = 1 if device.type == "cpu" else "doubling"
    doubling = check_every == "doubling"
    step = 16 if doubling else check_every
    if not isinstance(step, int) or isinstance(step, bool) or step < 1:
        raise ValueError(f"check_every must be an int >= 1 or 'doubling'; got {check_every!r}")
    return doubling, step


def _certify(c, C, price, row_col, shift, rtol: float):
    """Columns, duality gap of (columns, prices) on the scaled cost ``c``, and whether each
    problem's gap is within its tolerance; raises if ``C`` holds inf or nan. One host read."""
    n = c.shape[1]
    complete = (row_col >= 0).all(dim=1)
    cols = row_col.clamp_min(0)
    primal = c.gather(2, cols[:, :, None])[:, :, 0].sum(dim=1)
    u = (c + price[:, None, :]).amin(dim=2)
    gap = primal - (u.sum(dim=1) - price.sum(dim=1))
    target = rtol * (primal + shift).abs().clamp(max=1.0)
    allowance = _ROUNDOFF * (primal + u.abs().sum(dim=1) + 2 * n * price.abs().amax(dim=1))
    ok = complete & (gap <= 2 * target + allowance)
    finite = torch.isfinite(C).flatten(1).all(dim=1)
    flags = torch.stack([ok, finite]).cpu()  # the final synchronisation
    if not bool(flags[1].all()):
        raise ValueError("cost must be finite (no inf or nan); forbid a pair with a large cost")
    return cols, gap, flags[0]


def _fallback(C, cols, gap, bad: list[int], where: str):
    """Problems ``bad`` whose certificate failed, solved by scipy on the CPU (counted)."""
    global FALLBACKS
    from scipy.optimize import linear_sum_assignment

    FALLBACKS += len(bad)
    warnings.warn(
        f"auction assignment: certificate failed for {len(bad)} of {C.shape[0]} problem(s) "
        f"{where}; solved with scipy on the CPU instead "
        "(kd2m.metrics.assignment.FALLBACKS counts these)",
        RuntimeWarning,
        stacklevel=3,
    )
    cols, gap = cols.clone(), gap.clone()
    host = C[bad].cpu().numpy()
    for k, b in enumerate(bad):
        _, col = linear_sum_assignment(host[k])
        cols[b] = torch.as_tensor(col, device=C.device)
        gap[b] = 0.0
    return cols, gap


def _bid_round(c, prio, price, row_col, col_row, eps, shift, rtol, theta, ar_n, base):
    """One Jacobi bidding round for every problem of the batch; updates in place.

    Returns the new ``eps`` and ``done`` (per problem: complete, and its eps small enough,
    in which case this round changed nothing for it).
    """
    B, n, _ = c.shape
    # best and second best columns of every row (min of c_ij + p_j); exact ties for the best
    # are broken by a fixed random priority (identical rows then spread over tied columns)
    vals = c + price[:, None, :]
    top = torch.topk(vals, 2, dim=2, largest=False, sorted=True)
    w1, w2 = top.values[..., 0], top.values[..., 1]
    j = torch.where(vals == w1[..., None], prio, -1.0).argmax(dim=2)
    # epsilon scaling, problem by problem: a complete problem whose eps is above its stopping
    # eps starts its next phase (eps / theta, prices kept); only the rows that violate the
    # new eps-CS (own column more than eps above their best) are released and bid again
    full = (row_col >= 0).all(dim=1)
    own_col = row_col.clamp_min(0)
    primal = c.gather(2, own_col[:, :, None])[:, :, 0].sum(dim=1)
    eps_stop = torch.maximum(
        rtol * (primal + shift).abs().clamp(max=1.0) / n,
        _EPS_FLOOR * (primal / n + price.abs().amax(dim=1)),
    )
    more = eps > eps_stop
    done = full & ~more
    advance = full & more
    eps = torch.where(advance, torch.maximum(eps / theta, eps_stop), eps)
    own = vals.gather(2, own_col[:, :, None])[:, :, 0]
    release = advance[:, None] & (own - w1 > eps[:, None])
    col_row.masked_fill_(torch.zeros_like(release).scatter_(1, own_col, release), -1)
    row_col.masked_fill_(release, -1)
    bidder = row_col < 0
    bid = price.gather(1, j) + (w2 - w1) + eps[:, None]
    bid = torch.where(bidder, bid, -math.inf)
    flat_j = (j + base).reshape(-1)
    best = torch.full((B * n,), -math.inf, dtype=bid.dtype, device=bid.device)
    best.scatter_reduce_(0, flat_j, bid.reshape(-1), reduce="amax")
    # winner: the lowest-index bidder with the highest bid (n = no bid)
    wins = bidder & (bid == best[flat_j].view(B, n))
    cand = torch.where(wins, ar_n[None, :], n)
    winner = torch.full((B * n,), n, dtype=torch.long, device=cand.device)
    winner.scatter_reduce_(0, flat_j, cand.reshape(-1), reduce="amin")
    winner = winner.view(B, n)
    got = winner < n  # columns that received a bid
    # release the former owners of those columns, then seat the winners
    prev = torch.where(got & (col_row >= 0), col_row, n)
    released = torch.zeros(B, n + 1, dtype=torch.bool, device=cand.device)
    released.scatter_(1, prev, True)
    row_col.masked_fill_(released[:, :n], -1)
    seat = torch.full((B, n + 1), -1, dtype=torch.long, device=cand.device)
    seat.scatter_(1, torch.where(got, winner, n), ar_n.expand(B, n))
    row_col.copy_(torch.where(seat[:, :n] >= 0, seat[:, :n], row_col))
    col_row.copy_(torch.where(got, winner, col_row))
    price.copy_(torch.where(got, best.view(B, n), price))
    return eps, done


def assign(cost: torch.Tensor, **options) -> torch.Tensor:
    """Optimal columns of a square assignment problem, on ``cost.device``.

    ``cost``: ``(n, n)`` -> ``cols`` ``(n,)`` with ``cols[i]`` the column of row ``i``;
    ``(B, n, n)`` -> ``(B, n)``, one independent problem per slice. Minimises
    ``sum_i cost[i, cols[i]]``; the value is optimal to a relative ``2 rtol = 2e-12``
    (exact for integer costs, and scipy's assignment on generic real costs; see the module
    docstring). ``options``: those of :func:`solve`.
    """
    return solve(cost, **options).cols


def pad_blocks(blocks: Sequence[torch.Tensor], size: int | None = None) -> torch.Tensor:
    r"""Stack square costs of different sizes into one ``(B, N, N)`` batch, exactly.

    Block ``C`` (``m x m``) becomes ``[[C, K], [K, K (1 - I)]]`` (``N x N``) with the
    constant ``K = max(max C, 0) + (max C - min C)`` (``+ 1`` when ``C`` is constant). The
    real rows of the padded optimum take the real columns, as an optimum of ``C``.

    Proof: let an assignment of the padded matrix send ``r`` real rows to padding columns;
    then exactly ``r`` padding rows take real columns (counting), and its cost is
    ``>= P + 2 r K`` with ``P`` the cost of the ``m - r`` real-real pairs (the padding block
    is ``>= 0``). Completing those pairs with any matching of the ``r`` leftover real rows
    and columns gives an assignment of ``C``, so ``OPT(C) <= P + r max C``, i.e. the padded
    cost is ``>= OPT(C) + r (2K - max C)``. ``2K - max C > 0`` by the choice of ``K``, while
    ``r = 0`` (an optimum of ``C`` plus the identity on the padding, whose diagonal is zero)
    costs ``OPT(C)``: every optimum has ``r = 0``, and its real block is optimal for ``C``.
    The margin ``r (2K - max C) >= 2 r (max C - min C)`` (``>= r`` for a constant block) is
    far above the solver's tolerance. ``K`` off the padding's diagonal (rather than zeros)
    leaves the padding a unique optimum: identical padding rows would start a long price war
    in the auction. ``size`` (default: the largest block) must be >= every block.
    """
    if len(blocks) == 0:
        raise ValueError("pad_blocks needs at least one block")
    sizes = [int(b.shape[0]) for b in blocks]
    N = max(sizes) if size is None else size
    if N < max(sizes):
        raise ValueError(f"size must be >= the largest block ({max(sizes)}); got {size}")
    ref = blocks[0]
    out = torch.zeros(len(blocks), N, N, dtype=torch.float64, device=ref.device)
    for k, b in enumerate(blocks):
        if b.dim() != 2 or b.shape[0] != b.shape[1]:
            raise ValueError(f"block {k} must be square (m, m); got shape {tuple(b.shape)}")
        m = b.shape[0]
        b = b.detach().to(torch.float64)
        if m == 0:
            continue
        hi, lo = b.max(), b.min()
        K = hi.clamp_min(0) + (hi - lo)
        K = torch.where(hi > lo, K, K + 1)
        out[k, :m, :m] = b
        out[k, :m, m:] = K
        out[k, m:, :m] = K
        out[k, m:, m:] = K * (1 - torch.eye(N - m, dtype=torch.float64, device=ref.device))
    return out


def class_mask_cost(cost: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""``cost + K [y_i != y_j]``: one problem whose optimum solves every class at once.

    Rows and columns are the same images (``y`` labels both), so class ``c`` has ``n_c``
    rows and ``n_c`` columns. With ``K = max(max C, 0) + (max C - min C)`` (``+ 1`` if
    ``C`` is constant), so that ``K > max C``, every optimum pairs rows and columns of
    the same class, and restricted to class ``c`` it is optimal for that class's block.
    Proof: an assignment with ``r >= 1`` cross-class pairs leaves, in each class, as
    many unmatched rows as columns;
    completing within classes with pairs costing ``<= max C`` gives a class-wise
    assignment, so its cost is ``>= OPT_classes + r (K - max C) > OPT_classes``, the cost
    of the best class-wise assignment; and a class-wise assignment is optimal iff each
    class block is. Computed on the device: no per-class indexing, no host
    synchronisation.
    """
    C = cost.detach().to(torch.float64)
    if C.dim() != 2 or C.shape[0] != C.shape[1] or y.shape != (C.shape[0],):
        raise ValueError(
            f"cost must be (n, n) and y (n,); got {tuple(C.shape)} and {tuple(y.shape)}"
        )
    hi, lo = C.max(), C.min()
    K = hi.clamp_min(0) + (hi - lo)
    K = torch.where(hi > lo, K, K + 1)
    y = y.to(C.device)
    return C + K * (y[:, None] != y[None, :])


def bench_assignment(
    sizes: Sequence[int] = (128, 512),
    threads: int = 2,
    device: str = "cpu",
    seed: int = 0,
    check_every: int | None = None,
) -> list[dict[str, Any]]:
    """Seconds per solve of :func:`assign` and of scipy's ``linear_sum_assignment``.

    Squared Euclidean costs (the metrics' cost) between ``n`` Gaussian points ``x`` in 64
    dimensions and ``z``: ``kind = "independent"`` (``z`` drawn afresh, the hard case,
    like an untrained student) and ``"close"`` (``z = x + 0.3 noise``, a student near its
    teacher). ``torch.utils.benchmark`` with ``threads`` threads, median of
    ``blocked_autorange``; on CUDA the scipy column includes the device-to-host copy (the
    synchronisation the solver avoids). Rows: ``n``, ``kind``, ``device``, ``auction_s``,
    ``scipy_s``, ``rounds``, ``syncs``. ``check_every``: passed to :func:`solve`. Prints a
    table and returns the rows. GPU check: ``python -m kd2m.metrics.assignment cuda``.
    """
    from scipy.optimize import linear_sum_assignment
    from torch.utils import benchmark

    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(seed)
    for n in sizes:
        for kind in ("independent", "close"):
            x = torch.randn(n, 64, generator=g, dtype=torch.float64)
            z = torch.randn(n, 64, generator=g, dtype=torch.float64)
            z = z if kind == "independent" else x + 0.3 * z
            cost = (torch.cdist(x, z) ** 2).to(device)
            res = solve(cost, check_every=check_every)

            def scipy_solve(cost=cost):
                cols = linear_sum_assignment(cost.detach().cpu().numpy())[1]
                return torch.as_tensor(cols, device=cost.device)

            t_auction = benchmark.Timer(
                "assign(cost, check_every=k)",
                globals={"assign": assign, "cost": cost, "k": check_every},
                num_threads=threads,
            ).blocked_autorange(min_run_time=1.0)
            t_scipy = benchmark.Timer(
                "f()", globals={"f": scipy_solve}, num_threads=threads
            ).blocked_autorange(min_run_time=1.0)
            rows.append(
                {
                    "n": n,
                    "kind": kind,
                    "device": str(cost.device),
                    "auction_s": t_auction.median,
                    "scipy_s": t_scipy.median,
                    "rounds": res.iterations,
                    "syncs": res.syncs,
                }
            )
    print(f"{'n':>5} {'kind':>12} {'device':>7} {'auction ms':>11} {'scipy ms':>9} rounds syncs")
    for r in rows:
        print(
            f"{r['n']:>5} {r['kind']:>12} {r['device']:>7} {1e3 * r['auction_s']:>11.2f} "
            f"{1e3 * r['scipy_s']:>9.3f} {r['rounds']:>6} {r['syncs']:>5}"
        )
    return rows


if __name__ == "__main__":  # python -m kd2m.metrics.assignment [cpu|cuda]
    import sys

    _device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    for _k in (1, 4, 16) if _device != "cpu" else (None,):
        bench_assignment(device=_device, check_every=_k)
