"""A training run killed by SIGKILL at random moments, checkpoint writes included, resumes to the
same final weights as an uninterrupted run, and its folder keeps no temporary files.

Each attempt is a child forked from the test process (torch and nestlearn already imported, so a
restart costs milliseconds, not an interpreter start) that runs ``nestlearn train`` or
``nestlearn train --resume``; the parent kills it with SIGKILL either after a random delay or just
after it has started writing a checkpoint (the child reports each write through a pipe).
"""

import os
import random
import select
import signal
import sys
import time

import pytest
import torch

import nestlearn.train.checkpoint as checkpoint_module
import nestlearn.train.trainer  # noqa: F401  (imported before forking: a restart must not pay for it)
from nestlearn.cli import main
from nestlearn.train.checkpoint import load_checkpoint, remove_stale_temp_files

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

STEPS = 80
KILLS = 24
CONFIG = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
          "--set", "model.max_seq_len=16", "--set", "train.seq_len=16", "--set", "train.batch_size=2",
          "--set", f"train.steps={STEPS}", "--set", f"train.eval_every={STEPS}", "--set", "train.eval_tokens=64",
          "--set", "train.warmup_steps=2", "--set", "train.sample_tokens=0", "--set", "train.ckpt_every=1",
          "--set", "train.log_every=1", "--no-progress"]


def temp_files(run):
    return sorted(p.name for p in run.iterdir() if p.name.endswith(".tmp")) if run.exists() else []


def attempt(argv, kill_after_write=None, delay=0.0):
    """Run ``main(argv)`` in a forked child; SIGKILL it ``delay`` seconds after the start, or after the
    start of its ``kill_after_write``-th checkpoint write. Returns the exit code, or None if killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            # pytest's capture objects are shared with the parent: the child writes to nowhere.
            sys.stdout = sys.stderr = open(os.devnull, "w")
            real_save = checkpoint_module.save_file

            def reporting_save(*args, **kwargs):
                # The temporary file exists now; the pause stands for a slow disk, so that a kill
                # sent right after the report lands inside the write.
                os.write(write_end, b"w")
                time.sleep(0.004)
                return real_save(*args, **kwargs)

            checkpoint_module.save_file = reporting_save
            code = main(argv)
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        if kill_after_write is None:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and _exited(pid) is None:
                time.sleep(0.001)
        else:
            seen = 0
            while seen < kill_after_write:
                select.select([read_end], [], [], 5.0)
                chunk = os.read(read_end, 64)
                if not chunk:  # the child finished first
                    break
                seen += len(chunk)
            time.sleep(delay)
        finished = _exited(pid)
        if finished is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        return finished
    finally:
        os.close(read_end)


_reaped: dict[int, int] = {}


def _exited(pid):
    """The child's exit code if it has exited (reaping it), else None."""
    if pid in _reaped:
        return _reaped[pid]
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:
        return None
    _reaped[pid] = os.waitstatus_to_exitcode(status)
    return _reaped[pid]


def test_killed_runs_resume_to_the_weights_of_an_uninterrupted_run(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"".join(b"%d: In the beginning God created the heaven and the earth.\n" % i
                                for i in range(300)))
    reference, run = tmp_path / "reference", tmp_path / "run"
    start = time.monotonic()
    assert attempt(["train", "--data", str(corpus), "--out", str(reference), *CONFIG], delay=600) == 0
    # Random kills within twice an even share of the run: on average the kills leave half of it.
    span = 2 * (time.monotonic() - start) / KILLS

    rng = random.Random(0)
    kills, torn_writes = 0, set()
    while True:
        resume = (run / "checkpoint.safetensors").exists()
        argv = ["train", "--resume", str(run), "--no-progress"] if resume else \
            ["train", "--data", str(corpus), "--out", str(run), *CONFIG]
        if kills >= KILLS:
            code = attempt(argv, delay=600)
            assert code == 0
            break
        if kills % 2:
            code = attempt(argv, kill_after_write=rng.randint(1, 3), delay=rng.uniform(0, 0.006))
        else:
            code = attempt(argv, delay=rng.uniform(0.0, span))
        assert code in (None, 0), f"attempt {kills} exited with {code}"
        if code == 0:  # finished before the kill: the run is too short for this machine
            pytest.fail(f"the run finished after only {kills} kills; raise STEPS")
        kills += 1
        torn_writes.update(temp_files(run))  # each write has its own temporary name

    # Kills during checkpoint writes, counted by the temporary files they left (about half the kills).
    assert kills >= 20 and len(torn_writes) >= 5, (kills, torn_writes)
    assert temp_files(run) == [], "the resumed run removed the crashed writes' temporary files"
    final, meta = load_checkpoint(run)
    expected, expected_meta = load_checkpoint(reference)
    assert meta["step"] == expected_meta["step"] == STEPS
    assert final.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(final[name], tensor), name


def test_only_our_own_temporary_files_are_removed(tmp_path):
    ours = [".checkpoint.safetensors.abcd_123.tmp", ".checkpoint.safetensors.zz9zz9zz.tmp"]
    others = [".checkpoint.safetensors.tmp", ".checkpoint.safetensors.ABCD1234.tmp", ".state.st.abcd1234.tmp",
              "x.checkpoint.safetensors.abcd1234.tmp", ".checkpoint.safetensors.abcd1234.tmp.bak", "notes.tmp",
              "checkpoint.safetensors"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".checkpoint.safetensors.dir12345.tmp").mkdir()
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + [".checkpoint.safetensors.dir12345.tmp"])
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_saving_a_state_removes_the_leftovers_of_its_own_killed_writes(tmp_path):
    from nestlearn.models.lm import CausalLM, model_config_from_dict
    from nestlearn.stateful import save_state

    model = CausalLM(model_config_from_dict({"family": "transformer", "vocab_size": 8, "d_model": 8, "n_layers": 1,
                                             "n_heads": 2, "max_seq_len": 8}))
    (tmp_path / ".s.st.abcd1234.tmp").write_bytes(b"x")
    (tmp_path / ".other.st.abcd1234.tmp").write_bytes(b"x")
    save_state(tmp_path / "s.st", model, model.init_state(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.st.abcd1234.tmp", "s.st"]
