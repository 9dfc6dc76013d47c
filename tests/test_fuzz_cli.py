"""Bad input to every CLI command: one ``error:`` line naming the parameter, exit status 2, nothing written.

One tiny run folder (and the files derived from it: truncated checkpoints and state files, a binary
file, broken configs) is built once for the module; every row of ``CASES`` then runs ``main(argv)``
in-process from that workspace and checks that the workspace is byte for byte what it was before.
Placeholders in the argv are paths in the workspace (see ``workspace``). Strings with lone
surrogates (``\\udcff``) are what Python makes of argv bytes that are not UTF-8.
"""

import hashlib
import shutil
from pathlib import Path

import pytest

from nestlearn.cli import main
from nestlearn.stateful import STATE_KIND
from nestlearn.train.checkpoint import load_checkpoint, save_checkpoint

TINY = ["--set", "model.d_model=16", "--set", "model.n_layers=1", "--set", "model.n_heads=2",
        "--set", "model.max_seq_len=32", "--set", "train.seq_len=16", "--set", "train.batch_size=2",
        "--set", "train.steps=2", "--set", "train.eval_every=2", "--set", "train.eval_tokens=64",
        "--set", "train.warmup_steps=1", "--set", "train.sample_tokens=4", "--no-progress"]
NOT_UTF8 = "ab\udcff\udcfe"

# (argv, fragment of the error line). {run} is a finished run folder of a transformer with
# max_seq_len 32 and byte vocabulary; {new} is a path that does not exist (and must not afterwards).
CASES = [
    # -- no command, unknown command or flag
    ([], "the following arguments are required: command"),
    (["fly"], "invalid choice: 'fly'"),
    (["train", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["info", "{run}", "extra"], "unrecognized arguments: extra"),
    # -- train: config files
    (["train", "--config", "{new}.yaml"], "--config: file not found"),
    (["train", "--config", "{empty_yaml}"], "is empty; expected a mapping with sections"),
    (["train", "--config", "{comment_yaml}"], "is empty; expected a mapping with sections"),
    (["train", "--config", "{list_yaml}"], "must hold a mapping of sections, got list"),
    (["train", "--config", "{broken_yaml}"], "is not valid YAML"),
    (["train", "--config", "{binary}"], "is not UTF-8 text"),
    (["train", "--config", "{section_yaml}"], "rocket: unknown section"),
    (["train", "--config", "{scalar_section_yaml}"], "data: must be a mapping of fields, got 3"),
    # -- train: --set values (negative, zero, huge, wrong type, unknown)
    (["train", "--set", "model.d_model=-4"], "model.d_model: must be > 0, got -4"),
    (["train", "--set", "model.d_model=0"], "model.d_model: must be > 0, got 0"),
    (["train", "--set", "model.d_model=abc"], "model.d_model: expected an integer, got 'abc'"),
    (["train", "--set", "model.d_model=1.5"], "model.d_model: expected an integer, got 1.5"),
    (["train", "--set", "model.n_layers=-1"], "model.n_layers: must be > 0"),
    (["train", "--set", "model.family=rocket"], "model.family: must be one of"),
    (["train", "--set", "model.family=[1, 2]"], "model.family: must be one of"),
    (["train", "--set", "model.widht=3"], "model.widht: unknown key"),
    (["train", "--set", "model.family=gated_deltanet", "--set", "model.gate_form=both"],
     "model.gate_form: must be one of 'eq92', 'yang', got 'both'"),
    (["train", "--set", "model.family=titans", "--set", "model.gate_form=yang"],
     "model.gate_form: 'yang' needs model.rule='dgd'; with rule='gd' the only allowed value is 'eq92'"),
    (["train", "--set", "train.steps=0"], "train.steps: must be > 0, got 0"),
    (["train", "--set", "train.steps=-1"], "train.steps: must be > 0, got -1"),
    (["train", "--set", "train.steps=many"], "train.steps: expected an integer"),
    (["train", "--set", "train.batch_size=0"], "train.batch_size: must be > 0"),
    (["train", "--set", "train.seq_len=-5"], "train.seq_len: must be > 0"),
    (["train", "--data", "{text}", "--set", "train.seq_len=1000000", "--set", "model.family=gated_deltanet"],
     "train.seq_len=1000000 needs more than seq_len + 1"),
    (["train", "--data", "{text}", "--set", "train.seq_len=64"], "train.seq_len: is 64 but must be <= model.max_seq_len=32"),
    (["train", "--set", "train.seed=-1"], "train.seed: must lie in [0, "),
    (["train", "--set", "train.seed=100000000000000000000000000000"], "train.seed: must lie in [0, "),
    (["train", "--set", "train.grad_clip=-1"], "train.grad_clip: must be >= 0"),
    (["train", "--set", "train.log_every=0"], "train.log_every: must be > 0"),
    (["train", "--set", "train.eval_every=-3"], "train.eval_every: must be > 0"),
    (["train", "--set", "train.ckpt_every=0"], "train.ckpt_every: must be > 0"),
    (["train", "--set", "train.threads=-2"], "train.threads: must be >= 0"),
    (["train", "--set", "train.min_lr_ratio=2"], "train.min_lr_ratio: must lie in [0.0, 1.0]"),
    (["train", "--set", "train.stop_at=100"], "train.stop_at: must be <= train.steps"),
    (["train", "--set", "train.device=tpu"], "train.device: must be one of"),
    (["train", "--set", "train.distributed=mpi"], "train.distributed: must be one of"),
    (["train", "--set", "train.bf16=yes"], "train.bf16: expected true or false"),
    (["train", "--set", "optim.lr=-1"], "optim.lr"),
    (["train", "--set", "optim.lr=.nan"], "optim.lr"),
    (["train", "--set", "optim.lr=.inf"], "optim.lr"),
    (["train", "--set", "optim.name=sgd"], "optim.name: must be one of"),
    (["train", "--set", "data.tokenizer=words"], "data.tokenizer: must be one of"),
    (["train", "--set", "data.bpe_vocab_size=0"], "data.bpe_vocab_size: must be > 0"),
    (["train", "--set", "rocket.x=1"], "rocket: unknown section"),
    (["train", "--set", "no-equals-sign"], "--set: expected key=value"),
    (["train", "--set", "=3"], "--set: bad key"),
    (["train", "--set", "model.d_model.x=3"], "model.d_model: is a value, not a section"),
    (["train", "--set", "model.n_heads=3"], "model.n_heads"),
    # -- train: corpora
    (["train", "--data", "{new}"], "data.source: path not found"),
    (["train", "--data", ""], "data.source: must be 'kjv', a path, or hf:NAME"),
    (["train", "--out", ""], "train.out_dir: must be a folder path, got ''"),
    (["train", "--data", "{empty_txt}"], "no text found"),
    (["train", "--data", "{one_byte}"], "split has"),
    (["train", "--data", "{binary}"], "looks binary (a NUL byte at offset"),
    (["train", "--data", "{binary_dir}"], "looks binary (a NUL byte at offset"),
    # -- train: resume from missing, corrupt, truncated or foreign files
    (["train", "--resume", "{new}"], "checkpoint not found"),
    (["train", "--resume", "{garbage}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["train", "--resume", "{truncated_ckpt}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["train", "--resume", "{empty_file}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["train", "--resume", "{plain_safetensors}"], "is a safetensors file but not a nestlearn checkpoint"),
    (["train", "--resume", "{state}"], "holds no run config (a state file?)"),
    (["train", "--resume", "{run}", "--set", "model.d_model=64"], "was trained with a different config"),
    (["train", "--data", "{text}", "--out", "{run}"], "already holds a checkpoint"),
    # -- demo
    (["demo", "--set", "train.steps=0"], "train.steps: must be > 0"),
    (["demo", "--set", "model.n_layers=-1"], "model.n_layers: must be > 0"),
    (["demo", "--config", "{empty_yaml}"], "is empty"),
    (["demo", "--data", "{binary}"], "looks binary"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    # -- eval
    (["eval"], "the following arguments are required: checkpoint"),
    (["eval", "{new}"], "checkpoint not found"),
    (["eval", "{garbage}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["eval", "{truncated_ckpt}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["eval", "{empty_file}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["eval", "{state}"], "metadata has no model config"),
    (["eval", "{run}", "--seq-len", "-1"], "--seq-len: must be > 0, got -1"),
    (["eval", "{run}", "--seq-len", "0"], "--seq-len: must be > 0, got 0"),
    (["eval", "{run}", "--seq-len", "1000000"], "--seq-len 1000000 exceeds model.max_seq_len=32"),
    (["eval", "{run}", "--seq-len", "abc"], "argument --seq-len: invalid int value: 'abc'"),
    (["eval", "{run}", "--batch-size", "0"], "--batch-size: must be > 0, got 0"),
    (["eval", "{run}", "--batch-size", "-2"], "--batch-size: must be > 0, got -2"),
    (["eval", "{run}", "--batch-size", "1.5"], "argument --batch-size: invalid int value: '1.5'"),
    (["eval", "{run}", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
    (["eval", "{run}", "--data", "{new}"], "data.source: path not found"),
    (["eval", "{run}", "--data", "{binary}"], "looks binary"),
    (["eval", "{run}", "--data", "{empty_txt}"], "no text found"),
    (["eval", "{run}", "--data", ""], "data.source: must be 'kjv', a path, or hf:NAME"),
    (["eval", "{run}", "--device", "meta"], "--device: must be cpu, cuda or cuda:N, got 'meta'"),
    (["eval", "{run}", "--device", "tpu"], "--device: must be cpu, cuda or cuda:N, got 'tpu'"),
    (["eval", "{run}", "--device", "cuda:99"], "--device: 'cuda:99'"),
    # -- generate
    (["generate", "{new}"], "checkpoint not found"),
    (["generate", "{garbage}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["generate", "{truncated_ckpt}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["generate", "{run}", "--tokens", "-5"], "--tokens: must be > 0, got -5"),
    (["generate", "{run}", "--tokens", "0"], "--tokens: must be > 0, got 0"),
    (["generate", "{run}", "--tokens", "x"], "argument --tokens: invalid int value: 'x'"),
    (["generate", "{run}", "--top-k", "0"], "top_k: must lie in [1, 256] (the vocabulary), got 0"),
    (["generate", "{run}", "--top-k", "-3"], "top_k: must lie in [1, 256] (the vocabulary), got -3"),
    (["generate", "{run}", "--top-k", "100000"], "top_k: must lie in [1, 256] (the vocabulary), got 100000"),
    (["generate", "{run}", "--temperature", "-1"], "temperature: must be >= 0, got -1.0"),
    (["generate", "{run}", "--temperature", "nan"], "temperature: must be a finite number >= 0, got nan"),
    (["generate", "{run}", "--temperature", "inf"], "temperature: must be a finite number >= 0, got inf"),
    (["generate", "{run}", "--temperature", "hot"], "argument --temperature: invalid float value: 'hot'"),
    (["generate", "{run}", "--seed", "-1"], "--seed: must lie in [0, "),
    (["generate", "{run}", "--seed", "100000000000000000000000000"], "--seed: must lie in [0, "),
    (["generate", "{run}", "--prompt", ""], "--prompt must not be empty"),
    (["generate", "{run}", "--prompt", NOT_UTF8], "--prompt: must be UTF-8 text; byte 0xff at position 2"),
    (["generate", "{run}", "--prompt", "x" * 100], "exceeds model.max_seq_len=32"),
    (["generate", "{run}", "--state", "{new}"], "state file not found"),
    (["generate", "{run}", "--state", "{garbage}"], "is not a readable state file (corrupt or truncated?)"),
    (["generate", "{run}", "--state", "{truncated_state}"], "is not a readable state file (corrupt or truncated?)"),
    (["generate", "{run}", "--state", "{ckpt}"], "is not a nestlearn state file"),
    (["generate", "{run}", "--state", "{foreign_state}"], "was written by another model"),
    (["generate", "{run}", "--device", "gpu"], "--device: must be cpu, cuda or cuda:N, got 'gpu'"),
    # -- learn
    (["learn", "{run}", "--state", "{new}"], "the following arguments are required: --text"),
    (["learn", "{new}", "--text", "{notes}", "--state", "{new}.st"], "checkpoint not found"),
    (["learn", "{run}", "--text", "{new}", "--state", "{new}.st"], "--text: file not found"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--separator", "\\x"],
     "--separator: invalid \\x escape"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--separator", NOT_UTF8],
     "--separator: must be UTF-8 text"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--segment", "0"], "segment: must be > 0, got 0"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--segment", "-4"], "segment: must be > 0, got -4"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--policy", "forget"],
     "argument --policy: invalid choice: 'forget'"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--policy", "separator"],
     "separator: policy 'separator' needs a non-empty separator"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{run}"], "--state: "),
    (["learn", "{run}", "--text", "{notes}", "--state", "{garbage}"], "is not a readable state file"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{truncated_state}"], "is not a readable state file"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{ckpt}"], "is not a nestlearn state file"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{foreign_state}"], "was written by another model"),
    (["learn", "{run}", "--text", "{text}", "--state", "{new}.st"], "holds at most model.max_seq_len=32 tokens"),
    (["learn", "{run}", "--text", "{empty_txt}", "--state", "{new}.st"], "the text to learn is empty"),
    (["learn", "{run}", "--text", "{notes}", "--state", "{new}.st", "--device", "abacus"], "--device: must be"),
    # -- bench
    (["bench"], "the following arguments are required: task"),
    (["bench", "rocketry"], "task: must be one of"),
    (["bench", "mqar", "--steps", "0"], "--steps: must be > 0, got 0"),
    (["bench", "mqar", "--steps", "-1"], "--steps: must be > 0, got -1"),
    (["bench", "mqar", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (["bench", "mqar", "--batch-size", "0"], "--batch-size: must be > 0"),
    (["bench", "mqar", "--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["bench", "mqar", "--lr", "-0.1"], "--lr: must be a finite number > 0, got -0.1"),
    (["bench", "mqar", "--lr", "inf"], "--lr: must be a finite number > 0, got inf"),
    (["bench", "mqar", "--d-model", "0"], "--d-model: must be > 0"),
    (["bench", "mqar", "--n-layers", "-1"], "--n-layers: must be > 0"),
    (["bench", "mqar", "--test-size", "0"], "--test-size: must be > 0"),
    (["bench", "mqar", "--seed", "-1"], "--seed: must lie in [0, "),
    (["bench", "mqar", "--seed", "100000000000000000000000000"], "--seed: must lie in [0, "),
    (["bench", "mqar", "--models", "rocket"], "--models: unknown families ['rocket']"),
    (["bench", "mqar", "--models", ","], "--models: unknown families []"),
    (["bench", "mqar", "--param", "foo=1"], "mqar.foo: unknown parameter; allowed: seq_len"),
    (["bench", "mqar", "--param", "noequals"], "--param: expected key=value"),
    (["bench", "mqar", "--param", "seq_len=-3"], "seq_len: must be >= 2, got -3"),
    (["bench", "mqar", "--eval", "seq_len"], "--eval: expected key=v1,v2,..."),
    (["bench", "mqar", "--eval", "foo=1,2"], "mqar.foo: unknown parameter"),
    (["bench", "mqar", "--eval", "seq_len=64,-1"], "seq_len: must be >= 2, got -1"),
    # -- info
    (["info", "{new}"], "checkpoint not found"),
    (["info", "{garbage}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["info", "{truncated_ckpt}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["info", "{empty_file}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["info", "{notes}"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["info", "{plain_safetensors}"], "is a safetensors file but not a nestlearn checkpoint"),
    (["info", "{bad_json}"], "corrupt metadata"),
    (["info", "{list_meta}"], "corrupt metadata: expected a JSON object, got list"),
    (["eval", "{list_meta}"], "corrupt metadata: expected a JSON object, got list"),
    (["generate", "{no_tokenizer}"], "metadata has no tokenizer description"),
    (["learn", "{no_tokenizer}", "--text", "{notes}", "--state", "{new}.st"], "metadata has no tokenizer description"),
    (["train", "--resume", "{bad_json}"], "corrupt metadata"),
    # -- convert
    (["convert", "{new}", "{new}.out"], "checkpoint not found"),
    (["convert", "{garbage}", "{new}.out"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["convert", "{truncated_ckpt}", "{new}.out"], "is not a readable checkpoint (corrupt or truncated?)"),
    (["convert", "{run}", "{run}"], "already exists; choose another output path"),
    (["convert", "{run}", "{new}.out", "--to", "nestlearn"], "is not a Hugging Face nestlearn folder"),
    (["convert", "{run}", "{new}.out", "--to", "onnx"], "argument --to: invalid choice: 'onnx'"),
    (["convert", "{run}"], "the following arguments are required: out"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Paths of the workspace: a trained run and the bad files derived from it."""
    root = tmp_path_factory.mktemp("fuzz")
    text = root / "tiny.txt"
    text.write_bytes(b"In the beginning God created the heaven and the earth.\n" * 200)
    run = root / "run"
    assert main(["train", "--data", str(text), "--out", str(run), *TINY]) == 0
    notes = root / "notes.txt"
    notes.write_text("And God said\n")
    state = root / "state.st"
    assert main(["learn", str(run), "--text", str(notes), "--state", str(state)]) == 0
    ckpt = run / "checkpoint.safetensors"
    p = {"root": root, "run": run, "ckpt": ckpt, "text": text, "notes": notes, "state": state,
         "new": root / "does-not-exist"}

    def put(name, data):
        p[name.replace(".", "_")] = root / name
        (root / name).write_bytes(data)

    put("truncated_ckpt", ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    put("truncated_state", state.read_bytes()[: state.stat().st_size // 2])
    put("garbage", b"\x93garbage" * 64)
    put("empty_file", b"")
    put("empty.txt", b"")
    put("one_byte", b"a")
    put("binary", shutil.which("ls") and Path(shutil.which("ls")).read_bytes()[:65536] or b"\x7fELF\0\0\1" * 999)
    put("empty.yaml", b"")
    put("comment.yaml", b"# nothing but a comment\n")
    put("list.yaml", b"- model\n- train\n")
    put("broken.yaml", b"model: [d_model: 3\n")
    put("section.yaml", b"rocket: {fuel: 3}\n")
    put("scalar_section.yaml", b"data: 3\n")
    (root / "binary_dir").mkdir()
    (root / "binary_dir" / "a.txt").write_text("text " * 100)
    (root / "binary_dir" / "b.txt").write_bytes(b"\0\1\2" * 100)
    p["binary_dir"] = root / "binary_dir"
    tensors, meta = load_checkpoint(state, what="state file")
    p["foreign_state"] = save_checkpoint(root / "foreign.st", tensors, {**meta, "model_sha256": "0" * 64})
    from safetensors.torch import save_file
    import torch

    save_file({"w": torch.zeros(2)}, str(root / "plain.safetensors"))
    p["plain_safetensors"] = root / "plain.safetensors"
    for name, header in (("bad_json", "{not json"), ("list_meta", "[1, 2]")):
        save_file({"w": torch.zeros(2)}, str(root / f"{name}.safetensors"), metadata={"nestlearn": header})
        p[name] = root / f"{name}.safetensors"
    ckpt_tensors, ckpt_meta = load_checkpoint(ckpt)
    p["no_tokenizer"] = save_checkpoint(root / "no_tokenizer.safetensors", ckpt_tensors,
                                        {k: v for k, v in ckpt_meta.items() if k != "tokenizer"})
    assert meta["kind"] == STATE_KIND
    return p


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a hash of its content."""
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else "dir"
            for f in sorted(root.rglob("*"))}


def test_the_table_covers_every_command_with_at_least_100_inputs():
    assert len(CASES) >= 100
    commands = {argv[0] for argv, _ in CASES if argv}
    assert commands == {"train", "demo", "eval", "generate", "learn", "bench", "info", "convert", "fly"}


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(a)[:60] or "no-args" for a, _ in CASES])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(workspace, capsys, monkeypatch, argv, fragment):
    monkeypatch.chdir(workspace["root"])  # default output folders (runs/...) would land in the snapshot
    before = snapshot(workspace["root"])
    if argv[:1] in (["train"], ["demo"]):
        # Cheap settings and a fresh output folder first (the row's own options come later and win):
        # a row that wrongly passes trains a tiny model into {new}, which the snapshot then shows.
        argv = [argv[0], *TINY, "--out", "{new}", *argv[1:]]
    argv = [a.format(**workspace) for a in argv]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert snapshot(workspace["root"]) == before
