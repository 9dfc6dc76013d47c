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
