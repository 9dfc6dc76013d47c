"""The CMS module: a chain (or sum) of levels, each a memory read at its chunk's boundary and written at chunk ends."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from nestlearn.errors import ConfigError
from nestlearn.layers.cms.config import CMSConfig
from nestlearn.layers.cms.level import CMSLevel, State, Tensor
from nestlearn.layers.cms.lss import LSSRecord, lss_read
from nestlearn.memory import MemorySpec, chunk_bounds, split_chunks
from nestlearn.memory.step import memory_forward

class CMS(nn.Module):
    """A Continuum Memory System over width ``d_model`` (see the module docstring).

    State keys per level i that writes: the level's memory state (:func:`nestlearn.memory.memory_scan`)
    under ``{i}.``: ``{i}.W1``, ``{i}.W2`` (the weights with the current chunk's writes applied) and
    ``{i}.W1_b``, ``{i}.W2_b`` (the weights at the chunk's start, which the level reads); in the
    nested variant for levels i ≥ 1 also the fast initial state's, under ``{i}.init.``. Static
    levels (η_max = 0, or the ``optimizer`` signal) have no state.
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
            prefixes = [f"{i}."] + ([f"{i}.init."] if self.nested(i) else [])
            for name, p in level.initial.items():
                w = p.to(device=device, dtype=dtype).expand(batch_size, *p.shape)
                for prefix in prefixes:
                    state[prefix + name] = state[f"{prefix}{name}_b"] = w
        return state

    def nested(self, i: int) -> bool:
        """Whether level i is re-initialised from a fast initial state (Eq 72: nested, below the slowest)."""
        return self.cfg.variant == "nested" and i > 0

    def init_spec(self, i: int) -> MemorySpec:
        """The memory of level i's fast initial state (nested variant): the level's memory, written with
        the level's keys, values and steps but at the slower level's chunk size (Eq 72)."""
        return replace(self.levels[i].spec, chunk_size=self.cfg.chunk_sizes[i - 1])

    @staticmethod
    def memory_state(state: State, prefix: str, spec: MemorySpec) -> State:
        """The memory state stored under ``prefix`` (``"{i}."`` or ``"{i}.init."``), by its own names."""
        return {n: state[prefix + n] for n in spec.state_names}

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
        """Run level i over x: its memory reads at each chunk's start weights and writes at chunk ends (Eq 71).

        The level is one :func:`~nestlearn.memory.memory_scan` (or a one-token
        :func:`~nestlearn.memory.step.memory_step`) of its memory: query n(x), with the key, value
        and step of :meth:`CMSLevel.write_inputs`. In the nested variant the call is cut at the
        slower level's chunk ends, where the level restarts from its fast initial state, itself a
        memory written by the same keys, values and steps at the slower level's frequency (Eq 72).
        """
        level = self.levels[i]
        if level.static:
            return level.static_read(x), {}
        x_norm = level.norm(x)
        if level.signal == "lss" and u is None:
            return lss_read(self, i, x, x_norm, state, pos, tape)
        key, value, eta = level.write_inputs(x, x_norm, u.get(i) if u is not None else None)
        spec, tag = level.spec, f"cms{i}"
        mem = self.memory_state(state, f"{i}.", spec)
        if not self.nested(i):
            out, mem = memory_forward(spec, mem, x_norm, key, value, eta, pos=pos, final_state=keep_state, tag=tag)
            return self._record(i, x + out, x_norm, eta, pos, tape), {f"{i}.{n}": t for n, t in mem.items()}
        init_spec = self.init_spec(i)
        init = self.memory_state(state, f"{i}.init.", init_spec)
        bounds = chunk_bounds(pos, x.shape[1], init_spec.chunk_size)
        pieces = split_chunks(bounds, (x_norm, key, value), dim=1) + split_chunks(bounds, (eta,), dim=1)
        outs = []
        for c, (start, end) in enumerate(bounds):
            last, restart = c == len(bounds) - 1, (pos + end) % init_spec.chunk_size == 0
            part = [p[c] for p in pieces]
            # At a restart the level's own last write is replaced, so it is not computed.
            out, mem = memory_forward(spec, mem, *part, pos=pos + start, tag=tag,
                                      final_state=not restart and (keep_state or not last))
            outs.append(out)
            if keep_state or not last:
                _, init = memory_forward(init_spec, init, *part, pos=pos + start, outputs=False, tag=f"{tag}.init")
            if restart:
                mem = dict(init)
        new = {f"{i}.{n}": t for n, t in mem.items()} | {f"{i}.init.{n}": t for n, t in init.items()}
        return self._record(i, x + torch.cat(outs, dim=1), x_norm, eta, pos, tape), (new if keep_state else {})

    def _record(self, i: int, y: Tensor, x_norm: Tensor, eta: Tensor, pos: int,
                tape: dict[int, list[LSSRecord]] | None) -> Tensor:
        """y, with one :class:`LSSRecord` per chunk of an ``lss`` level appended to ``tape`` when a
        tape comes with the values u (the naive driver, :func:`nestlearn.models.lss.lss_reference`,
        takes ∂L_c/∂y chunk by chunk); y is then rebuilt from the recorded pieces, so that each
        piece lies on the path from the level to the loss."""
        if tape is None or self.levels[i].signal != "lss":
            return y
        sizes = [end - start for start, end in chunk_bounds(pos, y.shape[1], self.levels[i].chunk_size)]
        pieces = y.split(sizes, dim=1)
        tape.setdefault(i, []).extend(map(LSSRecord, x_norm.split(sizes, dim=1), eta.split(sizes, dim=1), pieces))
        return torch.cat(pieces, dim=1)
