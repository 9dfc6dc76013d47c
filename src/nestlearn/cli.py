"""The ``nestlearn`` command: train | eval | generate | learn | bench | demo | info | convert.

User errors (a bad config value, a missing file, a corrupt checkpoint) print one line starting with
``error:`` and exit with status 2; there is no traceback for them.
"""

from __future__ import annotations

import argparse
import codecs
import json
import sys
from pathlib import Path

import torch

from nestlearn.errors import CheckpointError, ConfigError, NestlearnError, check_positive, check_range

# The main job: a byte-level Transformer++ on the built-in corpus, sized to finish in a few minutes
# on 2 CPU cores (docs/performance.md has the measured speed).
DEMO_CONFIG = {
    "model": {"family": "transformer", "d_model": 128, "n_layers": 4, "n_heads": 4, "max_seq_len": 128},
    "data": {"source": "kjv", "tokenizer": "byte"},
    "optim": {"name": "adamw", "lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
    "train": {"steps": 400, "batch_size": 32, "seq_len": 128, "warmup_steps": 50, "eval_every": 100,
              "eval_tokens": 32768, "ckpt_every": 100, "log_every": 10, "out_dir": "runs/demo"},
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument like every other user error: one ``error:`` line, status 2."""

    def error(self, message: str):
        raise NestlearnError(f"{self.prog}: {message} (see {self.prog} --help)")


def _utf8(flag: str, text: str) -> bytes:
    """``text`` as UTF-8; bytes that are not UTF-8 reach argv as lone surrogates, which are refused."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigError(flag, f"must be UTF-8 text; byte {ord(text[err.start]) & 0xFF:#04x} at position "
                          f"{err.start} is not") from None


def _device(flag: str, name: str) -> torch.device:
    """A torch device this machine has: 'cpu', 'cuda' or 'cuda:N' (the latter when CUDA is available)."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(flag, f"must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(flag, f"{name!r} asks for CUDA, which is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(flag, f"{name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="run config (sections model, data, optim, train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.d_model=128 (repeatable)")
    p.add_argument("--data", metavar="PATH", help="shortcut for --set data.source=PATH ('kjv', a file or folder, hf:NAME)")
    p.add_argument("--out", metavar="DIR", help="shortcut for --set train.out_dir=DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _shortcuts(args: argparse.Namespace) -> list[str]:
    extra = []
    # Paths stay strings: quoted, "--out 2024" is not the number 2024 and "--data ''" not null. An
    # empty value is passed on (and refused by the config), not mistaken for an absent option.
    if args.data is not None:
        extra.append(f"data.source={json.dumps(args.data)}")
    if args.out is not None:
        extra.append(f"train.out_dir={json.dumps(args.out)}")
    return extra + args.overrides


def _print_start(cfg, out: Path) -> None:
    from nestlearn.config import to_dict
    from nestlearn.switches import describe_switches, non_default_switches

    defaults = type(cfg.model)()
    changed = {k: v for k, v in to_dict(cfg.model).items() if getattr(defaults, k) != v}
    print(f"nestlearn: {cfg.model.family} {json.dumps(changed)} -> {out}", file=sys.stderr)
    print(describe_switches(non_default_switches(cfg.to_dict())), file=sys.stderr)


def _train(cfg, resume, allow, progress, banner: str | None = None) -> dict:
    from nestlearn.train import Trainer
    from nestlearn.train.distributed import shutdown

    # Under torchrun every process runs this; rank 0 alone prints, once the run has passed every
    # check (so a bad input prints its error line alone).
    try:
        trainer = Trainer(cfg, resume=resume, allow_config_change=allow, progress=progress)
        if trainer.dist.is_main:
            if banner:
                print(banner, file=sys.stderr)
            _print_start(trainer.cfg, trainer.out)
        try:
            return trainer.run()
        except KeyboardInterrupt:
            if trainer.dist.is_main:
                saved = "checkpoint saved" if trainer.saved_on_interrupt else "the last checkpoint is kept"
                print(f"\ninterrupted at step {trainer.step}; {saved}. Continue with: "
                      f"nestlearn train --resume {trainer.out}", file=sys.stderr)
            raise SystemExit(130) from None
    finally:
        shutdown()


def _print_result(result: dict, out: Path) -> None:
    from nestlearn.train.distributed import is_main_process

    if not is_main_process():
        return
    val = result.get("val", {})
    if "bpb" in val:
        print(f"step {result['step']}/{result['steps']}: validation {val['bpb']:.4f} bits per byte")
    if "sample" in result:
        print("--- sample ---\n" + result["sample"] + "\n--------------")
    if (out / "report.md").exists():
        print(f"report: {out / 'report.md'}")
    elif result["step"] < result["steps"]:
        print(f"stopped at step {result['step']}; continue with: nestlearn train --resume {out}")


def cmd_train(args: argparse.Namespace) -> None:
    from nestlearn.train.checkpoint import load_checkpoint
    from nestlearn.train.config import load_run_config, stored_run_config

    base = None
    overrides = _shortcuts(args)
    if args.resume and not args.config:
        _, meta = load_checkpoint(args.resume)
        base = meta.get("config")
        if not isinstance(base, dict):
            raise CheckpointError(f"{args.resume} holds no run config (a state file?); --resume takes a run folder "
                                  "or its checkpoint")
        base = stored_run_config(base)
        resume_dir = Path(args.resume) if Path(args.resume).is_dir() else Path(args.resume).parent
        # stop_at belongs to the invocation that set it, not to the run.
        overrides = [f"train.out_dir={json.dumps(str(resume_dir))}", "train.stop_at=0"] + overrides
    cfg = load_run_config(args.config, overrides, base=base)
    result = _train(cfg, args.resume, args.allow_config_change, not args.no_progress)
    _print_result(result, Path(cfg.train.out_dir))


def cmd_demo(args: argparse.Namespace) -> None:
    import copy

    from nestlearn.train.config import load_run_config, stored_run_config

    base = copy.deepcopy(DEMO_CONFIG)
    overrides = _shortcuts(args)
    cfg = load_run_config(args.config, overrides, base=base)
    out = Path(cfg.train.out_dir)
    if (out / "checkpoint.safetensors").exists():
        import shutil

        # The demo is a fresh run every time; a real run would be resumed instead.
        shutil.rmtree(out)
    banner = (f"nestlearn demo: training a {cfg.model.n_layers}-layer Transformer++ on the King James Bible "
              f"(bytes) for {cfg.train.steps} steps")
    result = _train(cfg, None, False, not args.no_progress, banner)
    _print_result(result, out)


def cmd_eval(args: argparse.Namespace) -> None:
    from nestlearn.data.corpus import DataConfig, load_corpus
    from nestlearn.eval.lm import evaluate_bpb
    from nestlearn.train.loading import load_model

    if args.seq_len is not None:
        check_positive("--seq-len", args.seq_len)
    check_positive("--batch-size", args.batch_size)
    model, tokenizer, meta = load_model(args.checkpoint, _device("--device", args.device))
    data = dict(meta["config"]["data"])
    if args.data is not None:
        data["source"] = args.data
    from nestlearn.config import from_dict

    corpus = load_corpus(from_dict(DataConfig, data, prefix="data"))
    ids = torch.from_numpy(tokenizer.encode(corpus.split(args.split)))
    seq_len = args.seq_len if args.seq_len is not None else meta["config"]["train"]["seq_len"]
    if model.config.bounded_context and seq_len > model.config.max_seq_len:
        raise NestlearnError(f"--seq-len {seq_len} exceeds model.max_seq_len={model.config.max_seq_len}")
    res = evaluate_bpb(model, ids, torch.from_numpy(tokenizer.token_bytes), seq_len, args.batch_size)
    res.update(split=args.split, checkpoint=str(args.checkpoint), step=meta["step"], seq_len=seq_len)
    print(json.dumps(res) if args.json else f"{args.split}: {res['bpb']:.4f} bits per byte "
          f"({res['tokens']:,} tokens, {res['bytes']:,} bytes, step {meta['step']})")


def cmd_generate(args: argparse.Namespace) -> None:
    from nestlearn.train.loading import load_model

    check_positive("--tokens", args.tokens)
    check_range("--seed", args.seed, 0, 2**63 - 1)
    prompt_bytes = _utf8("--prompt", args.prompt)
    device = _device("--device", args.device)
    model, tokenizer, _ = load_model(args.checkpoint, device)
    state = None
    if args.state:
        from nestlearn.stateful import load_state

        state, _ = load_state(args.state, model)
    prompt = torch.from_numpy(tokenizer.encode(prompt_bytes))[None].to(device)
    if prompt.shape[1] == 0:
        raise NestlearnError("--prompt must not be empty")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    ids, _ = model.generate(prompt, args.tokens, args.temperature, args.top_k, gen, state=state)
    print(tokenizer.decode(ids[0].tolist()))


def cmd_learn(args: argparse.Namespace) -> None:
    from nestlearn.stateful import learn, load_state, save_state
    from nestlearn.train.loading import load_model

    separator_bytes = None
    if args.separator is not None:
        raw = _utf8("--separator", args.separator)
        try:
            separator_bytes = codecs.escape_decode(raw)[0]
        except ValueError as err:
            raise ConfigError("--separator", f"{err} in {args.separator!r}; use Python escapes such as \\n, "
                              "\\t or \\x0c") from None
    text_path = Path(args.text)
    if not text_path.is_file():
        raise NestlearnError(f"--text: file not found: {text_path}")
    if Path(args.state).is_dir():
        raise ConfigError("--state", f"{args.state} is a folder; give the path of a state file")
    model, tokenizer, _ = load_model(args.checkpoint, _device("--device", args.device))
    state = None
    if Path(args.state).exists() and not args.fresh:
        state, _ = load_state(args.state, model)
    ids = torch.from_numpy(tokenizer.encode(text_path.read_bytes()))
    separator = None if separator_bytes is None else torch.from_numpy(tokenizer.encode(separator_bytes))
    policy = args.policy or ("separator" if separator is not None else "carry")
    state, stats = learn(model, ids, state, args.segment, policy, separator)
    save_state(args.state, model, state, {"text": str(text_path), **stats})
    print(f"read {stats['tokens']:,} tokens ({stats['documents']} document(s), policy {policy}) into {args.state}; "
          f"stream position {state.pos:,}; {stats['bits_per_token']:.3f} bits per token while reading")


def _parse_params(items: list[str], flag: str) -> dict:
    from nestlearn.config import parse_yaml

    params = {}
    for item in items:
        if "=" not in item:
            raise NestlearnError(f"{flag}: expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        params[key] = parse_yaml(raw)
    return params


def cmd_bench(args: argparse.Namespace) -> None:
    from nestlearn.data.synthetic import TASKS
    from nestlearn.eval.bench import BenchSpec, run_bench

    if args.task not in TASKS:
        raise NestlearnError(f"task: must be one of {', '.join(sorted(TASKS))}, got {args.task!r}")
    eval_name, eval_values = "", ()
    if args.eval:
        if "=" not in args.eval:
            raise NestlearnError(f"--eval: expected key=v1,v2,..., got {args.eval!r}")
        eval_name, raw = args.eval.split("=", 1)
        eval_values = tuple(_parse_params([f"v={v}"], "--eval")["v"] for v in raw.split(","))
    spec = BenchSpec(task=args.task, models=tuple(m for m in args.models.split(",") if m),
                     train_params=_parse_params(args.param, "--param"), eval_name=eval_name, eval_values=eval_values,
                     steps=args.steps, batch_size=args.batch_size, lr=args.lr, d_model=args.d_model,
                     n_layers=args.n_layers, test_size=args.test_size, seed=args.seed)
    out = Path(args.out or f"runs/bench-{args.task}")
    run_bench(spec, out, progress=not args.no_progress)
    print((out / "results.md").read_text(encoding="utf-8").split("\n\n![", 1)[0])
    print(f"results: {out / 'results.md'} (JSON: result.json, plot: bench.png)")


def cmd_info(args: argparse.Namespace) -> None:
    import nestlearn
    from nestlearn.models.lm import families

    if args.switches:
        from nestlearn.switches import registry_table

        print(registry_table())
        return
    if args.checkpoint:
        from nestlearn.train.checkpoint import load_checkpoint

        tensors, meta = load_checkpoint(args.checkpoint)
        meta.pop("optimizer", None)
        meta.pop("tokenizer_json", None)
        meta.pop("rng", None)
        print(json.dumps(meta, indent=1))
        return
    print(f"nestlearn {nestlearn.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    print("model families: " + ", ".join(sorted(families())))


def cmd_convert(args: argparse.Namespace) -> None:
    try:
        from nestlearn.hf.convert import convert
    except ImportError as err:
        raise NestlearnError(str(err)) from None

    to, path = convert(args.source, args.out, args.to)
    print(f"wrote {'Hugging Face folder' if to == 'hf' else 'nestlearn checkpoint'} {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nestlearn", description="Nested Learning models: train, evaluate, generate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a config")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN", help="continue a run from its folder or checkpoint")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume even if the config differs from the checkpoint's (recorded in the metadata)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="the main job: train a small model on the built-in corpus, evaluate, sample")
    _add_config_args(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("eval", help="bits per byte of a checkpoint on a split")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    p.add_argument("--data", help="evaluate on another corpus (default: the one it was trained on)")
    p.add_argument("--seq-len", type=int, help="window length (default: the training length)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a checkpoint")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--prompt", default="And God said")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--state", metavar="FILE", help="continue from a fast state written by 'nestlearn learn'")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("learn", help="read a text into the model's fast memories and save the state")
    p.add_argument("checkpoint", help="run folder or checkpoint file")
    p.add_argument("--text", required=True, metavar="FILE", help="the text to read")
    p.add_argument("--state", required=True, metavar="FILE",
                   help="state file: continued if it exists (unless --fresh), then overwritten")
    p.add_argument("--fresh", action="store_true", help="start from the initial state even if --state exists")
    p.add_argument("--policy", choices=("carry", "reset", "separator"),
                   help="when the state resets: never (carry, default), every segment, or at each --separator")
    p.add_argument("--separator", help=r"document separator, e.g. '\n\n' (implies --policy separator)")
    p.add_argument("--segment", type=int, default=512, help="tokens per forward pass")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("bench", help="compare model families on a synthetic task (MQAR, parity, NIAH, ...)")
    p.add_argument("task", help="task name, e.g. mqar, parity_check, formal_parity, selective_copying")
    p.add_argument("--models", default="transformer,gated_deltanet,titans", help="comma-separated model families")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="generator parameter of the training data, e.g. --param length=6 (repeatable)")
    p.add_argument("--eval", metavar="KEY=V1,V2", help="evaluate at several values of one parameter, e.g. length=6,12")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--test-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/bench-TASK)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="environment and model families, or a checkpoint's metadata")
    p.add_argument("checkpoint", nargs="?", help="run folder or checkpoint file")
    p.add_argument("--switches", action="store_true",
                   help="print the switch registry (D25): every switch, its default, values, paper reference and decision")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="nestlearn checkpoint -> Hugging Face folder, or back (needs nestlearn[hf])")
    p.add_argument("source", help="run folder or checkpoint file, or a Hugging Face folder written by convert")
    p.add_argument("out", help="output folder (to Hugging Face), or checkpoint file / run folder (to nestlearn)")
    p.add_argument("--to", choices=("hf", "nestlearn"),
                   help="direction (default: nestlearn if the source is a Hugging Face folder, else hf)")
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except NestlearnError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
