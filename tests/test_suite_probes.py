"""The text-probe sections (niah, babi): a task whose strongest baseline has not learned it at the
shortest length is called uninformative (tasks.md §1)."""

import pytest

from nestlearn.eval.suite import probes


def fake_result(ranking):
    """A one-seed result whose ranking accuracy is ``ranking[model][task]`` at every length."""
    models, tasks, lens = list(ranking), list(next(iter(ranking.values()))), [512, 1024]
    runs = {m: {"grid": {t: {str(n): {"ranking": ranking[m][t], "decoding": 0.0} for n in lens} for t in tasks}}
            for m in models}
    return {"settings": {"models": models, "tasks": tasks, "eval_lens": lens}, "runs": {"0": runs}}


@pytest.mark.parametrize("baseline, expected", [(0.3, "**uninformative at this budget**"),
                                                (0.7, "below the 90.0 % bar"), (0.95, "learned")])
def test_the_strongest_baseline_at_the_shortest_length_decides(baseline, expected):
    result = fake_result({"transformer": {"s_niah_1": baseline, "s_niah_2": 0.1},
                          "titans": {"s_niah_1": 0.2, "s_niah_2": 0.1},
                          "hope": {"s_niah_1": 1.0, "s_niah_2": 1.0}})  # Hope alone never sets the bar
    first, second = probes.verdicts(result, str.upper)
    assert first.startswith(f"- S_NIAH_1: {expected}") and "Transformer++" in first
    assert second.startswith("- S_NIAH_2: **uninformative at this budget**")
