"""L0-norm constrained gradient descent (LGD) with relaxant probabilistic projection (RPP).

Liang, Deng, Zeng, Hu, Ji, Ma, Li, Xie, "Crossbar-aware neural network pruning", IEEE Access 6
(2018), arXiv 1807.10816, Sec. III-B, Eq. (7)-(8), Algorithms 1 and 2. Pure tensor functions,
batched over any number of independent problems (leading dimensions); no Python loop over
problems. The crossbar-specific assembly of X and Y lives in
:mod:`xbarprune.compress.methods.liang`.

The problem (Eq. 7), for one output FM group::

    min_beta ||Y - X beta||_2^2   s.t.  ||beta||_0 = r

LGD (Alg. 2) alternates a gradient step in the full space (Eq. 8)::

    beta = beta_L0 - eta (X^T X beta_L0 - X^T Y)

with a projection onto the L0 sphere (RPP, Alg. 1) and a least-squares rescale of the projected
vector (``Z = X beta_L0``, ``alpha = (Z^T Z)^-1 Z^T Y``, ``beta_L0 <- alpha beta_L0``). Only
``A = X^T X``, ``b = X^T Y`` and ``Y^T Y`` enter, so :func:`lgd_gram` works on those and
:func:`lgd` forms them from X and Y.

RPP (Alg. 1): the r + r0 largest |beta| are candidates; r of them are drawn without replacement
with probability proportional to |beta|, renormalised over the candidates still in the pool
after every draw (``sampling="sequential"``, the wording of Sec. III-B: "iteratively selects
elements ... The sampling probability is proportional to the absolute value ... At each
iteration, the selected elements will be removed from the candidate set"). It is implemented
with the Gumbel-top-k identity: the r largest of ``log|beta_i| + G_i`` (G_i i.i.d. standard
Gumbel) are distributed exactly as r sequential weighted draws without replacement.
``sampling="bernoulli"`` is the literal pseudo-code of Alg. 1 instead: each round, every
remaining candidate is taken independently with probability ``|beta_i| / sum |beta|`` (one
uniform number per candidate), in index order until r are taken; this favours low indices
slightly and is offered for comparison. With ``r0 = 0`` both are the deterministic top-r
projection (no random draw at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from xbarprune.errors import CompressionError

Sampling = Literal["sequential", "bernoulli"]
Select = Literal["last", "best"]

__all__ = ["LGDResult", "lgd", "lgd_gram", "rpp", "top_r"]


def _check_r(r: int, n: int, what: str = "") -> int:
    r = int(r)
    where = f"{what}: " if what else ""
    if r < 1 or r > n:
        raise CompressionError(
            f"{where}L0 budget r = {r} is impossible for {n} group(s); allowed: 1 <= r <= {n}"
        )
    return r


def _ranked(babs: Tensor) -> Tensor:
    """Indices sorting |beta| descending, ties by lower index first (deterministic)."""
    return torch.sort(babs, dim=-1, descending=True, stable=True).indices


def top_r(beta: Tensor, r: int) -> Tensor:
    """Deterministic L0 projection support: the r largest |beta| (bool, same shape as beta)."""
    n = beta.shape[-1]
    r = _check_r(r, n)
    order = _ranked(beta.abs())[..., :r]
    return torch.zeros_like(beta, dtype=torch.bool).scatter_(-1, order, True)


def rpp(
    beta: Tensor,
    r: int,
    r0: int = 0,
    *,
    generator: torch.Generator | None = None,
    sampling: Sampling = "sequential",
) -> Tensor:
    """Relaxant probabilistic projection (Alg. 1): support (bool, shape of ``beta``) with
    exactly ``r`` True entries per vector along the last dimension.

    Args:
        beta: (..., n) pruning coefficients.
        r: L0 norm of the result (1 <= r <= n), else :class:`CompressionError`.
        r0: relaxation factor: the candidates are the ``min(r + r0, n)`` largest |beta|.
            0 gives the deterministic top-r projection.
        generator: source of the random draws (seeded by the caller).
        sampling: ``"sequential"`` (default; weighted draws without replacement) or
            ``"bernoulli"`` (the literal rounds of Alg. 1); see the module docstring.

    Candidates with beta = 0 are drawn only when fewer than r non-zero candidates remain.
    """
    n = beta.shape[-1]
    r = _check_r(r, n)
    if int(r0) < 0:
        raise CompressionError(f"RPP relaxation factor r0 = {r0}; allowed: >= 0")
    k = min(r + int(r0), n)
    babs = beta.detach().abs()
    order = _ranked(babs)
    if k == r:
        return torch.zeros_like(babs, dtype=torch.bool).scatter_(-1, order[..., :r], True)
    cand = torch.zeros_like(babs, dtype=torch.bool).scatter_(-1, order[..., :k], True)
    if sampling == "sequential":
        return _sample_sequential(babs, cand, r, generator)
    if sampling == "bernoulli":
        return _sample_bernoulli(babs, cand, r, generator)
    raise CompressionError(f"RPP sampling = {sampling!r}; allowed: 'sequential', 'bernoulli'")


def _uniform(shape, like: Tensor, generator: torch.Generator | None) -> Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return u.to(like.device)


def _sample_sequential(
    babs: Tensor, cand: Tensor, r: int, generator: torch.Generator | None
) -> Tensor:
    """Gumbel-top-k: r weighted draws without replacement among the candidates."""
    u = _uniform(babs.shape, babs, generator).clamp(1e-300, 1.0 - 1e-16)
    gumbel = -torch.log(-torch.log(u))
    w = babs.to(torch.float64)
    key = torch.where(w > 0, torch.log(w.clamp_min(1e-300)) + gumbel, torch.full_like(w, -1e300))
    key = torch.where(cand, key, torch.full_like(w, -torch.inf))
    idx = torch.topk(key, r, dim=-1).indices
    return torch.zeros_like(cand).scatter_(-1, idx, True)


def _sample_bernoulli(
    babs: Tensor, cand: Tensor, r: int, generator: torch.Generator | None
) -> Tensor:
    """Alg. 1 as printed: rounds of independent inclusion with p_i = |b_i| / sum |b|."""
    w = babs.to(torch.float64)
    remaining = cand.clone()
    chosen = torch.zeros_like(cand)
    count = torch.zeros(cand.shape[:-1], dtype=torch.long, device=cand.device)
    n = cand.shape[-1]
    for _ in range(64 * n + 64):
        need = count < r
        if not bool(need.any()):
            break
        wr = w * remaining
        tot = wr.sum(-1, keepdim=True)
        # all remaining candidates at zero: uniform over them
        uni = remaining.to(torch.float64) / remaining.sum(-1, keepdim=True).clamp_min(1)
        p = torch.where(tot > 0, wr / tot.clamp_min(1e-300), uni)
        hit = remaining & (p > _uniform(w.shape, w, generator)) & need.unsqueeze(-1)
        take = hit & (count.unsqueeze(-1) + torch.cumsum(hit.long(), -1) <= r)
        chosen |= take
        remaining &= ~take
        count += take.sum(-1)
    if bool((count < r).any()):  # practically unreachable: fill by rank among candidates
        key = torch.where(remaining, w, torch.full_like(w, -1.0))
        order = _ranked(key)
        rank = torch.argsort(order, dim=-1)
        fill = remaining & (rank < (r - count).unsqueeze(-1))
        chosen |= fill
    return chosen


@dataclass
class LGDResult:
    """Output of :func:`lgd_gram` / :func:`lgd`, batch shape (...) of the inputs.

    Attributes:
        support: (..., n) bool, the binary pruning mask beta_L0 (exactly r True).
        beta: (..., n) the scaled projected coefficients alpha * beta_L0 of that iterate.
        loss: (...) ||Y - X beta||^2 of that iterate.
        history: (iterations, ...) loss after every iteration.
    """

    support: Tensor
    beta: Tensor
    loss: Tensor
    history: Tensor


def _quad(A: Tensor, x: Tensor) -> Tensor:
    return torch.einsum("...i,...ij,...j->...", x, A, x)


def lgd_gram(
    A: Tensor,
    b: Tensor,
    yy: Tensor,
    r: int,
    *,
    r0: int = 0,
    iterations: int = 50,
    lr: float | Tensor | None = None,
    generator: torch.Generator | None = None,
    sampling: Sampling = "sequential",
    select: Select = "best",
) -> LGDResult:
    """LGD (Alg. 2) on the normal equations: A = X^T X (..., n, n), b = X^T Y (..., n),
    yy = Y^T Y (...).

    Args:
        r, r0, sampling: the L0 budget and the RPP settings (:func:`rpp`).
        iterations: LGD iterations (the paper uses 50).
        lr: step size eta of Eq. (8); None takes ``1 / lambda_max(A)`` per problem (the
            largest step for which the gradient step is non-expansive; the paper gives none).
        generator: seeds the random start ``beta = RPP(randn)`` and every RPP draw.
        select: ``"best"`` (default) returns the iterate with the lowest loss seen; ``"last"``
            the final one. Alg. 2 loops "while not converge" and returns the last iterate, but
            with r0 > 0 every RPP draw may swap a support element, so a fixed-length run can
            end on a perturbed iterate; the best iterate is the converged one.
    """
    if iterations < 1:
        raise CompressionError(f"LGD iterations = {iterations}; allowed: >= 1")
    if select not in ("last", "best"):
        raise CompressionError(f"LGD select = {select!r}; allowed: 'last', 'best'")
    A = A.to(torch.float64)
    b = b.to(torch.float64)
    yy = yy.to(torch.float64)
    n = A.shape[-1]
    r = _check_r(r, n)
    if lr is None:
        lam = torch.linalg.eigvalsh(A)[..., -1]
        eta = torch.where(lam > 0, 1.0 / lam.clamp_min(1e-300), torch.ones_like(lam))
    else:
        eta = torch.as_tensor(lr, dtype=torch.float64, device=A.device).expand(A.shape[:-2])
    eta = eta.unsqueeze(-1)

    def project(beta: Tensor) -> tuple[Tensor, Tensor]:
        sup = rpp(beta, r, r0, generator=generator, sampling=sampling)
        return sup, beta * sup

    start = torch.randn(b.shape, generator=generator, dtype=torch.float64).to(A.device)
    support, beta_l0 = project(start)
    best_loss = torch.full(yy.shape, torch.inf, dtype=torch.float64, device=A.device)
    best_sup, best_beta = support, beta_l0
    hist = []
    for _ in range(iterations):
        grad = torch.einsum("...ij,...j->...i", A, beta_l0) - b
        beta = beta_l0 - eta * grad  # Eq. (8)
        support, beta_l0 = project(beta)  # Alg. 1
        zz = _quad(A, beta_l0)  # Z^T Z with Z = X beta_L0
        zy = (beta_l0 * b).sum(-1)  # Z^T Y
        alpha = torch.where(zz > 1e-300, zy / zz.clamp_min(1e-300), torch.ones_like(zz))
        beta_l0 = alpha.unsqueeze(-1) * beta_l0
        loss = (yy - 2 * (beta_l0 * b).sum(-1) + _quad(A, beta_l0)).clamp_min(0)
        hist.append(loss)
        better = loss < best_loss
        best_loss = torch.where(better, loss, best_loss)
        best_sup = torch.where(better.unsqueeze(-1), support, best_sup)
        best_beta = torch.where(better.unsqueeze(-1), beta_l0, best_beta)
    history = torch.stack(hist)
    if select == "best":
        return LGDResult(best_sup, best_beta, best_loss, history)
    return LGDResult(support, beta_l0, history[-1], history)


def lgd(X: Tensor, Y: Tensor, r: int, **kw) -> LGDResult:
    """LGD on data: X (..., M, n), Y (..., M); keyword arguments as :func:`lgd_gram`."""
    X = X.to(torch.float64)
    Y = Y.to(torch.float64)
    A = X.transpose(-1, -2) @ X
    b = (X.transpose(-1, -2) @ Y.unsqueeze(-1)).squeeze(-1)
    yy = (Y * Y).sum(-1)
    return lgd_gram(A, b, yy, r, **kw)
