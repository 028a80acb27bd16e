"""The figures package (explorer/figures/) against independent computations: every clickable
heatmap point is the cell it is drawn on, the CSV rows agree with the distance matrix, and two runs'
curves share one pair of axes."""

from __future__ import annotations

import numpy as np

from explorer.analysis.similarity import compute_distances
from explorer.kinds import run_figures
from explorer.views.figures.runs import comparison_figure
from explorer.views.figures.similarity import distances_frame, heatmap_figure


def test_figure_points_carry_their_own_block(tiny_llama):
    """Every clickable point's customdata (l, n) is the cell it is drawn on, and the CSV rows
    agree with the distance matrix and an independent argmin per row."""
    ids = tiny_llama.tokenizer(["The cat sat on the mat while the dog slept by the door."] * 2)["input_ids"]
    result = compute_distances(tiny_llama, ids, batch_size=2)
    L = result.num_layers
    frame = distances_frame(result)
    assert len(frame) == sum(L - n + 1 for n in range(1, L + 1))
    for n, row in enumerate(result.distances, 1):
        rows = frame[frame.n == n].sort_values("l")
        assert np.allclose(rows.distance, row)
        assert rows.l[rows.is_optimal].tolist() == ([int(np.argmin(row[: L - n]))] if n < L else [])
        assert rows.l[rows.is_simple].tolist() == ([L - 1 - n] if n < L else [])
    for y_axis, scale in (("n", 1), ("fraction", L)):
        fig = heatmap_figure(result, selected=(1, 2), y_axis=y_axis)
        for trace in fig.data:
            l, n = np.asarray(trace.customdata)[:, :2].astype(int).T
            assert np.array_equal(trace.x, l) and np.allclose(np.asarray(trace.y) * scale, n)
        assert [tuple(t.customdata[0][:2]) for t in fig.data if t.name == "selected block"] == [(1, 2)]


def _heal_events(losses: list[float], accuracies: list[float]) -> list[dict]:
    events = [{"kind": "train", "step": s, "train_loss": loss} for s, loss in enumerate(losses, 1)]
    events += [{"kind": "eval", "step": 10 * i, "val_loss": 5.0 - i, "accuracy": a, "ci_low": a - 0.1, "ci_high": a + 0.1}
               for i, a in enumerate(accuracies)]
    return events


def test_two_heals_share_axes(store):
    a = store.get_run(store.create_run("heal", "m", {"heal": {"rank": 8}}))
    b = store.get_run(store.create_run("heal", "m", {"heal": {"rank": 2}}))
    fig = comparison_figure(a, _heal_events([3.0, 2.5], [0.5, 0.7]), b, _heal_events([3.1, 2.9, 2.7], [0.4, 0.45]))
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name[f"#{a.id} accuracy"].y) == [0.5, 0.7]
    assert list(by_name[f"#{b.id} train loss"].y) == [3.1, 2.9, 2.7]
    assert by_name[f"#{a.id} accuracy"].xaxis == by_name[f"#{b.id} accuracy"].xaxis  # one subplot, shared axes
    sweep = store.get_run(store.create_run("sweep", "m", {}))
    assert comparison_figure(a, [], sweep, []) is None  # different kinds: nothing to overlay


def test_runs_page_draws_a_heal_runs_curves(store):
    run = store.get_run(store.create_run("heal", "m", {"heal": {"steps": 3}}))
    events = [{**e, "chance": 0.25} if e["kind"] == "eval" else e for e in _heal_events([3.0, 2.5, 2.2], [0.5, 0.7])]
    (fig,) = run_figures(run, events)
    ys = {tuple(trace.y) for trace in fig.data if trace.y is not None}
    assert (3.0, 2.5, 2.2) in ys and (0.5, 0.7) in ys  # its train loss and accuracy curves
    assert run_figures(run, [{"kind": "phase", "phase": "loading the model"}]) == []  # nothing measured yet


def test_two_sweeps_one_line_per_run_and_strategy(store):
    a = store.get_run(store.create_run("sweep", "m", {"limit": 8}))
    b = store.get_run(store.create_run("sweep", "m", {"limit": 16}))
    point = lambda s, n, acc: {"kind": "point", "strategy": s, "n": n, "fraction": n / 10, "healed": False, "accuracy": acc, "val_loss": 3 + n}
    fig = comparison_figure(a, [point("simple", 0, 0.8), point("simple", 3, 0.4)], b,
                            [point("simple", 0, 0.9), point("similarity", 0, 0.9), point("similarity", 3, 0.6)])
    names = sorted(t.name for t in fig.data if t.name.endswith("accuracy"))
    assert names == [f"#{a.id} simple accuracy", f"#{b.id} similarity accuracy", f"#{b.id} simple accuracy"]


def test_error_bars_span_each_interval(store):
    """Accuracy error bars end exactly at each point's ci_low and ci_high (comparison and classify)."""
    from explorer.views.figures.classify import accuracy_vs_k_figure

    run = store.get_run(store.create_run("heal", "m", {}))
    events = _heal_events([3.0], [0.5, 0.7])
    heal = next(t for t in comparison_figure(run, events, run, events).data if t.name == f"#{run.id} accuracy")
    points = [{"strategy": "top-cut", "mode": "icl", "k": k, "accuracy": acc, "ci_low": acc - 0.2, "ci_high": acc + 0.05,
               "chance": 0.5, "n_train": 8, "n_test": 4, "train_seconds": 0.0} for k, acc in ((2, 0.6), (4, 0.7))]
    classify = accuracy_vs_k_figure(points).data[0]
    for trace, low, high in ((heal, [0.4, 0.6], [0.6, 0.8]), (classify, [0.4, 0.5], [0.65, 0.75])):
        y = np.asarray(trace.y)
        assert np.allclose(y - np.asarray(trace.error_y.arrayminus), low)
        assert np.allclose(y + np.asarray(trace.error_y.array), high)
