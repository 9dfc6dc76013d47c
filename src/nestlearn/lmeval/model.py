"""A native nestlearn checkpoint as an lm-evaluation-harness ``LM`` (issue 7).

The three request types of lm-eval map onto the native model as follows.

- ``loglikelihood(context, continuation)``: log p(continuation | prefix + context), summed over the
  continuation's tokens, and whether greedy decoding would produce exactly those tokens.
- ``loglikelihood_rolling(text)``: log p(text | prefix), every token of the text scored once. The
  text is cut into disjoint windows of ``seq_len`` targets exactly as :func:`nestlearn.eval.lm.evaluate_bpb`
  cuts a stream (the window after the first starts from the last token of the one before); models
  with a bounded context (softmax attention) read every window from a fresh state (D18 ``reset``),
  recurrent models carry their fast state from window to window through the whole document (D18
  ``carry``; ``carry_state=False`` resets them too).
- ``generate_until(context, gen_kwargs)``: :meth:`CausalLM.generate` from prefix + context, in chunks
  that continue its state, stopped at the first ``until`` string or after ``max_gen_toks`` tokens.

nestlearn models have no BOS/EOS token. [Interp] Every scored or continued sequence is read after
``prefix`` (default ``"\\n"``): the byte that precedes every document of the built-in corpus, which
plays the part of the BOS token. So the bits per byte lm-eval reports for a document d equal
``nestlearn eval``'s on the stream ``"\\n" + d`` (same windows, same targets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval 0.4.13 fills its model registry only while it is empty)
import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from nestlearn.errors import ConfigError, check_positive
from nestlearn.models.lm import LMState

MODEL_NAME = "nestlearn"
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")
# Tokens generated per call of CausalLM.generate between two checks of the stop strings.
GEN_CHUNK = 16


def _positive_int(field: str, value: Any, allow_zero: bool = False) -> int:
    """lm-eval passes numbers from the command line as int or str; 'auto' batch sizing is not supported."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a {'non-negative' if allow_zero else 'positive'} integer, got {value!r}") from None
    check_positive(field, number, allow_zero=allow_zero)
    return number


def _carry_flag(value: Any) -> bool | None:
    """carry_state: "auto" -> None (decided by the model), else a bool."""
    if value in ("auto", None):
        return None
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ConfigError("carry_state", f"must be 'auto', true or false, got {value!r}")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"is {name!r} (lm-eval's command line defaults to cuda:0) but CUDA is not "
                          "available; pass --device cpu")
    return torch.device(name)


@register_model(MODEL_NAME)
class NestlearnLM(LM):
    """lm-eval model ``nestlearn``: ``--model nestlearn --model_args path=RUN_OR_CHECKPOINT[,key=value...]``.

    Args:
        path: run folder or checkpoint file, as for ``nestlearn eval``.
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available).
        batch_size: sequences (or windows) per forward pass.
        max_batch_size: upper bound on ``batch_size`` (lm-eval passes its ``--max_batch_size``).
        seq_len: window length of rolling log-likelihood, and the chunk length in which a recurrent
            model reads long inputs; 0 takes the checkpoint's ``train.seq_len`` (as ``nestlearn eval``).
        carry_state: "auto" (carry for models without a bounded context), true or false; see the
            module docstring.
        prefix: text every sequence is read after; must encode to at least one token.
        max_gen_toks: generation length of requests that do not set ``max_gen_toks``.
        seed: seed of the sampling generator, restarted for every request.
    """

    def __init__(self, path: str, device: str = "cpu", batch_size: int | str = 16, max_batch_size: int | None = None,
                 seq_len: int = 0, carry_state: bool | str = "auto", prefix: str = "\n", max_gen_toks: int = 256,
                 seed: int = 0):
        super().__init__()
        from nestlearn.train.loading import load_model

        self._device = _resolve_device(str(device))
        self.batch_size = _positive_int("batch_size", batch_size)
        if max_batch_size is not None:
            self.batch_size = min(self.batch_size, _positive_int("max_batch_size", max_batch_size))
        self.path = Path(path)
        self.model, self.tokenizer, self.meta = load_model(self.path, self._device)
        cfg = self.model.config
        self.seq_len = _positive_int("seq_len", seq_len, allow_zero=True) or int(self.meta["config"]["train"]["seq_len"])
        if cfg.bounded_context and self.seq_len > cfg.max_seq_len:
            raise ConfigError("seq_len", f"is {self.seq_len} but must be <= model.max_seq_len={cfg.max_seq_len}")
        carry = _carry_flag(carry_state)
        if carry and cfg.bounded_context:
            raise ConfigError("carry_state", f"{cfg.family!r} has a bounded context (softmax attention) and cannot "
                              "carry its state across windows; use carry_state=auto or false")
        self.carry_state = (not cfg.bounded_context) if carry is None else carry
        self.prefix = str(prefix)
        self.prefix_ids = self._encode(self.prefix)
        if not self.prefix_ids:
            raise ConfigError("prefix", "must encode to at least one token (the model has no BOS token)")
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.seed = int(seed)

    # -- helpers ---------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text.encode("utf-8")).tolist()

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(prefix + context ids, continuation ids).

        Bytes encode context and continuation exactly apart. A BPE tokenizer merges across the
        boundary, so (as lm-eval does for its own models) trailing spaces of the context move to the
        continuation and the continuation's ids are the tail of the whole text's ids.
        """
        if self.tokenizer.kind == "byte":
            return self.prefix_ids + self._encode(context), self._encode(continuation)
        n_space = len(context) - len(context.rstrip())
        if n_space:
            context, continuation = context[:-n_space], context[-n_space:] + continuation
        ctx = self._encode(context)
        return self.prefix_ids + ctx, self._encode(context + continuation)[len(ctx):]

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs: (batch, seq) -> (batch, seq, vocab) float32 logits.

        A bounded model reads the sequence in one pass; a recurrent one in chunks of ``seq_len``
        with its state carried, which computes the same logits with memory bounded by the chunk.
        """
        if self.model.config.bounded_context:
            return self.model(inputs).logits.float()
        state: LMState | None = None
        parts = []
        for start in range(0, inputs.shape[1], self.seq_len):
            out = self.model(inputs[:, start:start + self.seq_len], state=state)
            parts.append(out.logits.float())
            state = out.state
        return torch.cat(parts, dim=1)

    # -- loglikelihood ---------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``Instance.args = (context, continuation)`` -> (log-probability, is_greedy) per request."""
        pairs = [self._encode_pair(req.args[0], req.args[1]) for req in requests]
        results = self.loglikelihood_tokens(pairs)
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, res)
        return results

    @torch.no_grad()
    def loglikelihood_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) pairs -> (sum of the continuation's log-probs, is_greedy).

        Sequences are batched longest first and padded on the right (causal models never look
        ahead, so padding changes nothing before it). A bounded model keeps the last
        ``max_seq_len + 1`` tokens of a longer sequence; a continuation longer than ``max_seq_len``
        is scored in consecutive spans, each read with as much preceding context as fits.
        """
        cfg = self.model.config
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for b in range(0, len(order), self.batch_size):
            rows = []
            for i in order[b:b + self.batch_size]:
                ctx, cont = pairs[i]
                seq = ctx + cont
                if not cont:
                    results[i] = (0.0, True)
                elif cfg.bounded_context and len(cont) > cfg.max_seq_len:
                    results[i] = self._long_continuation(seq, len(cont))
                else:
                    if cfg.bounded_context:
                        seq = seq[-(cfg.max_seq_len + 1):]
                    rows.append((i, seq, len(cont)))
            if not rows:
                continue
            width = max(len(seq) for _, seq, _ in rows) - 1
            inputs = torch.zeros(len(rows), width, dtype=torch.long)
            for r, (_, seq, _) in enumerate(rows):
                inputs[r, :len(seq) - 1] = torch.tensor(seq[:-1])
            logprobs = self._logits(inputs.to(self._device)).log_softmax(dim=-1)
            for r, (i, seq, n) in enumerate(rows):
                end = len(seq) - 1
                lp = logprobs[r, end - n:end]
                target = torch.tensor(seq[-n:], device=lp.device)
                ll = lp.gather(-1, target[:, None]).sum().item()
                results[i] = (ll, bool((lp.argmax(dim=-1) == target).all()))
        return results

    def _long_continuation(self, seq: list[int], n: int) -> tuple[float, bool]:
        """Score the last ``n`` tokens of ``seq`` with a bounded model, ``max_seq_len`` targets at a time."""
        m = self.model.config.max_seq_len
        tokens = torch.tensor(seq, device=self._device)
        ll, greedy = 0.0, True
        for a in range(len(seq) - n, len(seq), m):
            b = min(a + m, len(seq))
            start = max(0, b - 1 - m)
            lp = self._logits(tokens[None, start:b - 1]).log_softmax(dim=-1)[0, a - 1 - start:]
            target = tokens[a:b]
            ll += lp.gather(-1, target[:, None]).sum().item()
            greedy = greedy and bool((lp.argmax(dim=-1) == target).all())
        return ll, greedy

    # -- loglikelihood_rolling -------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """``Instance.args = (text,)`` -> log p(text | prefix) per request (see the module docstring)."""
        docs = [self.prefix_ids + self._encode(req.args[0]) for req in requests]
        if self.carry_state:
            nats = [self._carried_nats(ids) for ids in docs]
        else:
            nats = self._windowed_nats(docs)
        results = [-x for x in nats]
        for req, res in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, res)
        return results

    @torch.no_grad()
    def _windowed_nats(self, docs: list[list[int]]) -> list[float]:
        """Negative log-likelihood of every token but the first of each id list, windows read from fresh states.

        The windows are those of :func:`nestlearn.eval.lm.evaluate_bpb`: window ``s`` reads
        ``ids[s:s+L]`` and predicts ``ids[s+1:s+L+1]``; the last may be shorter. Full windows of
        all documents are batched together; partial ones run alone.
        """
        L = self.seq_len
        full, partial = [], []
        for d, ids in enumerate(docs):
            n_targets = len(ids) - 1
            for s in range(0, n_targets, L):
                (full if s + L <= n_targets else partial).append((d, s, min(L, n_targets - s)))
        groups = [full[i:i + self.batch_size] for i in range(0, len(full), self.batch_size)] + [[w] for w in partial]
        nats = [0.0] * len(docs)
        for group in groups:
            window = torch.tensor([docs[d][s:s + n + 1] for d, s, n in group], device=self._device)
            logits = self._logits(window[:, :-1])
            per_row = F.cross_entropy(logits.transpose(1, 2), window[:, 1:], reduction="none").sum(dim=1)
            for (d, _, _), value in zip(group, per_row.tolist()):
                nats[d] += value
        return nats

    @torch.no_grad()
    def _carried_nats(self, ids: list[int]) -> float:
        """Negative log-likelihood of every token but the first, the fast state carried across windows."""
        tokens = torch.tensor(ids, device=self._device)[None]
        state: LMState | None = None
        total = 0.0
        for s in range(0, len(ids) - 1, self.seq_len):
            window = tokens[:, s:s + self.seq_len + 1]
            out = self.model(window[:, :-1], state=state)
            state = out.state
            total += F.cross_entropy(out.logits.float()[0], window[0, 1:], reduction="sum").item()
        return total

    # -- generate_until --------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """``Instance.args = (context, gen_kwargs)`` -> the continuation, cut before the first stop string."""
        results = []
        for req in requests:
            text = self.generate_text(req.args[0], req.args[1])
            self.cache_hook.add_partial("generate_until", req.args, text)
            results.append(text)
        return results

    def _gen_settings(self, gen_kwargs: dict) -> tuple[list[str], int, float, int | None]:
        unknown = sorted(set(gen_kwargs) - set(GEN_KWARGS))
        if unknown:
            raise ConfigError("gen_kwargs", f"unsupported {unknown}; the nestlearn model takes {', '.join(GEN_KWARGS)}")
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = _positive_int("max_gen_toks", gen_kwargs.get("max_gen_toks", self.max_gen_toks))
        top_p = gen_kwargs.get("top_p")
        if top_p is not None and float(top_p) != 1.0:
            raise ConfigError("gen_kwargs.top_p", f"nucleus sampling is not supported; use top_k (got top_p={top_p})")
        temperature = float(gen_kwargs.get("temperature", 0.0))
        do_sample = gen_kwargs.get("do_sample")
        if do_sample is False:
            temperature = 0.0
        elif do_sample and temperature == 0.0:
            temperature = 1.0
        top_k = gen_kwargs.get("top_k")
        return until, max_gen, temperature, None if top_k is None else _positive_int("gen_kwargs.top_k", top_k)

    @torch.no_grad()
    def generate_text(self, context: str, gen_kwargs: dict) -> str:
        """Continue ``prefix + context``; the same tokens as one call of :meth:`CausalLM.generate`.

        Generation runs in chunks of :data:`GEN_CHUNK` tokens, each continuing the state of the one
        before, so it can stop at a stop string early. For a bounded model a chunk never crosses the
        point where ``generate`` would slide its window, and the next chunk slides it the same way
        (re-reading the last ``max_seq_len // 2`` tokens), so the tokens are those of a single call.
        A context longer than ``max_seq_len`` keeps its last ``max_seq_len`` tokens.
        """
        until, max_gen, temperature, top_k = self._gen_settings(dict(gen_kwargs))
        cfg = self.model.config
        ids = self.prefix_ids + self._encode(context)
        if cfg.bounded_context:
            ids = ids[-cfg.max_seq_len:]
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        feed = torch.tensor(ids, device=self._device)[None]
        state: LMState | None = None
        new: list[int] = []
        while len(new) < max_gen:
            k = min(GEN_CHUNK, max_gen - len(new))
            if cfg.bounded_context:
                pos = 0 if state is None else state.pos
                if pos + feed.shape[1] > cfg.max_seq_len:
                    feed = torch.tensor((ids + new)[-(cfg.max_seq_len // 2):], device=self._device)[None]
                    state, pos = None, 0
                k = min(k, cfg.max_seq_len - pos - feed.shape[1] + 1)
            out, state = self.model.generate(feed, k, temperature, top_k, generator, state=state)
            new += out[0, feed.shape[1]:].tolist()
            text = self.tokenizer.decode(new)
            stops = [text.find(s) for s in until if s and s in text]
            if stops:
                return text[:min(stops)]
            feed = out[:, -1:]
        return self.tokenizer.decode(new)

    # -- lm-eval bookkeeping ---------------------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        """Provenance recorded in lm-eval's results under ``config``."""
        return {"nestlearn_checkpoint": str(self.path), "nestlearn_family": self.model.config.family,
                "nestlearn_step": self.meta.get("step"), "nestlearn_parameters": self.model.num_parameters(False),
                "nestlearn_tokenizer": self.tokenizer.describe(), "nestlearn_seq_len": self.seq_len,
                "nestlearn_carry_state": self.carry_state, "nestlearn_prefix": self.prefix}
