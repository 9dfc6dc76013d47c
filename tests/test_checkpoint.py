import pytest
import torch

from nestlearn.errors import CheckpointError
from nestlearn.train import checkpoint as ck


def test_flatten_round_trip_of_an_optimizer_state():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    tensors = {}
    tree = ck.flatten(opt.state_dict(), "optim", tensors)
    restored = ck.unflatten(tree, tensors)
    original = opt.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for key, state in original["state"].items():
        for name, value in state.items():
            assert torch.equal(restored["state"][key][name], value)


def test_save_and_load(tmp_path):
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {"w": torch.arange(6.0).view(2, 3)}, {"step": 7})
    tensors, meta = ck.load_checkpoint(path)
    assert meta == {"step": 7} and torch.equal(tensors["w"], torch.arange(6.0).view(2, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 1})

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"w": torch.ones(3)}, {"step": 2})
    tensors, meta = ck.load_checkpoint(path)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"], "no temporary file may be left behind"


def test_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "missing.safetensors")
    path = tmp_path / "c.safetensors"
    ck.save_checkpoint(path, {"w": torch.zeros(1000)}, {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ck.load_checkpoint(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ck.load_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a nestlearn checkpoint"):
        ck.load_checkpoint(path)


def test_a_weights_only_checkpoint_is_refused_for_resume(tmp_path, tiny_text):
    from nestlearn.train import Trainer
    from nestlearn.train.config import load_run_config

    ck.save_checkpoint(tmp_path / "weights.safetensors", {"w": torch.zeros(2)}, {"config": {}, "step": 3})
    cfg = load_run_config(None, [f"data.source={tiny_text}", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.raises(CheckpointError, match="model weights only"):
        Trainer(cfg, resume=tmp_path / "weights.safetensors", progress=False)
