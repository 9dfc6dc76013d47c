"""The CMS module: a chain (or sum) of levels, each read with chunk-start weights and written at chunk ends."""

from __future__ import annotations

import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.layers.cms.chunk import State, Tensor, accumulate, minus, pack_weights, subtract, unpack_weights
from nestlearn.layers.cms.config import CMSConfig
from nestlearn.layers.cms.level import CMSLevel
from nestlearn.layers.cms.lss import LSSRecord, lss_read
from nestlearn.memory import chunk_bounds, monitor


class CMS(nn.Module):
    """A Continuum Memory System over width ``d_model`` (see the module docstring).

    State keys per level i, for each fast weight W{j} of the level (j = 1, 2, and 3 for SwiGLU):
    ``{i}.W{j}`` (the fast weight), ``{i}.G{j}`` (the pending write of the current partial chunk)
    and, in the nested variant for levels i ≥ 1, ``{i}.I{j}``, ``{i}.H{j}`` (the fast initial state
    and its pending write). Static levels (η_max = 0, or the ``optimizer`` signal) have no state.
    """

    def __init__(self, d_model: int, cfg: CMSConfig, eps: float = 1e-6):
        super().__init__()
        cfg.validate()
        if cfg.level_assignment != "every_layer":
            raise ConfigError("cms.level_assignment", f"{cfg.level_assignment!r} spreads levels over a model's "
                              "layers; this model family builds every block with the whole chain (use 'every_layer')")
        self.cfg = cfg
        hidden = cfg.hidden or cfg.hidden_mult * d_model
        self.levels = nn.ModuleList(CMSLevel(d_model, hidden, c, cfg, eps) for c in cfg.schedule)
        self.agg = nn.Parameter(torch.zeros(len(cfg.schedule))) if cfg.variant == "independent" else None

    @property
    def lss_levels(self) -> list[int]:
        """Indices of the levels written by the ``lss`` signal (none for other signals or η_max = 0)."""
        return [i for i, level in enumerate(self.levels) if level.signal == "lss" and not level.static]

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        state = {}
        for i, level in enumerate(self.levels):
            if level.static:
                continue
            for name, p in level.initial.items():
                j = name[1:]
                state[f"{i}.{name}"] = p.to(device=device, dtype=dtype).expand(batch_size, *p.shape)
                state[f"{i}.G{j}"] = torch.zeros(batch_size, *p.shape, device=device, dtype=dtype)
                if self.cfg.variant == "nested" and i > 0:
                    state[f"{i}.I{j}"] = state[f"{i}.{name}"]
                    state[f"{i}.H{j}"] = torch.zeros(batch_size, *p.shape, device=device, dtype=dtype)
        return state

    def _apply_order(self) -> list[int]:
        idx = list(range(len(self.levels)))
        return idx if self.cfg.order == "slow_first" else idx[::-1]

    def forward(self, x: Tensor, state: State | None = None, pos: int = 0, u: dict[int, Tensor] | None = None,
                tape: dict[int, list[LSSRecord]] | None = None, keep_state: bool = True) -> tuple[Tensor, State]:
        """x: (batch, seq, d_model) at absolute positions pos.. -> (output, new state).

        ``keep_state=False`` (the caller discards the state) skips each level's last write, which
        only the returned state would hold, and returns {}.

        The ``lss`` signal needs one of:

        * ``u``: level index -> (batch, seq, d_model), the value u_t of every ``lss`` level at every
          token of x; the levels then write at their chunk ends like ``kv`` levels;
        * ``tape`` (driven by the model, :mod:`nestlearn.models.lss`): the ``lss`` levels only read,
          and append one :class:`LSSRecord` per call to ``tape[level]``; x must not cross a chunk
          end of an ``lss`` level except at its last token, and the caller applies the write there
          with :func:`nestlearn.layers.cms.lss.lss_write`.
        """
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        if self.lss_levels and u is None and tape is None:
            raise ValueError("CMS with cms.signal='lss' needs u (the value of each level) or a tape; inside a "
                             "model the lss driver supplies them (nestlearn.models.lss)")
        new_state: State = {}
        if self.cfg.variant == "independent":
            weights = torch.softmax(self.agg, dim=0)
            y = torch.zeros_like(x)
            for i in self._apply_order():
                out, s = self._level_scan(i, x, state, pos, u, tape, keep_state)
                y = y + weights[i] * out
                new_state.update(s)
            return y, (new_state if keep_state else {})
        for i in self._apply_order():
            x, s = self._level_scan(i, x, state, pos, u, tape, keep_state)
            new_state.update(s)
        return x, (new_state if keep_state else {})

    def _level_scan(self, i: int, x: Tensor, state: State, pos: int, u: dict[int, Tensor] | None,
                    tape: dict[int, list[LSSRecord]] | None, keep_state: bool = True) -> tuple[Tensor, State]:
        """Run level i over x chunk by chunk: read with chunk-start weights, write at chunk ends (Eq 71).

        What stays sequential is the chain of chunk-start weights θ_{c+1} = θ_c − Σ_{t∈c} η_t g_t(θ_c):
        each chunk's gradients are taken at θ_c. Everything that does not depend on θ (n(x), k, v,
        n(k), η) is computed for all tokens at once; per chunk the reads and the write share two
        matrix products (:func:`chunk_terms`) and the write is one fused product per weight. The
        last chunk's write only reaches the returned state, so with gradients on it is kept out of
        the read's products (the outer backward pass then skips it; without gradients, as in
        decoding, one shared product is cheaper), and without ``keep_state`` it is not computed.
        """
        level = self.levels[i]
        if level.static:
            return level.read(level.initial, x), {}
        names = list(level.initial)
        x_norm = level.norm(x)
        if level.signal == "lss" and u is None:
            return lss_read(self, i, x, x_norm, state, pos, tape)
        batch, form = x.shape[0], level.form
        w = pack_weights(form, {n: state[f"{i}.{n}"] for n in names})
        g = pack_weights(form, {n: state[f"{i}.G{n[1:]}"] for n in names})
        nested = self.cfg.variant == "nested" and i > 0
        slow = self.cfg.chunk_sizes[i - 1] if nested else 0
        if nested:
            init = pack_weights(form, {n: state[f"{i}.I{n[1:]}"] for n in names})
            h = pack_weights(form, {n: state[f"{i}.H{n[1:]}"] for n in names})
        key, target, eta = level.write_inputs(x, x_norm, u.get(i) if u is not None else None)
        bounds = chunk_bounds(pos, x.shape[1], level.chunk_size)
        sizes = [end - start for start, end in bounds]
        # split, not slices: a slice's backward fills a zero tensor of the whole sequence per chunk.
        pieces = [t.split(sizes, dim=1) for t in (x, x_norm, target, eta)]
        keys = pieces[1] if level.signal == "lss" else key.split(sizes, dim=1)
        outs = []
        mon = monitor.active()
        for c, (start, end) in enumerate(bounds):
            xs, xn, tg, et = (p[c] for p in pieces)
            if c == len(bounds) - 1 and not keep_state:
                outs.append(xs + level.terms(w, xn, keys[c], tg, et, write=False).out)
                return torch.cat(outs, dim=1), {}
            if c == len(bounds) - 1 and keys[c] is not xn and torch.is_grad_enabled():
                terms = level.terms(w, xn, keys[c], tg, et, write=False)
                factors = level.terms(w, xn, keys[c], tg, et, read=False).factors
            else:
                terms = level.terms(w, xn, keys[c], tg, et)
                factors = terms.factors
            y = xs + terms.out
            if tape is not None:
                tape.setdefault(i, []).append(LSSRecord(keys[c], et, y, terms.pre))
            outs.append(y)
            if mon is not None:  # the chunk-start weights this chunk read with (design.md S6)
                mon.observe(f"cms{i}", pos + start, w, y)
            if nested:
                h = accumulate(h, level.terms(init, xn, keys[c], tg, et, read=False).factors)
            if (pos + end) % level.chunk_size == 0:
                w, g = subtract(minus(w, g), factors), None
            else:
                g = accumulate(g, factors)
            if nested and (pos + end) % slow == 0:
                # Eq 72: the slower level's boundary writes the initial state, then restarts this level from it.
                init, h = minus(init, h), None
                w = dict(init)
        out = {}
        for kind, packed in (("", w), ("G", g)) + ((("I", init), ("H", h)) if nested else ()):
            full = unpack_weights(form, packed, batch) if packed is not None else None
            for n in names:
                j = n[1:]
                name = f"{i}.{n}" if kind == "" else f"{i}.{kind}{j}"
                out[name] = full[n] if full is not None else torch.zeros_like(state[name])
        return torch.cat(outs, dim=1), out
