"""The command line: end to end on a tiny corpus, and one clear line for every user error."""

import json
from pathlib import Path

import pytest
import torch

from nestlearn.cli import main

TINY = ["--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
        "--set", "model.max_seq_len=32", "--set", "train.seq_len=32", "--set", "train.batch_size=4",
        "--set", "train.steps=6", "--set", "train.eval_every=3", "--set", "train.eval_tokens=256",
        "--set", "train.warmup_steps=1", "--set", "train.sample_tokens=8", "--no-progress"]


def run_cli(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_eval_generate_info(tmp_path, tiny_text, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--data", tiny_text, "--out", run, *TINY)
    assert code == 0 and "bits per byte" in out and (run / "report.md").exists()
    code, out, _ = run_cli(capsys, "eval", run, "--split", "test", "--json")
    res = json.loads(out)
    assert code == 0 and res["split"] == "test" and 0 < res["bpb"] < 9
    code, out, _ = run_cli(capsys, "generate", run, "--prompt", "And God", "--tokens", 10, "--temperature", 0)
    assert code == 0 and out.startswith("And God") and len(out.rstrip("\n").encode()) >= len("And God")
    code, out, _ = run_cli(capsys, "info", run)
    assert code == 0 and json.loads(out)["step"] == 6
    code, out, _ = run_cli(capsys, "info")
    assert code == 0 and "transformer" in out


def test_resume_from_the_run_folder_alone(tmp_path, tiny_text, capsys):
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--data", tiny_text, "--out", run, *TINY, "--set", "train.stop_at=3")
    assert code == 0 and "continue with" in out
    code, out, _ = run_cli(capsys, "train", "--resume", run, "--no-progress")
    assert code == 0 and (run / "report.md").exists()


@pytest.mark.parametrize("args, message", [
    (["--set", "model.widht=3"], "error: model.widht: unknown key"),
    (["--set", "train.steps=many"], "error: train.steps: expected an integer"),
    (["--set", "model.d_model=-4"], "error: model.d_model: must be > 0"),
    (["--data", "/nonexistent/corpus.txt"], "error: data.source: path not found"),
    (["--set", "train.seq_len=64"], "error: train.seq_len"),
    (["--config", "/nonexistent.yaml"], "error: --config: file not found"),
])
def test_bad_input_is_one_line_without_traceback(tmp_path, tiny_text, capsys, args, message):
    base = ["train", "--data", tiny_text, "--out", tmp_path / "run", *TINY]
    code, out, err = run_cli(capsys, *base, *args)
    assert code == 2
    assert err.strip().startswith(message), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_empty_corpus_and_bad_checkpoints(tmp_path, tiny_text, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_cli(capsys, "train", "--data", empty, "--out", tmp_path / "r", *TINY)
    assert code == 2 and "no text found" in err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage" * 10)
    code, _, err = run_cli(capsys, "eval", corrupt)
    assert code == 2 and "corrupt or truncated" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "generate", tmp_path / "missing")
    assert code == 2 and "checkpoint not found" in err
    # A checkpoint whose tensors do not fit its config: a mismatched checkpoint.
    run = tmp_path / "run"
    run_cli(capsys, "train", "--data", tiny_text, "--out", run, *TINY)
    from nestlearn.train.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(run)
    tensors["model/embed.weight"] = torch.zeros(3, 3)
    save_checkpoint(run / "checkpoint.safetensors", tensors, meta)
    code, _, err = run_cli(capsys, "eval", run)
    assert code == 2 and "does not match the model" in err and "embed.weight" in err


def test_generate_with_a_prompt_longer_than_the_model(tmp_path, tiny_text, capsys):
    run = tmp_path / "run"
    run_cli(capsys, "train", "--data", tiny_text, "--out", run, *TINY)
    code, _, err = run_cli(capsys, "generate", run, "--prompt", "x" * 40, "--tokens", 2)
    assert code == 2 and "exceeds model.max_seq_len=32" in err


SHIPPED_CONFIGS = sorted([p.name for p in (Path(__file__).parent.parent / "configs").glob("*-tiny.yaml")]
                         + ["hope-formal.yaml"])


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_tiny_config_trains_from_the_cli(tmp_path, tiny_text, capsys, name):
    """Each model family's config trains on text from the CLI and lowers validation bits per byte."""
    config = Path(__file__).parent.parent / "configs" / name
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--config", config, "--data", tiny_text, "--out", run, "--no-progress",
                           "--set", "model.d_model=32", "--set", "model.n_layers=1", "--set", "train.steps=12",
                           "--set", "train.batch_size=4", "--set", "train.seq_len=64", "--set", "train.warmup_steps=2",
                           "--set", "train.eval_every=12", "--set", "train.eval_tokens=1024",
                           "--set", "train.sample_tokens=4")
    assert code == 0, err
    vals = [r["val_bpb"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_bpb" in r]
    assert vals[0] > 7.0 and vals[-1] < vals[0] - 1.0, vals
