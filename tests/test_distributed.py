"""Two gloo processes on the CPU (torchrun) against one process with the same global batch.

One torchrun launch runs every multi-process job of this file in turn (tests/distributed_worker.py);
each test then runs its single-process reference here and compares.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nestlearn.errors import ConfigError
from nestlearn.train import Trainer, load_model, load_run_config
from nestlearn.train.distributed import DistContext, check_optimizer, local_rows
from nestlearn.train.runlog import read_metrics

WORKER = Path(__file__).parent / "distributed_worker.py"


def overrides(corpus, out, family="transformer", *extra):
    # Adam's first steps move every weight by about ±lr whatever its gradient's size, so a
    # float-level difference in a near-zero gradient can flip a step; eps = 1e-3 keeps the update
    # proportional to tiny gradients, and float-level differences in the weights.
    heads = ["model.n_heads=2"] if family != "hope" else []
    return [f"data.source={corpus}", f"model.family={family}", "model.d_model=32", "model.n_layers=2",
            "model.max_seq_len=32", *heads, "train.seq_len=32", "train.batch_size=2", "train.steps=3",
            "train.warmup_steps=2", "train.log_every=1", "train.eval_every=100", "train.eval_tokens=64",
            "train.ckpt_every=100", "train.sample_tokens=4", "optim.lr=0.003", "optim.eps=0.001",
            f"train.out_dir={out}", *extra]


JOBS = {  # name: (family, extra overrides); every job runs on 2 processes with batch_size 2
    "ddp_transformer": ("transformer", ["train.grad_accum=2"]),
    "ddp_hope": ("hope", ["train.steps=2"]),
    "ddp_bf16": ("transformer", ["train.bf16=true", "train.steps=2"]),
    "fsdp_muon": ("transformer", ["train.distributed=fsdp", "optim.name=muon", "optim.adamw_lr=0.003",
                                  "train.activation_checkpointing=true"]),
    "fsdp_m3_straight": ("transformer", ["train.distributed=fsdp", "optim.name=m3", "optim.slow_period=2",
                                         "train.steps=4"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs every job on 2 processes; returns (folder, corpus path, torchrun's output)."""
    from nestlearn.data.kjv import kjv_splits

    root = tmp_path_factory.mktemp("distributed")
    corpus = root / "corpus.txt"
    corpus.write_bytes(kjv_splits()["train"][:20_000])
    jobs = [{"overrides": overrides(corpus, root / name, family, *extra)} for name, (family, extra) in JOBS.items()]
    halves = root / "fsdp_m3_halves"
    m3 = overrides(corpus, halves, "transformer", *JOBS["fsdp_m3_straight"][1])
    jobs += [{"overrides": m3 + ["train.stop_at=2"]}, {"overrides": m3, "resume": str(halves)}]
    cli = ["train", "--no-progress", *[a for o in overrides(corpus, root / "cli", "transformer", "train.steps=1")
                                       for a in ("--set", o)]]
    jobs.append({"cli": cli})
    (root / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(WORKER), str(root / "jobs.json")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    rank_errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("[rank") and "Error" in ln]
    assert proc.returncode == 0, "\n".join(rank_errors) or proc.stderr[-3000:]
    return root, corpus, proc.stdout


def single(runs, name, family, *extra):
    """The one-process reference: batch_size 4 = 2 processes × 2."""
    root, corpus, _ = runs
    out = root / f"single_{name}"
    Trainer(load_run_config(None, overrides(corpus, out, family, *extra, "train.batch_size=4")), progress=False).run()
    return out


def losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def assert_same_run(a, b, rtol):
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 0
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=rtol, atol=0)
    model_a, _, meta_a = load_model(a)
    model_b, _, _ = load_model(b)
    for (name, pa), pb in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=rtol, msg=name)
    return meta_a


@pytest.mark.parametrize("name", ["ddp_transformer", "ddp_hope"])
def test_two_ddp_processes_give_the_losses_of_one_with_the_same_global_batch(runs, name):
    family, extra = JOBS[name]
    meta = assert_same_run(runs[0] / name, single(runs, name, family, *extra), rtol=1e-5)
    assert meta["world_size"] == 2 and meta["distributed"] == "ddp"
    assert meta["tokens_seen"] == meta["step"] * 2 * 2 * 32 * (2 if name == "ddp_transformer" else 1)


def test_bf16_autocast_under_ddp_matches_one_process(runs):
    family, extra = JOBS["ddp_bf16"]
    assert_same_run(runs[0] / "ddp_bf16", single(runs, "ddp_bf16", family, *extra), rtol=2e-2)


def test_muon_under_fsdp_equals_muon_in_one_process(runs):
    # The FSDP run also recomputes activations per block, which must not change the result.
    family, extra = JOBS["fsdp_muon"]
    reference = single(runs, "fsdp_muon", family, *[e for e in extra if "activation" not in e])
    meta = assert_same_run(runs[0] / "fsdp_muon", reference, rtol=1e-5)
    assert meta["distributed"] == "fsdp"


def test_fsdp_save_and_resume_continues_like_an_uninterrupted_run(runs):
    root = runs[0]
    straight, halves = root / "fsdp_m3_straight", root / "fsdp_m3_halves"
    assert len(losses(halves)) == 4
    assert losses(straight) == losses(halves), "2 steps + resume + 2 steps must match 4 steps under FSDP"
    a, _, _ = load_model(straight)
    b, _, _ = load_model(halves)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_torchrun_cli_prints_once_and_only_rank_0_writes(runs):
    root, _, stdout = runs
    assert stdout.count("step 1/1: validation") == 1, stdout
    assert (root / "cli" / "report.md").exists()
    assert not list(root.glob("**/.checkpoint*.tmp")), "no temporary checkpoint files left behind"


def test_each_rank_keeps_its_own_rows_of_the_global_batch():
    batch = torch.arange(12).reshape(6, 2)
    parts = [local_rows(batch, DistContext(rank=r, world_size=3, mode="ddp")) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    assert torch.equal(parts[1], batch[2:4])


def test_optimizers_that_cannot_run_distributed_are_refused():
    with pytest.raises(ConfigError, match="optim.name.*dgd"):
        check_optimizer(DistContext(world_size=2, mode="ddp"), "dgd")
    with pytest.raises(ConfigError, match="optim.name.*adamw, muon, m3"):
        check_optimizer(DistContext(world_size=2, mode="fsdp"), "dmgd")
    check_optimizer(DistContext(world_size=2, mode="fsdp"), "m3")
    check_optimizer(DistContext(), "dgd")


def test_fsdp_refuses_the_lss_sequence_driver():
    from nestlearn.config import from_dict
    from nestlearn.models import CausalLM
    from nestlearn.models.hope import HopeConfig
    from nestlearn.train.distributed import wrap_model

    cfg = from_dict(HopeConfig, {"vocab_size": 64, "d_model": 32, "n_layers": 1, "max_seq_len": 32,
                                 "cms": {"chunk_sizes": [16, 8], "signal": "lss"}})
    with pytest.raises(ConfigError, match="train.distributed.*lss.*ddp"):
        wrap_model(CausalLM(cfg), DistContext(world_size=2, mode="fsdp"), torch.device("cpu"), 32)


def test_resume_on_another_number_of_processes_needs_permission(tmp_path, tiny_text):
    from nestlearn.errors import CheckpointError

    out = tmp_path / "run"
    Trainer(load_run_config(None, overrides(tiny_text, out, "transformer", "train.stop_at=1")), progress=False).run()
    meta_path = out / "checkpoint.safetensors"
    from nestlearn.train.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(meta_path)
    save_checkpoint(meta_path, tensors, {**meta, "world_size": 2})
    with pytest.raises(CheckpointError, match="2 process.*this run has 1"):
        Trainer(load_run_config(None, overrides(tiny_text, out, "transformer")), resume=out, progress=False)
    trainer = Trainer(load_run_config(None, overrides(tiny_text, out, "transformer")), resume=out,
                      allow_config_change=True, progress=False)
    assert trainer.overrides[-1]["changes"] == [["world_size", 2, 1]]
