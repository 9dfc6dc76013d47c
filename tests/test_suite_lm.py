"""The language-modelling section of the evidence suite: width matching, D13's decision rule, a micro run."""

from dataclasses import replace

from nestlearn.eval.suite.lm import (
    FULL,
    QUICK,
    best_rates,
    choose_cms_signal,
    hope_model,
    markdown,
    non_embedding_parameters,
    plan,
    run,
    summarise,
)
from nestlearn.models.lm import match_parameters, match_width

MODEL = {"family": "transformer", "d_model": 8, "n_layers": 1}  # a stored row's config (only read, never built)


def test_decision_rule_picks_lowest_bpb_unless_within_noise():
    clear = {"kv": {"mean": 2.0, "std": 0.01, "tok_s": 100}, "lss": {"mean": 2.2, "std": 0.01, "tok_s": 50},
             "optimizer": {"mean": 2.1, "std": 0.02, "tok_s": 500}}
    assert choose_cms_signal(clear)[0] == "kv"
    close = {**clear, "optimizer": {"mean": 2.005, "std": 0.02, "tok_s": 500}}
    choice, reason = choose_cms_signal(close)
    assert choice == "optimizer" and "faster" in reason
    assert choose_cms_signal({"kv": clear["kv"]})[0] == "kv"


def test_match_width_gives_the_nearest_count_on_the_grid():
    target = non_embedding_parameters(hope_model(QUICK))
    model = {"family": "transformer", "n_layers": 2, "max_seq_len": 64}
    d, count = match_width(model, target)
    assert count == non_embedding_parameters({**model, "d_model": d})
    for other in range(8, 2 * d, 8):  # transformer widths valid with 4 heads of even size
        assert abs(non_embedding_parameters({**model, "d_model": other}) - target) >= abs(count - target)


def test_every_family_matches_the_budgets_count_within_one_percent():
    # One hidden-width step of 4 moves Hope-Attention's count by 4,608 (three SwiGLU levels of width 64
    # in two blocks), so the nearest grid point can be 0.7 % away; the issue asks for 3 %.
    target = FULL.parameters
    for row in plan(FULL):
        if row.table == "models":
            assert abs(non_embedding_parameters(row.model) / target - 1) < 0.01, row.key
    # Hope reaches the count through its CMS hidden width, and its ablations build on that Hope.
    assert hope_model(FULL)["cms"]["hidden"] != 4 * hope_model(FULL)["d_model"]
    assert hope_model(FULL, use_cms=False)["cms"] == hope_model(FULL)["cms"]
    # The width grid alone leaves Titans 5 % short: the hidden width closes it.
    titans = {"family": "titans", "n_layers": 2, "max_seq_len": 512}
    assert abs(match_width(titans, target)[1] / target - 1) > 0.03
    model, count = match_parameters(titans, target)
    assert count == non_embedding_parameters(model) and model["ffn_hidden"] % 4 == 0


def test_plan_covers_models_ablations_and_signals():
    rows = plan(QUICK)
    keys = {(r.table, r.key) for r in rows}
    assert {("models", f) for f in ("transformer", "titans", "hope_attention", "hope")} <= keys
    assert {("signals", s) for s in ("kv", "lss", "optimizer")} <= keys
    assert ("ablations", "no_cms") in keys and ("ablations", "no_dgd") in keys


def test_micro_run_scores_every_model_and_writes_tables(tmp_path):
    budget = replace(QUICK, d_model=16, steps=2, warmup_steps=1, seq_len=16, batch_size=2, eval_tokens=256,
                     chunk_sizes=(8, 4), selfmod_chunks=(4, 8), threads=1)
    results = run(budget, tmp_path, tables=("models",), isolate=False)
    summary = summarise(results)
    assert set(summary["models"]) == {"transformer", "titans", "gated_deltanet", "hope_attention", "hope"}
    assert summary["models"]["transformer"]["carried"] is None
    assert 0 < summary["models"]["hope"]["carried"] < 9  # recurrent models are also scored with carried state
    for s in summary["models"].values():
        assert 0 < s["mean"] < 9 and s["tok_s"] > 0
    text = markdown(summary, budget, "cmd")
    assert "| Hope | 16 |" in text and "Transformer++" in text and "Gated DeltaNet" in text
    assert summary["models"]["hope"]["steps"] == 2 and summary["models"]["hope"]["nonfinite_steps"] == 0
    assert len(list((tmp_path / "cells").glob("models_*.json"))) == 5


def test_an_interrupted_run_resumes_without_retraining(tmp_path, monkeypatch):
    from nestlearn.eval.suite import lm

    budget = replace(QUICK, d_model=16, steps=1, warmup_steps=1, seq_len=16, batch_size=2, eval_tokens=64,
                     chunk_sizes=(8, 4), selfmod_chunks=(4, 8), threads=1)
    first = run(budget, tmp_path, tables=("models",), isolate=False)

    def fail(*args):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(lm, "train_row", fail)
    again = run(budget, tmp_path, tables=("models",), isolate=False)
    assert [r["result"]["bpb"] for r in again] == [r["result"]["bpb"] for r in first]


def test_a_row_whose_behaviour_changes_is_trained_again(tmp_path, monkeypatch):
    from nestlearn.eval.suite import lm

    budget = replace(QUICK, d_model=16, steps=1, warmup_steps=1, seq_len=16, batch_size=2, eval_tokens=64,
                     chunk_sizes=(8, 4), selfmod_chunks=(4, 8), threads=1)
    run(budget, tmp_path, tables=("models",), isolate=False)
    retrained = []
    real = lm.train_row
    monkeypatch.setattr(lm, "train_row", lambda row, *a: retrained.append(row["key"]) or real(row, *a))
    digest = lm.cell_digest
    monkeypatch.setattr(lm, "cell_digest", lambda row, *a: digest(row, *a) + ("x" if row["key"] == "titans" else ""))
    run(budget, tmp_path, tables=("models",), isolate=False)
    assert retrained == ["titans"]


def test_diverged_and_overflowed_rows_are_reported_not_averaged():
    def row(table, key, bpb, carried, diverged=None, seed=0, lr=None):
        return {"table": table, "key": key, "label": key, "seed": seed, "lr": lr, "model": MODEL,
                "result": {"bpb": bpb, "bpb_carried": carried, "diverged_at": diverged, "tok_s": 10.0,
                           "peak_rss_mb": 1.0, "parameters": 5, "d_model": 8, "switches": [], "recurrent": True,
                           "steps": 3 if diverged else 4, "nonfinite_steps": int(diverged is not None), "cpu_min": 0.5}}

    summary = summarise([row("models", "hope", 2.0, None, lr=3e-3), row("ablations", "no_dgd", None, None, diverged=3),
                         row("signals", "kv", 2.1, 2.0), row("signals", "lss", None, None, diverged=1)])
    assert summary["ablations"]["no_dgd"]["mean"] is None
    assert "diverged (step 3)" in summary["ablations"]["no_dgd"]["note"]
    assert summary["models"]["hope"]["note"] == "carried state overflowed"
    text = markdown(summary, QUICK, "cmd")
    assert "overflowed" in text and "training diverged (step 3)" in text
    assert "decision rule → `kv`" in text


def test_the_models_table_tunes_each_family_on_the_grid_and_reports_its_best_rate():
    rows = plan(FULL)
    first = [r for r in rows if r.table == "models"]
    assert {(r.key, r.lr) for r in first} == {(f, lr) for f in {r.key for r in first} for lr in FULL.lrs}
    assert {r.seed for r in first} == {FULL.seeds[0]}

    def result(key, lr, bpb, seed=0):
        return {"table": "models", "key": key, "label": key, "seed": seed, "lr": lr, "model": MODEL,
                "result": {"bpb": bpb, "bpb_carried": None, "diverged_at": None if bpb else 5, "tok_s": 1.0,
                           "peak_rss_mb": 1.0, "parameters": 5, "d_model": 8, "switches": [], "recurrent": False,
                           "steps": 10, "nonfinite_steps": 0 if bpb else 1, "cpu_min": 1.0}}

    grid = [result("hope", 1e-3, 2.3), result("hope", 3e-3, 2.1), result("hope", 6e-3, None)]
    assert best_rates(grid) == {"hope": 3e-3}
    second = [r for r in plan(FULL, {"hope": 3e-3}) if r.table == "models" and r.seed != FULL.seeds[0]]
    assert {(r.key, r.lr) for r in second} == {("hope", 3e-3)} and {r.seed for r in second} == set(FULL.seeds[1:])
    summary = summarise(grid + [result("hope", 3e-3, 2.2, seed=1), result("hope", 3e-3, 2.0, seed=2)])["models"]["hope"]
    assert summary["lr"] == 3e-3 and summary["seeds"] == [0, 1, 2] and abs(summary["mean"] - 2.1) < 1e-12
    assert summary["grid"] == {1e-3: 2.3, 3e-3: 2.1, 6e-3: None}
    assert summary["nonfinite_steps"] == 1 and summary["cpu_min"] == 5.0
    text = markdown({"models": {"hope": summary}}, FULL, "cmd")
    assert "| hope | 8 | 32 | 5 | 0.003 | 3 | 2.100 ± 0.100 |" in text and "2.300 / 2.100 / —" in text
    assert "end of the grid" not in text
    # The rate is chosen on the first seed alone: a worse later seed at the chosen rate does not move it.
    later = [result("hope", 3e-3, 2.4, seed=1), result("hope", 3e-3, 2.4, seed=2)]
    assert best_rates(grid + later) == {"hope": 3e-3} and summarise(grid + later)["models"]["hope"]["lr"] == 3e-3
    edge = summarise([result("titans", 1e-3, 2.3), result("titans", 3e-3, 2.1), result("titans", 6e-3, 2.0)])
    assert "Best rate at an end of the grid, which then may not bracket the family's best: titans (0.006)" in \
        markdown(edge, replace(FULL, lrs=(1e-3, 3e-3, 6e-3)), "cmd")


def test_stored_only_reports_the_finished_rows_and_trains_nothing(tmp_path, monkeypatch):
    from nestlearn.eval.suite import lm

    budget = replace(QUICK, d_model=16, steps=1, warmup_steps=1, seq_len=16, batch_size=2, eval_tokens=64,
                     chunk_sizes=(8, 4), selfmod_chunks=(4, 8), threads=1)
    run(budget, tmp_path, tables=("models",), isolate=False)
    for cell in (tmp_path / "cells").glob("models_hope_0_*.json"):
        cell.unlink()

    def refuse(*args):
        raise AssertionError("a row was trained")

    monkeypatch.setattr(lm, "train_row", refuse)
    rows = run(budget, tmp_path, tables=("models",), isolate=False, stored_only=True)
    assert sorted(r["key"] for r in rows) == ["gated_deltanet", "hope_attention", "titans", "transformer"]
    assert lm.unstored(budget, ("models",), rows) == 1  # Hope's row
    ablations = sum(r.table == "ablations" for r in lm.plan(budget, {}))
    assert ablations and lm.unstored(budget, ("models", "ablations"), rows) == 1 + ablations


def test_ablations_and_signals_train_at_hopes_chosen_rate(tmp_path, monkeypatch):
    later = [r for r in plan(FULL, {"hope": 1e-2, "titans": 3e-3}) if r.table in ("ablations", "signals")]
    assert later and {r.lr for r in later} == {1e-2}
    assert {r.lr for r in plan(FULL) if r.table == "ablations"} == {None}  # Hope's rate unknown: budget.lr

    # An ablations-only run reads Hope's rate from the stored grid and reports the models beside them.
    from nestlearn.eval.suite import lm

    budget = replace(QUICK, d_model=16, steps=1, warmup_steps=1, seq_len=16, batch_size=2, eval_tokens=64,
                     chunk_sizes=(8, 4), selfmod_chunks=(4, 8), threads=1, lrs=(1e-3, 3e-3), seeds=(0,))
    grid = run(budget, tmp_path, tables=("models",), isolate=False)
    chosen = best_rates(grid)["hope"]
    trained = []
    real = lm.train_row
    monkeypatch.setattr(lm, "train_row", lambda row, *a: trained.append(row) or real(row, *a))
    rows = run(replace(budget, ablation_seeds=(0,)), tmp_path, tables=("ablations",), isolate=False)
    assert trained and {r["table"] for r in trained} == {"ablations"} and {r["lr"] for r in trained} == {chosen}
    summary = summarise(rows)
    assert summary["ablations"]["no_cms"]["lr"] == chosen and summary["ablations"]["no_cms"]["grid"] == {}
    assert f"train at Hope's chosen rate (lr {chosen:g})" in markdown(summary, budget, "cmd")


def test_peak_memory_is_the_process_own_and_an_unmeasured_peak_prints_a_dash():
    from nestlearn.eval.suite.lm import peak_rss_mb

    assert 10 < peak_rss_mb() < 1e6
    row = {"table": "ablations", "key": "no_cms", "label": "w/o CMS", "seed": 0, "lr": None, "model": MODEL,
           "result": {"bpb": 2.0, "bpb_carried": 2.0, "diverged_at": None, "tok_s": 1.0, "peak_rss_mb": None,
                      "parameters": 5, "d_model": 8, "switches": [], "recurrent": True, "steps": 4,
                      "nonfinite_steps": 0, "cpu_min": 0.5}}
    signals = {**row, "table": "signals", "key": "kv"}
    text = markdown(summarise([row, signals]), QUICK, "cmd")
    assert "| kv | defaults | 0 | 2.0000 ± 0.0000 | 2.000 | 1 | — |" in text


def test_default_signal_rows_reuse_hopes_models_runs(tmp_path, monkeypatch):
    """The kv rows of the signal table are Hope's own seeds at its rate: taken, not trained again."""
    from nestlearn.eval.suite import lm

    budget = replace(QUICK, d_model=16, steps=1, warmup_steps=1, seq_len=16, batch_size=2, eval_tokens=64,
                     chunk_sizes=(8, 4), selfmod_chunks=(4, 8), threads=1, lrs=(1e-3,), seeds=(0, 1),
                     signal_seeds=(0, 1))
    run(budget, tmp_path, tables=("models",), isolate=False)
    trained = []
    real = lm.train_row
    monkeypatch.setattr(lm, "train_row", lambda row, *a: trained.append(row) or real(row, *a))
    rows = run(budget, tmp_path, tables=("signals",), isolate=False)
    assert sorted(r["key"] for r in trained) == ["lss", "lss", "optimizer", "optimizer"]
    for seed in (0, 1):  # the first seed from the grid, the second from the seeds at the chosen rate
        hope = next(r for r in rows if r["table"] == "models" and r["key"] == "hope" and r["seed"] == seed)
        kv = next(r for r in rows if r["table"] == "signals" and r["key"] == "kv" and r["seed"] == seed)
        assert kv["result"] == hope["result"] and kv["model"] == hope["model"]
    assert lm.unstored(budget, ("signals",), rows) == 0


def test_the_digest_holds_the_resolved_config_not_the_config_as_written(tmp_path, monkeypatch):
    """A default that changes without moving the first two losses still changes the digest, and a
    default written out explicitly does not."""
    from dataclasses import asdict

    from nestlearn.eval.suite import lm

    budget = asdict(replace(QUICK, steps=2, warmup_steps=1, seq_len=16, batch_size=2, threads=1))
    row = {"table": "models", "key": "transformer", "label": "t", "seed": 0, "lr": 1e-3,
           "model": {"family": "transformer", "d_model": 16, "n_layers": 1, "max_seq_len": 64}}
    digest = lm.cell_digest(row, budget, str(tmp_path))
    explicit = {**row, "model": {**row["model"], "norm_eps": 1e-6}}  # LMConfig's default, written out
    assert lm.cell_digest(explicit, budget, str(tmp_path)) == digest

    real = lm._run_config

    def longer_default(row, b, run_dir):  # as if the default max_seq_len had changed: same losses
        config = real(row, b, run_dir)
        config.model = replace(config.model, max_seq_len=128)
        return config

    monkeypatch.setattr(lm, "_run_config", longer_default)
    assert lm.cell_digest(row, budget, str(tmp_path)) != digest
