"""Test setup: nothing may reach the network (data.md §7)."""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"

import socket  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

_LOOPBACK = ("127.", "::1", "localhost")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Connections to anything but loopback fail at once with a clear message."""
    real_connect = socket.socket.connect

    def guarded(sock, address):
        host = address[0] if isinstance(address, tuple) else str(address)
        if isinstance(host, str) and not host.startswith(_LOOPBACK) and sock.family != socket.AF_UNIX:
            raise RuntimeError(f"test tried to reach the network ({host}); tests must run offline")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(autouse=True)
def _one_thread():
    """Test models are tiny: a second intra-op thread only adds contention on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_flush_denormal():
    """A Trainer on CPU sets flush-to-zero for its process (``train.flush_denormal``); turned off again
    after each test, so no test sees another's setting (hypothesis refuses to draw floats under it)."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def fit_batch():
    """``fit(model, tokens, steps, lr)``: AdamW on one repeated batch (B, T+1); returns every step's loss."""

    def fit(model, tokens, steps, lr=3e-3):
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            loss = model(tokens[:, :-1], targets=tokens[:, 1:]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    return fit


@pytest.fixture
def tiny_text(tmp_path):
    """A small local corpus: the first 60 KB of the KJV train split."""
    from nestlearn.data.kjv import kjv_splits

    path = tmp_path / "tiny.txt"
    path.write_bytes(kjv_splits()["train"][:60_000])
    return path


def _memory_inputs(kind: str, length: int, momentum: bool, seed: int = 0, *, batch: int = 2, heads: int = 2,
                   dim: int = 5, hidden: int = 6, requires_grad: bool = False, w_scale: float = 0.3,
                   mlp_scale: float | None = None, v_scale: float = 1.0, eta_scale: float = 1.0,
                   alpha_low: float = 0.8):
    """Float64 inputs of one memory call: (initial weights, q, k, v, η, α, β or None).

    Keys are unit vectors; η ∈ [0, eta_scale); α ∈ [alpha_low, 1); β ∈ [0, 1) when ``momentum``.
    Initial weights are normal with std ``w_scale`` (``mlp_scale`` for the MLP memory, if given).
    """
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dt) * scale).requires_grad_(requires_grad)

    def uniform(low=0.0, high=1.0):
        return (low + (high - low) * torch.rand(batch, heads, length, generator=g, dtype=dt)).requires_grad_(requires_grad)

    if kind == "linear":
        init = {"W": rnd(heads, dim, dim, scale=w_scale)}
    else:
        scale = w_scale if mlp_scale is None else mlp_scale
        rows = 2 * hidden if kind == "swiglu" else hidden  # swiglu's W2 stacks [W_gate; W_up]
        init = {"W1": rnd(heads, dim, hidden, scale=scale), "W2": rnd(heads, rows, dim, scale=scale)}
    q, v = rnd(batch, heads, length, dim), rnd(batch, heads, length, dim, scale=v_scale)
    k = torch.nn.functional.normalize(torch.randn(batch, heads, length, dim, generator=g, dtype=dt), dim=-1)
    eta, alpha, beta = uniform(high=eta_scale), uniform(low=alpha_low), uniform()
    return init, q, k.requires_grad_(requires_grad), v, eta, alpha, (beta if momentum else None)


@pytest.fixture
def memory_inputs():
    """``make(kind, length, momentum, seed=0, **sizes_and_scales)``: float64 inputs of one memory call
    (initial weights, q, k, v, η, α, β or None), for fast-path-against-reference tests."""
    return _memory_inputs
