"""The MQAR section (tasks.md §1): learning-rate grid, best-run rows, and the rule that a section
whose strongest baseline has not learned the task ranks nothing."""

import json
from dataclasses import replace

import pytest

from nestlearn.eval.suite import mqar


def fake_result(scores, models=None, lrs=("0.001", "0.01"), nonfinite=0):
    """A result whose (model, lr) accuracy is the same at every setting: ``scores[model][lr]``."""
    models = models or tuple(scores)
    settings = {"models": list(models), "settings": [[16, 2], [32, 4]], "lrs": [float(x) for x in lrs],
                "vocab_size": 64, "train_count": 8, "test_count": 8, "batch_size": 2, "steps": 10,
                "d_model": 16, "n_layers": 1}
    runs = {fam: {lr: {"accuracy": {"16/2": scores[fam][lr], "32/4": scores[fam][lr]}, "lr": float(lr), "steps": 10,
                       "cpu_seconds": 60.0, "nonfinite_steps": nonfinite, "final_loss": 1.0, "parameters": 100}
                  for lr in lrs} for fam in models}
    return {"settings": settings, "seeds": [0], "runs": {"0": runs}, "train_seconds": 60.0 * len(models) * len(lrs)}


def test_each_row_takes_its_best_rate_and_a_nan_never_wins():
    result = fake_result({"transformer": {"0.001": 0.95, "0.01": 0.2},
                          "gated_deltanet": {"0.001": float("nan"), "0.01": 0.3}})
    assert mqar.best_lr(result, "transformer") == "0.001"
    assert mqar.best_lr(result, "gated_deltanet") == "0.01"
    assert mqar.cell(result, "gated_deltanet", "16/2") == (0.3, 0.0)


@pytest.mark.parametrize("baseline, hope, expected, ranks", [
    (0.3, 0.99, "The task is **uninformative at this budget**", False),  # Hope alone learning does not set the bar
    (0.7, 0.1, "The task is below the 90.0 % bar", True),
    (0.95, 0.1, "The task is learned", True),
])
def test_the_strongest_baseline_decides_whether_the_section_ranks(baseline, hope, expected, ranks):
    result = fake_result({"transformer": {"0.001": baseline, "0.01": 0.0}, "hope": {"0.001": 0.0, "0.01": hope}})
    text, may_rank = mqar.verdict(result)
    assert text.startswith(expected)
    assert may_rank is ranks
    body = mqar.markdown(result, False, 0, "p.png")
    assert ("Best model per setting" in body) is ranks and ("Hope against the best baseline" in body) is ranks
    if ranks:  # Hope is compared with the best model that is not Hope, even where Hope leads
        assert f"{100 * hope:.1f} vs {100 * baseline:.1f} % (Transformer++)" in body
        assert "the same width, not the same parameter count" in body


def test_tables_list_every_rate_and_the_cost_of_each_row():
    result = fake_result({"transformer": {"0.001": 0.95, "0.01": 0.5}, "hope": {"0.001": 0.1, "0.01": 0.2}},
                         nonfinite=3)
    body = mqar.markdown(result, False, 0, "p.png")
    assert "| Transformer++ | 100 | 0.001 | 95.0 | 95.0 | 10 | 3 | 1.0 | 2.0 |" in body
    assert "| Hope | 50.0" not in body and "| Hope | 10.0 (3 non-finite) | 20.0 (3 non-finite) |" in body
    assert "Hope: selfmod.chunk_size_other = 16" in body and "Transformer++: library defaults" in body


def test_section_trains_every_model_at_every_rate_and_reuses_cells(tmp_path, monkeypatch):
    s = replace(mqar.SETTINGS["test"], steps=2)
    sec = mqar.section(False, tmp_path, 0, settings=s)
    data = json.loads((tmp_path / "mqar.json").read_text())
    for fam in s.models:
        assert set(data["runs"]["0"][fam]) == {f"{lr:g}" for lr in s.lrs}
        for run in data["runs"]["0"][fam].values():
            assert run["steps"] == 2 and run["cpu_seconds"] > 0 and set(run["accuracy"]) == {"16/2", "32/4"}
    assert "| lr 0.001 | lr 0.01 |" in sec.markdown and (tmp_path / "results_mqar.png").is_file()

    def refuse(*args):
        raise AssertionError("a stored cell was trained again")

    # A smaller grid or fewer rows reuse the stored cells.
    monkeypatch.setattr(mqar, "run_cell", refuse)
    again = mqar.section(False, tmp_path, 0, settings=replace(s, lrs=s.lrs[:1]), models=s.models[:1])
    assert again.data["runs"]["0"]["transformer"]["0.001"] == data["runs"]["0"]["transformer"]["0.001"]


def test_a_run_of_some_rows_says_which_rows_are_missing():
    result = fake_result({"transformer": {"0.001": 0.95, "0.01": 0.5}})
    assert "**Partial**: the rows DeltaNet, DeltaNet (signed)" in mqar.markdown(result, False, 0, "p.png")
    assert "Partial" not in mqar.markdown(result, True, 0, "p.png")
