"""Width allocation: the knapsack is optimal (brute force) and greedy never beats it."""
import itertools

import numpy as np
import pytest

from ntkfuse.surrogate.allocation import AllocationError, Option, greedy, knapsack


def _random_instance(rng, n_layers, n_opts):
    opts = {}
    for l in range(n_layers):
        costs = np.sort(rng.choice(np.arange(1, 60), n_opts, replace=False)) * 7
        losses = np.sort(rng.random(n_opts))[::-1] * rng.random() * 3  # cheaper → lossier (mostly)
        if rng.random() < 0.3:
            losses = rng.random(n_opts)  # non-monotone curves too
        opts[l + 2] = [Option(int(16 * (i + 1)), int(c), float(v)) for i, (c, v) in enumerate(zip(costs, losses))]
    return opts


def _brute(opts, budget):
    best = None
    for combo in itertools.product(*[range(len(v)) for v in opts.values()]):
        chosen = [opts[l][i] for l, i in zip(opts, combo)]
        cost = sum(o.params for o in chosen)
        if cost <= budget:
            loss = sum(o.loss for o in chosen)
            best = loss if best is None else min(best, loss)
    return best


def _random_problem(seed):
    rng = np.random.default_rng(seed)
    opts = _random_instance(rng, int(rng.integers(2, 5)), int(rng.integers(2, 5)))
    lo = sum(min(o.params for o in v) for v in opts.values())
    hi = sum(max(o.params for o in v) for v in opts.values())
    return opts, int(rng.integers(lo, hi + 1))


@pytest.mark.parametrize("seed", range(25))
def test_knapsack_optimal_and_greedy_not_better(seed):
    opts, budget = _random_problem(seed)
    k = knapsack(opts, budget)
    g = greedy(opts, budget)
    assert k.exact
    assert k.params <= budget and g.params <= budget
    assert k.loss == pytest.approx(_brute(opts, budget), abs=1e-12)
    assert k.loss <= g.loss + 1e-12


@pytest.mark.parametrize("solver", [knapsack, greedy])
@pytest.mark.parametrize("seed", range(25))
def test_reported_totals_are_those_of_the_reported_widths(seed, solver):
    opts, budget = _random_problem(seed)
    plan = solver(opts, budget)
    chosen = [next(o for o in opts[l] if o.width == w) for l, w in plan.widths.items()]
    assert plan.params == sum(o.params for o in chosen)
    assert plan.loss == pytest.approx(sum(o.loss for o in chosen))


def test_coarse_grid_stays_feasible():
    rng = np.random.default_rng(1)
    opts = _random_instance(rng, 4, 4)
    budget = sum(sorted(o.params for o in v)[1] for v in opts.values())
    plan = knapsack(opts, budget, max_cells=40)
    assert not plan.exact and plan.params <= budget
    assert plan.loss >= knapsack(opts, budget).loss - 1e-12


def test_greedy_suboptimal_instance():
    # greedy takes the best ratio first and then cannot afford the big upgrade
    opts = {0: [Option(1, 1, 10.0), Option(2, 2, 7.0), Option(3, 10, 0.0)],
            1: [Option(1, 1, 1.0), Option(2, 2, 0.0)]}
    assert knapsack(opts, 11).loss == 1.0
    assert greedy(opts, 11).loss == 7.0


def test_infeasible_budget_and_bad_options():
    opts = {0: [Option(1, 10, 1.0)], 1: [Option(1, 10, 1.0)]}
    with pytest.raises(AllocationError, match="cheapest plan"):
        knapsack(opts, 19)
    with pytest.raises(AllocationError, match="cheapest plan"):
        greedy(opts, 19)
    with pytest.raises(AllocationError, match="no options"):
        knapsack({0: []}, 10)
    with pytest.raises(AllocationError, match="finite"):
        knapsack({0: [Option(1, 1, float("nan"))]}, 10)


def test_plan_table_and_json():
    opts = {0: [Option(8, 4, 2.0), Option(16, 8, 1.0)], 1: [Option(8, 4, 3.0), Option(16, 8, 0.5)]}
    plan = knapsack(opts, 12)
    assert plan.widths == {0: 8, 1: 16}
    assert "| 1 | 16 | 8 |" in plan.table(opts)
    assert '"1": 16' in plan.to_json()
