"""Chunk-parallel associative-memory scan: closed-form inner gradients, scalar-gate scans, WY-style solve.

The maths (spec §5.8–5.9, [T §3.2, Eqs 16–18]). Inside a chunk every inner gradient is taken at the
boundary state, so each gradient is a known rank-1 matrix g_t = e_t p_tᵀ (closed form, no autograd)
and the recurrence is linear in the weights. For one weight X (d_out × d_in) and tokens t = 1..n of
a chunk:

    S_t = β_t S_{t−1} + c_t e_t p_tᵀ                       (momentum; β ≡ 0 without momentum)
    X_t = α_t X_{t−1} − γ_t u_t k_tᵀ − d_t S_t,  u_t = X_{t−1} k_t    (γ_t = η_t for DGD, else 0)

where (c, d) = (η, 1) for Titans momentum or none and (1, η) for scaled momentum. Unrolling,

    X_t = A_t X_0 − σ_t S_0 − Σ_{j≤t} Gk[t,j] u_j k_jᵀ − Σ_{j≤t} Gm[t,j] e_j p_jᵀ

with A_t = Π_{i≤t} α_i, D^α[t,j] = Π_{i=j+1..t} α_i, Gk = D^α diag(γ), Gm = D^α diag(d) D^β diag(c),
σ = D^α diag(d) B, B_s = Π_{i≤s} β_i. So any read X_t z_t of a chunk is matmul-shaped work with
C×C score matrices (as in linear attention), and the unknown DGD values u_t = X_{t−1} k_t solve one
unit-lower-triangular system (I + (shift(Gk) ∘ K Kᵀ)) U = R — the compact form of products of
(α_t I − η_t k_t k_tᵀ) factors (spec §5.9). Everything is an ordinary tensor expression, so the
outer loss differentiates through it end to end (D3).

Tensor layout: weights (..., d_out, d_in), per-token vectors (..., n, dim), gates (..., n), where
``...`` is (batch, heads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from nestlearn.memory.spec import MemorySpec

Tensor = torch.Tensor
State = dict[str, Tensor]


def activation(name: str, p: Tensor) -> Tensor:
    """σ(p) of the MLP memory."""
    return F.silu(p) if name == "silu" else F.gelu(p)


def activation_grad(name: str, p: Tensor) -> Tensor:
    """σ'(p) in closed form: SiLU s(1 + p(1 − s)); exact GELU Φ(p) + p φ(p) (spec §5.8)."""
    if name == "silu":
        s = torch.sigmoid(p)
        return s * (1 + p * (1 - s))
    return 0.5 * (1 + torch.erf(p / math.sqrt(2))) + p * torch.exp(-0.5 * p * p) / math.sqrt(2 * math.pi)


def memory_apply(spec: MemorySpec, weights: State, z: Tensor) -> Tensor:
    """M(z) with fixed weights (a read with no write, e.g. Titans' retrieval M*(q) [T Eq 15, 21]).

    Args:
        weights: ``{"W": (..., d_out, d_in)}`` or ``{"W1": (..., d_out, h), "W2": (..., h, d_in)}``.
        z: (..., n, d_in).

    Returns:
        (..., n, d_out).
    """
    if spec.kind == "linear":
        return z @ weights["W"].mT
    out = activation(spec.activation, z @ weights["W2"].mT) @ weights["W1"].mT
    return z + out if spec.residual else out


def boundary_factors(spec: MemorySpec, weights: State, k: Tensor, v: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Closed-form inner gradients at the boundary state, as rank-1 factors g_t = e_t p_tᵀ (spec §5.8).

    Linear: ∇_W ℓ = e kᵀ. MLP with p = W₂k, a = σ(p): ∇_{W₁} ℓ = e aᵀ, ∇_{W₂} ℓ = δ kᵀ with
    δ = (W₁ᵀ e) ⊙ σ'(p). e = M_b(k) − v for ``l2`` and −v for ``dot``.

    Args:
        weights: boundary weights (see :func:`memory_apply`).
        k: (..., n, d_in); v: (..., n, d_out).

    Returns:
        weight name -> (E: (..., n, d_out of that weight), P: (..., n, d_in of that weight)).
    """
    if spec.kind == "linear":
        e = k @ weights["W"].mT - v if spec.objective == "l2" else -v
        return {"W": (e, k)}
    pre = k @ weights["W2"].mT
    act = activation(spec.activation, pre)
    if spec.objective == "l2":
        out = act @ weights["W1"].mT
        e = (k + out if spec.residual else out) - v
    else:
        e = -v
    delta = (e @ weights["W1"]) * activation_grad(spec.activation, pre)
    return {"W1": (e, act), "W2": (delta, k)}


def segment_products(a: Tensor) -> Tensor:
    """D[t, j] = Π_{i=j+1..t} a_i for j ≤ t (1 on the diagonal), 0 above it.

    Built by a cumulative product down the columns of a masked matrix, so gates equal to 0 are
    exact (a log-space difference of cumulative sums would give 0·∞).

    Args:
        a: (..., n) -> (..., n, n).
    """
    n = a.shape[-1]
    below = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(-1)
    m = torch.where(below, a.unsqueeze(-1), torch.ones((), dtype=a.dtype, device=a.device))
    return m.cumprod(dim=-2).tril()


@dataclass(frozen=True)
class _Coefficients:
    """Scalar weights of the unrolled chunk recurrence (module docstring), one row per read.

    Attributes (``...`` = batch, heads):
        a0: (..., n) A_t;  sig: (..., n) σ_t or None;  gm: (..., n, n);  gk: (..., n, n) or None;
        mom_end: (..., n) weights of e_j p_jᵀ in S_n, or None;  b_end: (...,) B_n, or None.
    """

    a0: Tensor
    sig: Tensor | None
    gm: Tensor
    gk: Tensor | None
    mom_end: Tensor | None
    b_end: Tensor | None

    def before(self) -> "_Coefficients":
        """The weights for reads of X_{t−1}: every row shifted down by one token (row 0 reads X_0)."""
        return replace(
            self,
            a0=F.pad(self.a0[..., :-1], (1, 0), value=1.0),
            sig=None if self.sig is None else F.pad(self.sig[..., :-1], (1, 0)),
            gm=F.pad(self.gm[..., :-1, :], (0, 0, 1, 0)),
            gk=None if self.gk is None else F.pad(self.gk[..., :-1, :], (0, 0, 1, 0)),
        )


def _coefficients(spec: MemorySpec, eta: Tensor, alpha: Tensor | None, beta: Tensor | None) -> _Coefficients:
    """The weights for reads after each token of a chunk, from its gates (each (..., n))."""
    n = eta.shape[-1]
    ones = torch.ones_like(eta)
    alpha = ones if alpha is None else alpha
    d_alpha = segment_products(alpha)
    a0 = alpha.cumprod(dim=-1)
    gk = d_alpha * eta.unsqueeze(-2) if spec.rule == "dgd" else None
    if spec.momentum == "none":
        return _Coefficients(a0, None, d_alpha * eta.unsqueeze(-2), gk, None, None)
    c, d = (eta, ones) if spec.momentum == "titans" else (ones, eta)
    d_beta = segment_products(beta)
    b = beta.cumprod(dim=-1)
    left = d_alpha * d.unsqueeze(-2)
    return _Coefficients(a0=a0, sig=(left @ b.unsqueeze(-1)).squeeze(-1), gm=left @ (d_beta * c.unsqueeze(-2)),
                         gk=gk, mom_end=d_beta[..., n - 1, :] * c, b_end=b[..., n - 1])


def _read(co: _Coefficients, x0: Tensor, s0: Tensor | None, e: Tensor, p: Tensor,
          keys: Tensor | None, u: Tensor | None, z: Tensor) -> Tensor:
    """Row t of the result is X_t z_t (X at the coefficient rows of ``co``); z: (..., n, d_in).

    The boundary terms A_t X_0 z_t − σ_t S_0 z_t and the chunk terms are each one matmul, over
    concatenated operands (fewer, larger products are faster on CPU).
    """
    if s0 is None:
        out = (co.a0.unsqueeze(-1) * z) @ x0.mT
    else:
        out = torch.cat((co.a0.unsqueeze(-1) * z, -co.sig.unsqueeze(-1) * z), dim=-1) @ torch.cat((x0, s0), dim=-1).mT
    if u is None:
        return out - (co.gm * (z @ p.mT)) @ e
    scores = torch.cat((co.gm * (z @ p.mT), co.gk * (z @ keys.mT)), dim=-1)
    return out - scores @ torch.cat((e, u), dim=-2)


def _dgd_values(co: _Coefficients, x0: Tensor, s0: Tensor | None, e: Tensor, p: Tensor, keys: Tensor) -> Tensor:
    """u_t = X_{t−1} k_t for a DGD weight: solve (I + shift(Gk) ∘ K Kᵀ) U = R (unit lower triangular)."""
    prev = co.before()
    rhs = _read(prev, x0, s0, e, p, None, None, keys)
    lower = prev.gk * (keys @ keys.mT)
    return torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)


def _end_state(co: _Coefficients, x0: Tensor, s0: Tensor | None, e: Tensor, p: Tensor,
               keys: Tensor | None, u: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(X_n, S_n) after the chunk's last token."""
    x = co.a0[..., -1, None, None] * x0 - e.mT @ (co.gm[..., -1, :].unsqueeze(-1) * p)
    if u is not None:
        x = x - u.mT @ (co.gk[..., -1, :].unsqueeze(-1) * keys)
    s = None
    if s0 is not None:
        x = x - co.sig[..., -1, None, None] * s0
        s = co.b_end[..., None, None] * s0 + e.mT @ (co.mom_end.unsqueeze(-1) * p)
    return x, s


def _chunk(spec: MemorySpec, cur: State, mom: State, grad_at: State, q: Tensor, k: Tensor, v: Tensor,
           eta: Tensor, alpha: Tensor | None, beta: Tensor | None,
           stop_shift: State | None = None) -> tuple[Tensor, State, State]:
    """One chunk: outputs (..., n, d_out), new weights, new momenta.

    ``stop_shift`` (stopgrad writes): θ₀ − sg(θ₀) per weight, added to every read weight, so reads see
    θ₀ + sg(Δ_t) while everything else in the chunk is detached by the caller.
    """
    co = _coefficients(spec, eta, alpha, beta)
    read_co = co if spec.read == "after" else co.before()
    factors = boundary_factors(spec, grad_at, k, v)
    dgd_weight = "W" if spec.kind == "linear" else "W2"
    new_w, new_m, u = {}, {}, {}
    for name, (e, p) in factors.items():
        keys = k if (spec.rule == "dgd" and name == dgd_weight) else None
        u[name] = None if keys is None else _dgd_values(co, cur[name], mom.get(name), e, p, keys)
        new_w[name], s = _end_state(co, cur[name], mom.get(name), e, p, keys, u[name])
        if s is not None:
            new_m[name] = s

    def read(name: str, z: Tensor) -> Tensor:
        e, p = factors[name]
        keys = None if u[name] is None else k
        out = _read(read_co, cur[name], mom.get(name), e, p, keys, u[name], z)
        return out if stop_shift is None else out + z @ stop_shift[name].mT

    if spec.kind == "linear":
        return read("W", q), new_w, new_m
    hidden = activation(spec.activation, read("W2", q))
    out = read("W1", hidden)
    return (q + out if spec.residual else out), new_w, new_m


def _check_inputs(spec: MemorySpec, state: State, eta: Tensor, alpha: Tensor | None, beta: Tensor | None) -> None:
    missing = [n for n in spec.state_names if n not in state]
    if missing:
        raise KeyError(f"memory state lacks {missing}; expected keys {list(spec.state_names)}")
    if (spec.momentum == "none") != (beta is None):
        raise ValueError(f"beta must be given exactly when momentum is on (momentum={spec.momentum!r})")
    if alpha is not None and alpha.shape != eta.shape:
        raise ValueError(f"alpha shape {tuple(alpha.shape)} != eta shape {tuple(eta.shape)}")


def chunk_bounds(pos: int, length: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the chunks of a call covering absolute positions pos..pos+length−1.

    The first range ends at the next multiple of C, so a stream cut anywhere yields the same chunks.
    """
    bounds, start = [], 0
    while start < length:
        end = min(length, start + chunk_size - (pos + start) % chunk_size)
        bounds.append((start, end))
        start = end
    return bounds


def memory_scan(spec: MemorySpec, state: State, q: Tensor, k: Tensor, v: Tensor, eta: Tensor,
                alpha: Tensor | None = None, beta: Tensor | None = None, pos: int = 0) -> tuple[Tensor, State]:
    """Run the memory over a sequence, chunk-parallel (the fast path; spec §5.9, [T Eqs 16–18]).

    Args:
        spec: the memory's definition.
        state: ``spec.state_names`` -> tensors: weights (..., d_out, d_in) (see :func:`memory_apply`),
            their boundary copies ``*_b`` (the state at the last chunk boundary, used for the gradients
            of tokens before the next boundary) and momenta ``*_mom`` of the weights' shapes.
        q: (..., T, d_in) queries; k: (..., T, d_in) keys; v: (..., T, d_out) values.
        eta: (..., T) inner learning rates η_t.
        alpha: (..., T) retention gates α_t (None: no decay, α ≡ 1).
        beta: (..., T) momentum gates β_t; required exactly when ``spec.momentum != "none"``.
        pos: absolute position of the first token; chunk boundaries sit at multiples of C.

    Returns:
        outputs (..., T, d_out) (read after or before each token's write, ``spec.read``) and the new state.
    """
    _check_inputs(spec, state, eta, alpha, beta)
    names = spec.weight_names
    shift = None
    if spec.write_grad == "stopgrad":
        shift = {n: state[n] - state[n].detach() for n in names}
        state = {n: t.detach() for n, t in state.items()}
        k, v, eta = k.detach(), v.detach(), eta.detach()
        alpha = None if alpha is None else alpha.detach()
        beta = None if beta is None else beta.detach()
    cur = {n: state[n] for n in names}
    mom = {n: state[f"{n}_mom"] for n in names} if spec.momentum != "none" else {}
    grad_at = {n: state[f"{n}_b"] for n in names} if pos % spec.chunk_size else dict(cur)
    bounds = chunk_bounds(pos, q.shape[-2], spec.chunk_size)
    sizes = [end - start for start, end in bounds]
    # split (not slicing in the loop): its backward concatenates, where slice backward would
    # scatter into a zero tensor of the full length for every chunk (quadratic in T).
    pieces = [x.split(sizes, dim=-2) for x in (q, k, v)]
    gates = [None if g is None else g.split(sizes, dim=-1) for g in (eta, alpha, beta)]
    outs = []
    for i, (start, _) in enumerate(bounds):
        if (pos + start) % spec.chunk_size == 0:
            grad_at = dict(cur)
        out, cur, mom = _chunk(spec, cur, mom, grad_at, *(x[i] for x in pieces),
                               *(None if g is None else g[i] for g in gates), stop_shift=shift)
        outs.append(out)
    if (pos + q.shape[-2]) % spec.chunk_size == 0:
        # A copy, not an alias: states are saved with safetensors, which rejects shared storage.
        grad_at = {n: w.clone() for n, w in cur.items()}
    if shift is not None:
        cur = {n: w + shift[n] for n, w in cur.items()}
        grad_at = {n: w + shift[n] for n, w in grad_at.items()}
    new_state = {**cur, **{f"{n}_b": grad_at[n] for n in names}, **{f"{n}_mom": mom[n] for n in mom}}
    return torch.cat(outs, dim=-2), new_state


def init_memory_state(spec: MemorySpec, initial: State, batch_size: int) -> State:
    """A fresh state for ``batch_size`` sequences from meta-learned initial weights (NL-L §8.1, D2).

    Args:
        initial: weight name -> slow parameter without batch axis, e.g. (heads, d_out, d_in).
        batch_size: B.

    Returns:
        ``spec.state_names`` -> (B, *shape) tensors: the weights broadcast to B (still differentiable
        with respect to ``initial``), the boundary copies equal to them, zero momenta. Weights and
        boundary copies are the same broadcast view; materialise them separately before saving.
    """
    state = {}
    for name in spec.weight_names:
        w = initial[name].unsqueeze(0).expand(batch_size, *initial[name].shape)
        state[name] = w
        state[f"{name}_b"] = w
        if spec.momentum != "none":
            state[f"{name}_mom"] = torch.zeros_like(w)
    return state
