"""lm-evaluation-harness plugin: offline tasks, and the native model's numbers through lm-eval's API."""

import json
import math
import sys
from importlib.metadata import entry_points

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model, model_registry
from lm_eval.tasks import TaskManager

from nestlearn.data.kjv import kjv_splits
from nestlearn.errors import ConfigError
from nestlearn.eval.lm import evaluate_bpb
from nestlearn.lmeval import TASKS_DIR, NestlearnLM
from nestlearn.lmeval.__main__ import main as lmeval_main
from nestlearn.lmeval.data import (
    kjv_book_docs,
    kjv_cloze_docs,
    stdlib_code_docs,
    stdlib_split_of,
)
from nestlearn.train import Trainer, load_run_config


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> run folder of a tiny byte-level model after a few training steps (context 128 bytes)."""
    root = tmp_path_factory.mktemp("lmeval")
    text = root / "tiny.txt"
    text.write_bytes(kjv_splits()["train"][:20_000])
    runs = {}
    for name, family, steps, extra in (("transformer", "transformer", 20, ["model.n_heads=2"]),
                                       ("gated_deltanet", "gated_deltanet", 20, []),
                                       ("bpe", "gated_deltanet", 0, ["data.tokenizer=bpe", "data.bpe_vocab_size=300"])):
        cfg = load_run_config(None, [f"data.source={text}", f"model.family={family}", "model.d_model=32",
                                     "model.n_layers=1", "model.max_seq_len=128", "train.seq_len=16",
                                     "train.batch_size=4", "train.steps=20", "optim.lr=0.01",
                                     f"train.out_dir={root / name}", *extra])
        trainer = Trainer(cfg, progress=False)
        for _ in range(steps):
            trainer.train_step()
        trainer.save()
        runs[name] = trainer.out
    return runs


def _request(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def _ids(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def _native_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) for every t, one forward pass."""
    with torch.no_grad():
        logp = model(ids[None, :-1]).logits.float().log_softmax(dim=-1)[0]
    return logp.gather(-1, ids[1:, None])[:, 0]


def test_rolling_bpb_equals_nestlearn_eval_and_cloze_scores_are_native(checkpoints, tmp_path, capsys):
    import datasets

    from nestlearn.cli import main as nestlearn_main

    run = checkpoints["transformer"]
    results = lm_eval.simple_evaluate(
        model="nestlearn", model_args={"path": str(run)}, tasks=["nestlearn_kjv_bpb", "nestlearn_kjv_cloze"],
        task_manager=TaskManager(include_path=str(TASKS_DIR), include_defaults=False),
        samples={"nestlearn_kjv_bpb": [0], "nestlearn_kjv_cloze": list(range(6))}, bootstrap_iters=0)
    capsys.readouterr()
    book = results["samples"]["nestlearn_kjv_bpb"][0]["doc"]
    assert book["name"] == "Esther"
    # `nestlearn eval` on a corpus whose test split is the stream "\n" + book (the plugin's prefix).
    folder = tmp_path / "corpus"
    datasets.DatasetDict({split: datasets.Dataset.from_list([{"text": text}]) for split, text in
                          (("train", "filler text"), ("validation", "filler text"), ("test", "\n" + book["text"]))}
                         ).save_to_disk(str(folder))
    assert nestlearn_main(["eval", str(run), "--data", str(folder), "--split", "test", "--json"]) == 0
    native = json.loads(capsys.readouterr().out)
    assert native["bytes"] == len(book["text"].encode("utf-8"))
    assert results["results"]["nestlearn_kjv_bpb"]["bits_per_byte,none"] == pytest.approx(native["bpb"], rel=1e-6)

    model = NestlearnLM(path=str(run)).model
    cloze = results["samples"]["nestlearn_kjv_cloze"]
    compared = 0
    for sample in cloze:
        doc = sample["doc"]
        lls = [resp[0][0] for resp in sample["resps"]]
        for choice, ll in zip(doc["choices"], lls):
            ids = _ids("\n" + doc["context"] + " " + choice)[-129:]  # the last max_seq_len + 1 bytes
            n = len(choice.encode("utf-8")) + 1
            if n <= 128:  # longer endings are scored in spans (test_bounded_model_scores_long_inputs...)
                compared += 1
                assert ll == pytest.approx(_native_logprobs(model, ids)[-n:].sum().item(), rel=1e-5, abs=1e-4)
        assert sample["acc"] == float(max(range(len(lls)), key=lls.__getitem__) == doc["label"])
    assert compared >= 20
    acc = results["results"]["nestlearn_kjv_cloze"]["acc,none"]
    assert acc == pytest.approx(sum(s["acc"] for s in cloze) / len(cloze))


@pytest.mark.parametrize("family", ["transformer", "gated_deltanet"])
def test_loglikelihood_is_the_sum_of_native_log_probs(checkpoints, family):
    lm = NestlearnLM(path=str(checkpoints[family]), batch_size=3)
    prompt = _ids("\nAnd the")
    greedy = lm.tokenizer.decode(lm.model.generate(prompt[None], 6, temperature=0)[0][0, len(prompt):].tolist())
    pairs = [("And the", greedy), ("", "In the beginning"), ("And God said,", " Let there be light"),
             ("x", "y"), ("And it came to pass", " that")]
    results = lm.loglikelihood([_request("loglikelihood", c, t) for c, t in pairs])
    for (context, continuation), (ll, is_greedy) in zip(pairs, results):
        ids = _ids("\n" + context + continuation)
        logp = _native_logprobs(lm.model, ids)[-len(continuation.encode("utf-8")):]
        assert ll == pytest.approx(logp.sum().item(), rel=1e-5, abs=1e-4), (context, continuation)
        with torch.no_grad():
            argmax = lm.model(ids[None, :-1]).logits[0, -len(continuation):].argmax(dim=-1)
        assert is_greedy == bool((argmax == ids[-len(continuation):]).all())
    assert results[0][1] is True
    alone = [lm.loglikelihood([_request("loglikelihood", c, t)])[0][0] for c, t in pairs]
    assert [r[0] for r in results] == pytest.approx(alone, rel=1e-5)


def test_bounded_model_scores_long_inputs_within_its_window(checkpoints):
    lm = NestlearnLM(path=str(checkpoints["transformer"]))
    verses = kjv_splits()["test"].decode("utf-8").splitlines()
    context, continuation = verses[0] + "\n" + verses[1], " Speak"
    assert len(context) > 128
    ll, _ = lm.loglikelihood([_request("loglikelihood", context, continuation)])[0]
    ids = _ids("\n" + context + continuation)[-129:]  # max_seq_len + 1 tokens
    assert ll == pytest.approx(_native_logprobs(lm.model, ids)[-6:].sum().item(), rel=1e-5)
    long = " " + verses[2] + "\n" + verses[3]
    assert len(long) > 128
    ll_long, _ = lm.loglikelihood([_request("loglikelihood", "", long)])[0]
    # Spans of max_seq_len targets, each read with the max_seq_len tokens before its last target.
    ids, spans = _ids("\n" + long), 0.0
    for a in range(1, len(ids), 128):
        b = min(a + 128, len(ids))
        start = max(0, b - 129)
        spans += _native_logprobs(lm.model, ids[start:b])[a - 1 - start:].sum().item()
    assert ll_long == pytest.approx(spans, rel=1e-5)


def test_rolling_carries_the_recurrent_state_through_the_document(checkpoints):
    run = checkpoints["gated_deltanet"]
    text = kjv_splits()["test"][:700].decode("utf-8")
    carried = NestlearnLM(path=str(run), seq_len=8)
    assert carried.carry_state
    ids = _ids("\n" + text)
    one_pass = _native_logprobs(carried.model, ids).sum().item()
    assert carried.loglikelihood_rolling([_request("loglikelihood_rolling", text)])[0] == pytest.approx(one_pass, rel=1e-5)
    reset = NestlearnLM(path=str(run), seq_len=8, carry_state=False)
    windows = evaluate_bpb(reset.model, ids, torch.ones(256, dtype=torch.long), seq_len=8)
    ll = reset.loglikelihood_rolling([_request("loglikelihood_rolling", text), _request("loglikelihood_rolling", "")])
    assert ll[0] == pytest.approx(-windows["loss"] * windows["tokens"], rel=1e-6)
    assert ll[1] == 0.0
    assert abs(ll[0] - one_pass) > 1e-3  # resetting every 8 bytes forgets


def test_bpe_scores_count_the_bytes_of_the_text(checkpoints):
    lm = NestlearnLM(path=str(checkpoints["bpe"]), carry_state=False)
    assert lm.tokenizer.kind == "bpe"
    text = kjv_splits()["test"][:500].decode("utf-8")
    ids = torch.from_numpy(lm.tokenizer.encode(("\n" + text).encode("utf-8")))
    assert ids.tolist() == lm.prefix_ids + lm._encode(text)  # BPE encodes line by line
    token_bytes = torch.from_numpy(lm.tokenizer.token_bytes)
    native = evaluate_bpb(lm.model, ids, token_bytes, seq_len=16)
    ll = lm.loglikelihood_rolling([_request("loglikelihood_rolling", text)])[0]
    assert native["bytes"] == len(text.encode("utf-8"))
    assert -ll / (math.log(2) * len(text.encode("utf-8"))) == pytest.approx(native["bpb"], rel=1e-6)
    context, continuation = "And the king said unto Esther", " the queen"
    ctx, cont = lm._encode_pair(context, continuation)
    assert ctx + cont == lm._encode("\n" + context + continuation)
    ll, _ = lm.loglikelihood([_request("loglikelihood", context, continuation)])[0]
    whole = torch.tensor(ctx + cont)
    assert ll == pytest.approx(_native_logprobs(lm.model, whole)[-len(cont):].sum().item(), rel=1e-5)


@pytest.mark.parametrize("family", ["transformer", "gated_deltanet"])
def test_generate_until_matches_native_generate(checkpoints, family):
    lm = NestlearnLM(path=str(checkpoints[family]), seed=3)
    context = kjv_splits()["test"][:120].decode("utf-8")
    prompt = _ids("\n" + context)[None]
    # 100 tokens after a 121-token prompt slide the transformer's 128-token window twice.
    native = lm.model.generate(prompt, 100, temperature=0)[0][0, prompt.shape[1]:].tolist()
    full = lm.generate_until([_request("generate_until", context, {"until": [], "max_gen_toks": 100})])[0]
    assert full == lm.tokenizer.decode(native)
    stop = full[20:22]
    cut = lm.generate_until([_request("generate_until", context, {"until": [stop], "max_gen_toks": 100})])[0]
    assert cut == full[:full.find(stop)]
    sampled = lm.generate_until([_request("generate_until", context, {"do_sample": True, "temperature": 0.8,
                                                                       "top_k": 20, "max_gen_toks": 40})])[0]
    gen = torch.Generator().manual_seed(3)
    native = lm.model.generate(prompt, 40, temperature=0.8, top_k=20, generator=gen)[0][0, prompt.shape[1]:]
    assert sampled == lm.tokenizer.decode(native.tolist())


def test_bad_arguments_name_the_parameter(checkpoints):
    transformer, recurrent = str(checkpoints["transformer"]), str(checkpoints["gated_deltanet"])
    with pytest.raises(ConfigError, match="carry_state"):
        NestlearnLM(path=transformer, carry_state=True)
    with pytest.raises(ConfigError, match="seq_len"):
        NestlearnLM(path=transformer, seq_len=256)
    with pytest.raises(ConfigError, match="batch_size"):
        NestlearnLM(path=recurrent, batch_size="auto")
    with pytest.raises(ConfigError, match="prefix"):
        NestlearnLM(path=recurrent, prefix="")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            NestlearnLM(path=recurrent, device="cuda:0")
    lm = NestlearnLM(path=recurrent)
    with pytest.raises(ConfigError, match="gen_kwargs"):
        lm.generate_until([_request("generate_until", "x", {"num_beams": 4})])
    with pytest.raises(ConfigError, match="top_p"):
        lm.generate_until([_request("generate_until", "x", {"top_p": 0.9})])


def test_registered_by_entry_point_and_on_import(monkeypatch):
    (point,) = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "nestlearn"]
    assert point.load() is NestlearnLM
    assert get_model("nestlearn") is NestlearnLM
    assert "hf" in model_registry  # lm-eval's own backends stay registered
    seen = []
    monkeypatch.setattr(sys, "argv", ["python"])
    monkeypatch.setattr("lm_eval.__main__.cli_evaluate", lambda: seen.append(list(sys.argv)))
    lmeval_main(["--model", "nestlearn", "--tasks", "nestlearn_kjv_cloze"])
    lmeval_main(["ls", "tasks", "--include_path", "mine"])
    assert seen == [["lm-eval", "--model", "nestlearn", "--tasks", "nestlearn_kjv_cloze", "--include_path", str(TASKS_DIR)],
                    ["lm-eval", "ls", "tasks", "--include_path", "mine"]]


def test_task_documents_come_from_the_fixed_splits(tmp_path):
    assert "".join(d["text"] for d in kjv_book_docs("test")).encode("utf-8") == kjv_splits()["test"]
    docs = kjv_cloze_docs("test", n_docs=20, seed=1)
    assert docs == kjv_cloze_docs("test", n_docs=20, seed=1) != kjv_cloze_docs("test", n_docs=20, seed=2)
    verses = set(kjv_splits()["test"].decode("utf-8").splitlines())
    for doc in docs:
        assert len(doc["choices"]) == len(set(doc["choices"])) == 4
        assert doc["context"].split("\n")[1] + " " + doc["choices"][doc["label"]] in verses
    with pytest.raises(ConfigError, match="n_docs"):
        kjv_cloze_docs("test", n_docs=10**6)
    for rel in ("a.py", "pkg/b.py", "pkg/test/c.py", "__pycache__/d.py", "e.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(f"# {rel}\n")
    for split in ("validation", "test"):
        expected = [r for r in ("a.py", "pkg/b.py") if stdlib_split_of(r) == split]
        if expected:
            assert [d["name"] for d in stdlib_code_docs(split, tmp_path)] == expected
