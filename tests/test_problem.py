"""The Problem contract (PROTOCOL s1): validation names the field; arrays are read-only."""

import numpy as np
import pytest

from ngd_ref import Layer, Problem, ProblemError, zoo

GOOD = dict(
    name="p", layers=(Layer(2, 3, "tanh"), Layer(3, 2, "identity")), loss="mse",
    params=np.zeros(17), inputs=np.zeros((4, 2)), targets=np.zeros((4, 2)),
)


def _with(**changes):
    return {**GOOD, **changes}


def test_valid_problem_has_derived_sizes():
    p = Problem(**GOOD)
    assert (p.n_params, p.batch_size, p.output_dim, p.scale) == (17, 4, 2, 0.25)
    assert Problem(**_with(reduction="sum")).scale == 1.0


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"loss": "hinge"}, "loss"),
        ({"reduction": "median"}, "reduction"),
        ({"layers": (Layer(2, 3, "gelu"), Layer(3, 2, "identity"))}, "layers[0].activation"),
        ({"layers": (Layer(2, 3, "softmax"), Layer(3, 2, "identity"))}, "layers[0].activation"),
        ({"layers": (Layer(2, 3, "tanh"), Layer(4, 2, "identity"))}, "layers[1].n_in"),
        ({"layers": (Layer(2, 0, "tanh"),)}, "layers[0].n_out"),
        ({"layers": ()}, "layers"),
        ({"params": np.zeros(16)}, "params"),
        ({"params": np.full(17, np.nan)}, "params"),
        ({"inputs": np.zeros((4, 3))}, "inputs"),
        ({"inputs": np.array([[np.inf, 0.0]] * 4)}, "inputs"),
        ({"targets": np.zeros((3, 2))}, "targets"),
        ({"loss": "softmax_cross_entropy", "targets": np.array([0, 1, 2, 1])}, "targets"),
        ({"loss": "softmax_cross_entropy", "targets": np.array([0, 1, 0.5, 1])}, "targets"),
        ({"loss": "sigmoid_cross_entropy", "targets": np.full((4, 2), 0.5)}, "targets"),
        ({"loss": "poisson", "targets": np.full((4, 2), -1.0)}, "targets"),
        ({"loss": "nll_probs", "targets": np.zeros(4)}, "layers"),
        ({"loss": "gaussian_logvar", "layers": (Layer(2, 3, "tanh"), Layer(3, 3, "identity")),
          "params": np.zeros(21)}, "layers"),
        ({"name": ""}, "name"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_malformed_problem_names_the_field(changes, field):
    with pytest.raises(ProblemError) as info:
        Problem(**_with(**changes))
    message = str(info.value)
    assert message.startswith(field), message
    assert "\n" not in message


def test_arrays_are_readonly_copies():
    params = np.zeros(17)
    p = Problem(**_with(params=params))
    params[0] = 1.0
    assert p.params[0] == 0.0
    with pytest.raises(ValueError):
        p.params[0] = 2.0
    with pytest.raises(ValueError):
        p.inputs[0, 0] = 2.0


def test_dict_round_trip_accepts_decimal_strings():
    p = zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")
    data = p.to_dict()
    data["params"] = [repr(v) for v in data["params"]]
    q = Problem.from_dict(data)
    np.testing.assert_array_equal(q.params, p.params)
    np.testing.assert_array_equal(q.targets, p.targets)
    with pytest.raises(ProblemError, match="missing field"):
        Problem.from_dict({"name": "x"})
    with pytest.raises(ProblemError, match="params"):
        Problem.from_dict({**data, "params": ["one"] * p.n_params})


def test_zoo_names_are_unique_and_data_exact_in_float32():
    problems = zoo.problems() + zoo.problems(quick=True)
    assert len({p.name for p in zoo.problems()}) == len(zoo.problems())
    for p in problems:
        for array in (p.params, p.inputs):
            np.testing.assert_array_equal(array.astype(np.float32).astype(np.float64), array)


def test_quick_zoo_covers_losses_reductions_and_batch_regimes():
    quick = zoo.problems(quick=True)
    assert {p.loss for p in quick} == set(zoo.LOSSES)
    assert {p.reduction for p in quick} == {"mean", "sum"}
    assert {p.batch_size == 1 for p in quick} == {True, False}


def test_zoo_covers_every_loss_activation_pair():
    pairs = {(p.loss, p.layers[0].activation) for p in zoo.problems()}
    assert pairs >= {(loss, act) for loss in zoo.LOSSES for act in zoo.HIDDEN_ACTIVATIONS}
    with pytest.raises(KeyError, match="no zoo problem"):
        zoo.get("nope")
