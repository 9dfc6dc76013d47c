"""The MAD section's cells (tasks.md §8): resumable, and keyed by what the code computes for each."""

from dataclasses import replace

from nestlearn.eval.suite import mad


def test_a_cell_whose_behaviour_changes_is_trained_again(tmp_path, monkeypatch):
    s = replace(mad.SETTINGS["test"], tasks=("mad_recall",), lrs=(1e-3,), steps=(("mad_recall", 1),))
    first = mad.run(s, tmp_path)
    trained = []
    real = mad.run_cell
    monkeypatch.setattr(mad, "run_cell", lambda *args: trained.append(args[-1]) or real(*args))
    again = mad.run(s, tmp_path)
    assert trained == [] and again["runs"] == first["runs"]
    digest = mad.cell_digest
    monkeypatch.setattr(mad, "cell_digest", lambda *args: digest(*args) + ("x" if args[-1] == "transformer" else ""))
    mad.run(s, tmp_path)
    assert trained == ["transformer"]
