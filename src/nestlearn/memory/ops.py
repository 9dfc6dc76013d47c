"""Chunk-parallel associative-memory scan: closed-form inner gradients, scalar-gate scans, WY-style solve.

The maths (spec §5.8–5.9, [T §3.2, Eqs 16–18]). Inside a chunk every inner gradient is taken at the
boundary state, so each gradient is a known rank-1 matrix g_t = e_t p_tᵀ (closed form, no autograd)
and the recurrence is linear in the weights. For one weight X (d_out × d_in) and tokens t = 1..n of
a chunk:

    S_t = β_t S_{t−1} + c_t e_t p_tᵀ                       (momentum; β ≡ 0 without momentum)
    X_t = α_t X_{t−1} − γ_t u_t k_tᵀ − d_t S_t,  u_t = X_{t−1} k_t    (γ_t = η_t for DGD, else 0)

(with ``gate_form="yang"`` γ_t = α_t η_t: α_t X_{t−1}(I − η_t k_t k_tᵀ), the same recurrence with another γ)

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

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from nestlearn.memory import monitor
from nestlearn.memory.chunks import boundary_weights, chunk_bounds, split_chunks
from nestlearn.memory.gradients import boundary_terms, memory_apply, output_gain
from nestlearn.memory.gradients import hidden as hidden_layer
from nestlearn.memory.spec import MemorySpec

Tensor = torch.Tensor
State = dict[str, Tensor]


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

    def before(self) -> _Coefficients:
        """The weights for reads of X_{t−1}: every row shifted down by one token (row 0 reads X_0)."""
        return replace(
            self,
            a0=F.pad(self.a0[..., :-1], (1, 0), value=1.0),
            sig=None if self.sig is None else F.pad(self.sig[..., :-1], (1, 0)),
            gm=F.pad(self.gm[..., :-1, :], (0, 0, 1, 0)),
            gk=None if self.gk is None else F.pad(self.gk[..., :-1, :], (0, 0, 1, 0)),
        )


@dataclass(frozen=True)
class _GateProducts:
    """The gates' segment products, shared by every weight of a chunk: D^α, A, and with momentum D^β, B."""

    d_alpha: Tensor
    a0: Tensor
    d_beta: Tensor | None
    b: Tensor | None


def _gate_products(spec: MemorySpec, eta: Tensor, alpha: Tensor | None, beta: Tensor | None,
                   last_only: bool = False) -> _GateProducts:
    """``last_only``: D^α and A for the chunk's last token alone (its end state), when no read or DGD
    value inside the chunk needs the other rows: (..., 1, n) and (..., 1) instead of C×C work."""
    alpha = torch.ones_like(eta) if alpha is None else alpha
    if last_only:
        # suffix[j] = Π_{i≥j} α_i (0-based): row n of D^α is suffix[j + 1], and suffix[0] is A_n.
        suffix = alpha.flip(-1).cumprod(dim=-1).flip(-1)
        d_alpha, a0 = F.pad(suffix[..., 1:], (0, 1), value=1.0).unsqueeze(-2), suffix[..., :1]
    else:
        d_alpha, a0 = segment_products(alpha), alpha.cumprod(dim=-1)
    if spec.momentum == "none":
        return _GateProducts(d_alpha, a0, None, None)
    return _GateProducts(d_alpha, a0, segment_products(beta), beta.cumprod(dim=-1))


def _coefficients(spec: MemorySpec, gp: _GateProducts, eta: Tensor, beta: Tensor | None, gscale: Tensor | None,
                  gamma: Tensor | None) -> _Coefficients:
    """The weights for reads after each token of a chunk, for one weight.

    eta: (..., n) that weight's step; gamma: (..., n) its DGD coefficient γ (None: no DGD term);
    gscale: (..., n) the write bound's factor on its gradients, or None. With momentum the gradient
    enters S with c_t and S enters the step with d_t: (η, 1) titans, (1, η) scaled, (1 − β, η) ema.
    """
    n = eta.shape[-1]
    gk = None if gamma is None else gp.d_alpha * gamma.unsqueeze(-2)
    if spec.momentum == "none":
        step = eta if gscale is None else eta * gscale
        return _Coefficients(gp.a0, None, gp.d_alpha * step.unsqueeze(-2), gk, None, None)
    if spec.momentum == "titans":
        c, d = eta, torch.ones_like(eta)
    elif spec.momentum == "scaled":
        c, d = torch.ones_like(eta), eta
    else:
        c, d = 1 - beta, eta
    if gscale is not None:
        c = c * gscale
    left = gp.d_alpha * d.unsqueeze(-2)
    return _Coefficients(a0=gp.a0, sig=(left @ gp.b.unsqueeze(-1)).squeeze(-1), gm=left @ (gp.d_beta * c.unsqueeze(-2)),
                         gk=gk, mom_end=gp.d_beta[..., n - 1, :] * c, b_end=gp.b[..., n - 1])


def weight_step(spec: MemorySpec, eta: Tensor, e: Tensor, p: Tensor,
                gain: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """One weight's step and gradient scale from its factors g_t = e_t p_tᵀ (spec module docstring).

    Args:
        eta: (..., n) the effective step (after the ``eigen`` range); e: (..., n, d_out); p: (..., n, d_in).
        gain: (..., n) the squared gain from this weight's output to the memory's output, when it is
            not 1 (a first layer followed by a second): the normalisation then divides by the
            curvature ‖p‖²·gain instead of ‖p‖² (design.md S3, CMS).

    Returns:
        the normalised step (..., n) (``step_norm``) and the write bound's factor min(1, τ/‖g_t‖_F)
        (..., n), or None without a bound.
    """
    if spec.step_norm != "none":
        sq = p.pow(2).sum(-1)
        if gain is not None:
            sq = sq * gain
        eta = eta / (1 + eta * sq) if spec.step_norm == "implicit" else eta / sq.clamp(min=1.0)
    if spec.write_bound <= 0:
        return eta, None
    tau2 = spec.write_bound ** 2
    # τ / sqrt(max(‖e‖²‖p‖², τ²)): the square root never sees 0, so its gradient stays finite.
    return eta, spec.write_bound / (e.pow(2).sum(-1) * p.pow(2).sum(-1)).clamp(min=tau2).sqrt()


def dgd_coefficient(spec: MemorySpec, step: Tensor, alpha: Tensor | None) -> Tensor:
    """γ_t of the DGD term −γ_t (X_{t−1} k_t) k_tᵀ: the step η_t (``gate_form="eq92"``, α on the identity
    only) or α_t η_t (``"yang"``: α_t X_{t−1}(I − η_t k_t k_tᵀ), design.md S12). step, alpha: (..., n)."""
    if spec.gate_form == "eq92" or alpha is None:
        return step
    return alpha * step


def step_gains(spec: MemorySpec, pre_k: Tensor, weights: State) -> dict[str, Tensor]:
    """Weight name -> the squared gain :func:`weight_step` multiplies its curvature by: W₂'s under
    ``curvature="gain"`` with a normalised step (pre_k = k W₂ᵀ at the boundary), else none."""
    if spec.curvature == "input" or spec.step_norm == "none" or spec.kind == "linear":
        return {}
    return {"W2": output_gain(spec, pre_k, weights["W1"])}


def _weight_coefficients(spec: MemorySpec, eta: Tensor, alpha: Tensor | None, beta: Tensor | None,
                         factors: dict[str, tuple[Tensor, Tensor]], first: str, gains: dict[str, Tensor],
                         last_only: bool = False) -> dict[str, _Coefficients]:
    """Each weight's chunk coefficients; one shared set unless steps are normalised or bounded per weight.
    ``last_only``: the rows of the chunk's last token alone (see :func:`_gate_products`)."""
    gp = _gate_products(spec, eta, alpha, beta, last_only)
    dgd = spec.rule == "dgd"
    if spec.step_norm == "none" and spec.write_bound <= 0:
        co = _coefficients(spec, gp, eta, beta, None, dgd_coefficient(spec, eta, alpha) if dgd else None)
        return {name: co for name in factors}
    out = {}
    for name, (e, p) in factors.items():
        step, gscale = weight_step(spec, eta, e, p, gains.get(name))
        gamma = dgd_coefficient(spec, step, alpha) if dgd and name == first else None
        out[name] = _coefficients(spec, gp, step, beta, gscale, gamma)
    return out


def _read(co: _Coefficients, x0: Tensor, s0: Tensor | None, e: Tensor, p: Tensor, z: Tensor,
          anchor: Tensor | None = None) -> Tensor:
    """Row t of the result is X_t z_t (X at the coefficient rows of ``co``) for a weight without DGD
    values; z: (..., n, d_in); ``anchor`` W₀ of ``retain="initial"`` (adds (1 − A_t) W₀ z_t).

    The boundary terms A_t X_0 z_t − σ_t S_0 z_t are one matmul over concatenated operands (fewer,
    larger products are faster on CPU).
    """
    if s0 is None:
        out = (co.a0.unsqueeze(-1) * z) @ x0.mT
    else:
        out = torch.cat((co.a0.unsqueeze(-1) * z, -co.sig.unsqueeze(-1) * z), dim=-1) @ torch.cat((x0, s0), dim=-1).mT
    if anchor is not None:
        out = out + ((1 - co.a0).unsqueeze(-1) * z) @ anchor.mT
    return out - (co.gm * (z @ p.mT)) @ e


def _cat(parts: tuple[Tensor, ...], dim: int) -> Tensor:
    """torch.cat after broadcasting the leading axes (a group's G memories share keys and gates, but a
    per-weight write bound gives their coefficients the G axis)."""
    lead = torch.broadcast_shapes(*(t.shape[:-2] for t in parts))
    return torch.cat([t.expand(*lead, *t.shape[-2:]) for t in parts], dim=dim)


def _outer(e: Tensor, p: Tensor, scale: Tensor) -> Tensor:
    """Σ_j scale_j e_j p_jᵀ, (..., rows, cols), scale (..., n, 1) applied to the narrower factor.

    The product is ordered so that the gradient of the wider factor, whose graph holds the element-wise
    work (an MLP's hidden side), comes out of the backward product contiguous (strided element-wise
    work is several times slower on CPU): eᵀ p yields a contiguous gradient for p, (pᵀ e)ᵀ for e.
    """
    if e.shape[-1] > p.shape[-1]:
        return ((scale * p).mT @ e).mT
    if e.shape[-1] < p.shape[-1]:
        return (scale * e).mT @ p
    return e.mT @ (scale * p)


def _add_outer(x0: Tensor, e: Tensor, p: Tensor, scale: Tensor) -> Tensor:
    """x0 + Σ_j scale_j e_j p_jᵀ as one fused product-add (3-D weights), ordered as in :func:`_outer`;
    for a wide e it runs in the transposed layout and returns a transposed view, so that a weight
    written chunk after chunk stays in the layout its products read and write without copies."""
    if e.shape[-1] > p.shape[-1]:
        return torch.baddbmm(x0.mT, (scale * p).mT, e).mT
    if e.shape[-1] < p.shape[-1]:
        return torch.baddbmm(x0, (scale * e).mT, p)
    return torch.baddbmm(x0, e.mT, scale * p)


def _end_state(co: _Coefficients, x0: Tensor, s0: Tensor | None, e: Tensor, p: Tensor,
               u: Tensor | None, anchor: Tensor | None = None, decay: bool = True) -> tuple[Tensor, Tensor | None]:
    """(X_n, S_n) after the chunk's last token; ``u`` the DGD values (then p are the keys); ``anchor``
    W₀ of ``retain="initial"``, which adds (1 − A_n) W₀ (the anchor's terms telescope over the chunk);
    ``decay`` False when there is no retention gate (α ≡ 1, so A_n = 1).

    The chunk's sums share their left factor ([e; u]ᵀ [−Gm∘p; −Gk∘k] for X_n; with momentum and no
    DGD values eᵀ [−Gm∘p | mom∘p] gives both), with the minus signs on the small right factor. The
    boundary terms are fused multiply-adds: operations on whole weight matrices cost as much as the
    products at these chunk sizes, forward and backward.
    """
    s = None
    if u is not None:
        neg = -co.gm[..., -1, :].unsqueeze(-1) * p
        acc = _cat((e, u), -2).mT @ _cat((neg, -co.gk[..., -1, :].unsqueeze(-1) * p), -2)
        if s0 is not None:
            s = e.mT @ (co.mom_end.unsqueeze(-1) * p)
    elif s0 is None:
        if not decay and anchor is None and x0.dim() == 3:
            return _add_outer(x0, e, p, -co.gm[..., -1, :].unsqueeze(-1)), None
        acc = _outer(e, p, -co.gm[..., -1, :].unsqueeze(-1))
    else:
        neg = -co.gm[..., -1, :].unsqueeze(-1) * p
        acc, s = (e.mT @ torch.cat((neg, co.mom_end.unsqueeze(-1) * p), dim=-1)).split(p.shape[-1], dim=-1)
    # Without retention A_n ≡ 1: an add, whose backward is free, instead of a scaled add.
    x = acc + x0 if not decay else torch.addcmul(acc, co.a0[..., -1, None, None], x0)
    if anchor is not None:
        x = torch.addcmul(x, 1 - co.a0[..., -1, None, None], anchor)
    if s0 is not None:
        x = torch.addcmul(x, -co.sig[..., -1, None, None], s0)
        s = torch.addcmul(s, co.b_end[..., None, None], s0)
    return x, s


def _chunk(spec: MemorySpec, cur: State, mom: State, grad_at: State, q: Tensor, k: Tensor, v: Tensor,
           eta: Tensor, alpha: Tensor | None, beta: Tensor | None, anchor: State | None = None,
           stop_shift: State | None = None, outputs: bool = True, self_values: bool = False,
           end_state: bool = True) -> tuple[Tensor | None, State, State]:
    """One chunk: outputs (..., n, d_out) (None unless ``outputs``), new weights, new momenta.

    ``end_state=False`` skips the weights and momenta after the chunk (returned empty): the last
    chunk of a call whose caller discards the state. ``anchor``: W₀ per weight (``retain="initial"``).

    ``stop_shift`` (stopgrad writes): θ₀ − sg(θ₀) per weight, added to every read weight, so reads see
    θ₀ + sg(Δ_t) while everything else in the chunk is detached by the caller. ``self_values``: the
    targets are v̂_t = M_b(v_t) (see :func:`memory_scan`).

    The key-consuming weight X (W, or W₂) meets k and q on both sides: its reads and DGD values need
    X_0 z, S_0 z and k zᵀ for z ∈ {k, q}; on an aligned chunk X_0 is the boundary state, so X_0 k and
    X_0 q come from the boundary product of :func:`_boundary_terms` instead of being recomputed.
    """
    first = "W" if spec.kind == "linear" else "W2"
    read_q = outputs and spec.read != "boundary"  # a boundary read needs none of the chunk's intra-chunk terms
    if not (end_state or read_q):
        # Nothing of the chunk's writes is used: a boundary read alone (the last chunk of a training call).
        read_at = grad_at if stop_shift is None else {name: w + stop_shift[name] for name, w in grad_at.items()}
        return (memory_apply(spec, read_at, q) if outputs else None), {}, {}
    aligned = all(grad_at[n] is cur[n] for n in cur)
    # q meets the boundary's first weight when the read is at the boundary state (a boundary read, or
    # any read of an aligned chunk's X_0), so its product joins the gradients' (:func:`boundary_terms`).
    boundary_q = (read_q and aligned) or (outputs and not read_q and stop_shift is None)
    factors, pre_k, pre_q = boundary_terms(spec, grad_at, k, v, self_values, q if boundary_q else None,
                                           read=boundary_q and not read_q)
    dgd = spec.rule == "dgd"
    cos = _weight_coefficients(spec, eta, alpha, beta, factors, first, step_gains(spec, pre_k, grad_at),
                               last_only=not (read_q or dgd))
    co = cos[first]
    anchor = anchor or {}
    x0, s0, a_first = cur[first], mom.get(first), anchor.get(first)
    u = None
    if read_q or dgd:
        prev = co.before()
        read_co = co if spec.read == "after" else prev
        n = k.shape[-2]
        zs = torch.cat((k, q), dim=-2) if read_q else k

        def split(t: Tensor) -> tuple[Tensor, Tensor | None]:
            # split, not slices: a slice's backward fills a zero tensor of the whole.
            return t.split(n, dim=-2) if read_q else (t, None)

        if aligned:
            k_x0, q_x0 = pre_k, pre_q
        else:
            k_x0, q_x0 = split(zs @ x0.mT)
        k_s0, q_s0 = split(zs @ s0.mT) if s0 is not None else (None, None)
        k_a, q_a = split(zs @ a_first.mT) if a_first is not None else (None, None)
        k_k, q_k = split(zs @ k.mT)
        e = factors[first][0]
    if dgd:
        # u_t = X_{t−1} k_t: solve (I + shift(Gk) ∘ K Kᵀ) U = R (unit lower triangular, spec §5.9).
        rhs = prev.a0.unsqueeze(-1) * k_x0 - (prev.gm * k_k) @ e
        if s0 is not None:
            rhs = rhs - prev.sig.unsqueeze(-1) * k_s0
        if k_a is not None:
            rhs = rhs + (1 - prev.a0).unsqueeze(-1) * k_a
        u = torch.linalg.solve_triangular(prev.gk * k_k, rhs, upper=False, unitriangular=True)
    new_w, new_m = {}, {}
    for name, (e_n, p_n) in factors.items() if end_state else ():
        new_w[name], s = _end_state(cos[name], cur[name], mom.get(name), e_n, p_n, u if name == first else None,
                                    anchor.get(name), decay=alpha is not None)
        if s is not None:
            new_m[name] = s
    if not outputs:
        return None, new_w, new_m
    if not read_q:
        if stop_shift is None:
            return pre_q, new_w, new_m
        return memory_apply(spec, {name: w + stop_shift[name] for name, w in grad_at.items()}, q), new_w, new_m
    out = read_co.a0.unsqueeze(-1) * q_x0
    if s0 is not None:
        out = out - read_co.sig.unsqueeze(-1) * q_s0
    if q_a is not None:
        out = out + (1 - read_co.a0).unsqueeze(-1) * q_a
    if dgd:
        out = out - _cat((read_co.gm * q_k, read_co.gk * q_k), -1) @ _cat((e, u), -2)
    else:
        out = out - (read_co.gm * q_k) @ e
    if stop_shift is not None:
        out = out + q @ stop_shift[first].mT
    if spec.kind == "linear":
        return out, new_w, new_m
    hidden = hidden_layer(spec, out)
    e1, act = factors["W1"]
    co1 = read_co if cos["W1"] is co else (cos["W1"] if spec.read == "after" else cos["W1"].before())
    out = _read(co1, cur["W1"], mom.get("W1"), e1, act, hidden, anchor.get("W1"))
    if stop_shift is not None:
        out = out + hidden @ stop_shift["W1"].mT
    return (q + out if spec.residual else out), new_w, new_m


_backend: dict[str, str | None] = {"name": None}
# Graphs of the chunk step one process may compile: every memory spec, chunk shape and mode (forward
# only, a last chunk without end state, an evaluation batch) is one.
RECOMPILE_LIMIT = 64
_compiled: dict[tuple, object] = {}


def compile_chunk_step(backend: str | None = "inductor") -> None:
    """Run :func:`memory_scan`'s chunk step under ``torch.compile`` in this process (None: eagerly
    again), for every memory built on it: Titans, the delta-rule families, the self-modifying
    memories and the CMS levels.

    At the widths of the evidence suite a chunk is some 300 small operations forward and twice that
    backward, so its time is per-operation overhead (docs/performance.md); compiling the chunk step
    alone fuses its element-wise work, forward and backward, while the chunk loop and the layers
    around it stay eager. Each chunk shape and memory spec is compiled once, on first use (minutes
    on CPU, with a C++ compiler for ``"inductor"``); a run then pays off only if it is long. Results
    agree with the eager step to rounding (tests/test_memory.py, tests/test_cms.py).
    ``train.compile_chunks`` sets it.

    Turning it on raises dynamo's per-function recompile limit of the process to at least
    :data:`RECOMPILE_LIMIT`: Hope's training step alone needs 12 graphs of the chunk step at the LM
    section's sizes, and at dynamo's default of 8 the rest ran eagerly (measured: 2.3 against 1.25 s
    per step, docs/performance.md).
    """
    _backend["name"] = backend
    if backend is not None:
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
        setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def chunk_compile_backend() -> str | None:
    """The backend :func:`compile_chunk_step` set in this process, or None (eager); a process that
    spawns workers passes it on (:func:`nestlearn.eval.suite.common.worker_setup`)."""
    return _backend["name"]


def compiled(fn):
    """``fn``, or its ``torch.compile``'d version while :func:`compile_chunk_step` is on (one wrapper per
    function and backend, so that its compiled graphs are reused)."""
    backend = _backend["name"]
    if backend is None:
        return fn
    if (fn, backend) not in _compiled:
        _compiled[fn, backend] = torch.compile(fn, dynamic=False, backend=backend)
    return _compiled[fn, backend]


def _check_inputs(spec: MemorySpec, state: State, eta: Tensor, alpha: Tensor | None, beta: Tensor | None,
                  anchor: State | None) -> None:
    if (spec.retain == "initial") != (anchor is not None):
        raise ValueError(f"anchor must be given exactly when retain='initial' (retain={spec.retain!r})")
    missing = [n for n in spec.state_names if n not in state]
    if missing:
        raise KeyError(f"memory state lacks {missing}; expected keys {list(spec.state_names)}")
    if (spec.momentum == "none") != (beta is None):
        raise ValueError(f"beta must be given exactly when momentum is on (momentum={spec.momentum!r})")
    if alpha is not None and alpha.shape != eta.shape:
        raise ValueError(f"alpha shape {tuple(alpha.shape)} != eta shape {tuple(eta.shape)}")


def effective_eta(spec: MemorySpec, eta: Tensor, alpha: Tensor | None) -> Tensor:
    """The step before per-weight normalisation: η (``eigen="positive"``) or, with ``"signed"``, the
    step whose DGD transition along a unit key reaches below 0: (1 + α)η, so α − (1 + α)η spans [−1, α)
    (``gate_form="eq92"``), or 2η, so α(1 − 2η) spans (−α, α) (``"yang"``; design.md S2, S12)."""
    if spec.eigen == "positive":
        return eta
    return 2 * eta if alpha is None or spec.gate_form == "yang" else (1 + alpha) * eta


def stopgrad_writes(spec: MemorySpec, state: State, k: Tensor, v: Tensor, eta: Tensor, alpha: Tensor | None,
                    beta: Tensor | None, anchor: State | None) -> tuple:
    """A call's inputs as its writes use them, and the shift that its reads add back (D3).

    With ``write_grad="stopgrad"`` every fast state is θ₀ + sg(Δ_t): the writes run on the detached
    state, keys, values, gates and anchor, and each read adds shift = θ₀ − sg(θ₀) per weight to the
    weights it reads. Otherwise everything comes back unchanged and the shift is None.
    Returns (shift, state, k, v, eta, alpha, beta, anchor).
    """
    if spec.write_grad != "stopgrad":
        return None, state, k, v, eta, alpha, beta, anchor
    shift = {n: state[n] - state[n].detach() for n in spec.weight_names}
    k, v, eta, alpha, beta = (None if t is None else t.detach() for t in (k, v, eta, alpha, beta))
    return (shift, {n: t.detach() for n, t in state.items()}, k, v, eta, alpha, beta,
            None if anchor is None else {n: w.detach() for n, w in anchor.items()})


def memory_scan(spec: MemorySpec, state: State, q: Tensor, k: Tensor, v: Tensor, eta: Tensor,
                alpha: Tensor | None = None, beta: Tensor | None = None, pos: int = 0, *,
                outputs: bool = True, self_values: bool = False, final_state: bool = True,
                anchor: State | None = None, tag: str = "memory") -> tuple[Tensor | None, State]:
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
        outputs: False skips the reads (a memory whose state is all that is needed) and returns None.
        self_values: the targets are the memory's own output at its chunk's boundary state,
            v̂_t = M_b(v_t) (self-generated values, NL-L Eqs 84/95, D7), computed inside each chunk from
            the same boundary products as its gradients; v is then (..., T, d_in).
        final_state: False when the caller discards the returned state (training with a fresh state
            per sequence): the last chunk's write, which only that state would hold, is skipped and
            the state comes back empty. The outputs are unchanged.
        anchor: the retention target W₀ per weight name (broadcastable to the weights), required
            exactly when ``spec.retain == "initial"``.
        tag: the memory's name in :mod:`nestlearn.memory.monitor` records (fast-weight norms and the
            first non-finite read), prefixed by the enclosing block's scope.

    Leading ``...`` axes broadcast between the state, the token tensors and the gates, so memories
    that share keys and gates (state (B, G, H, ...), keys (B, 1, H, ...)) run as one call and share
    the chunk's scalar coefficients.

    Returns:
        outputs (..., T, d_out) (read after or before each token's write, ``spec.read``; None without
        ``outputs``) and the new state ({} without ``final_state``).
    """
    _check_inputs(spec, state, eta, alpha, beta, anchor)
    names = spec.weight_names
    shift, state, k, v, eta, alpha, beta, anchor = stopgrad_writes(spec, state, k, v, eta, alpha, beta, anchor)
    eta = effective_eta(spec, eta, alpha)
    watch = monitor.active()
    cur = {n: state[n] for n in names}
    mom = {n: state[f"{n}_mom"] for n in names} if spec.momentum != "none" else {}
    grad_at = boundary_weights(state, pos, spec.chunk_size, names)
    bounds = chunk_bounds(pos, q.shape[-2], spec.chunk_size)
    pieces = split_chunks(bounds, (q, k, v), dim=-2)
    gates = split_chunks(bounds, (eta, alpha, beta), dim=-1)
    outs = []
    for i, (start, end) in enumerate(bounds):
        last = i == len(bounds) - 1
        if last and not (final_state or outputs):
            break
        if (pos + start) % spec.chunk_size == 0:
            grad_at = dict(cur)
        out, cur, mom = compiled(_chunk)(spec, cur, mom, grad_at, *(x[i] for x in pieces),
                                         *(None if g is None else g[i] for g in gates), anchor=anchor,
                                         stop_shift=shift, outputs=outputs, self_values=self_values,
                                         end_state=final_state or not last)
        outs.append(out)
        if watch is not None:
            watch.observe(tag, pos + start, cur, out, end - start)
    if not final_state:
        return (torch.cat(outs, dim=-2) if outputs else None), {}
    if (pos + q.shape[-2]) % spec.chunk_size == 0:
        # A copy, not an alias: states are saved with safetensors, which rejects shared storage.
        grad_at = {n: w.clone() for n, w in cur.items()}
    if shift is not None:
        cur = {n: w + shift[n] for n, w in cur.items()}
        grad_at = {n: w + shift[n] for n, w in grad_at.items()}
    new_state = {**cur, **{f"{n}_b": grad_at[n] for n in names}, **{f"{n}_mom": mom[n] for n in mom}}
    return (torch.cat(outs, dim=-2) if outputs else None), new_state


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
