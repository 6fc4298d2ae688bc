"""Split invariance: where the softmax sits changes G, but not h, H or F (Martens s9, seed 003).

The same objective can be split as a network with a linear top layer followed by
`softmax_cross_entropy`, or as a network ending in `softmax` followed by `nll_probs`
(PROTOCOL s2). `h`, its gradient and its Hessian are properties of the function `theta -> h`
and so cannot see the split; the Fisher is a property of the model distribution
`p(y|x, theta)`, which is the same categorical distribution either way. The GGN linearizes
the network but not the loss, so it *does* depend on the split (Martens s3, s9: fold as much
as possible into the loss; Schraudolph 2002): that is the negative control.
"""

from __future__ import annotations

import numpy as np

from ngd_ref import Layer, Loss, Problem
from verify._tolerance import compare
from verify.identities._common import exact_rtol, gauss_newton_magnitude, magnitude, reference
from verify.identities._registry import identity, result, separated

__all__ = ["ggn_depends_on_split", "split_invariance", "split_twin", "splittable"]

SOURCE = "Martens s3, s9 (seed 003); PROTOCOL s2"


def splittable(problem: Problem) -> bool:
    """Whether the problem is a softmax classifier whose softmax can move across the split."""
    loss = Loss(problem.loss)
    if problem.layers[-1].is_convolution:  # softmax is allowed on a last dense layer only (s12)
        return False
    if loss.spec.probability_form is not None:
        return problem.layers[-1].phi.linear
    return _logits_form(loss) is not None


def _logits_form(loss: Loss) -> Loss | None:
    """The loss whose `probability_form` is `loss` (nll_probs -> softmax_cross_entropy)."""
    return next((other for other in Loss if other.spec.probability_form is loss), None)


def split_twin(problem: Problem) -> Problem:
    """The same objective with the softmax moved to the other side of the network/loss split.

    `identity` + `softmax_cross_entropy` <-> `softmax` + `nll_probs`; parameters, inputs and
    labels are shared, so `h` is the same function of theta.

    Raises:
        ValueError: if `problem` is not `splittable`.
    """
    if not splittable(problem):
        raise ValueError(f"problem: {problem.name!r} is not a softmax classifier "
                         "with a movable softmax")
    *hidden, last = problem.layers
    own = Loss(problem.loss)
    probability_form = own.spec.probability_form
    loss: Loss | None
    if probability_form is not None:
        loss, activation = probability_form, probability_form.spec.last_activation
    else:
        loss, activation = _logits_form(own), "identity"
    assert loss is not None and activation is not None  # guaranteed by splittable
    layer = Layer(last.n_in, last.n_out, activation)
    return problem.replace(name=f"{problem.name}/split", layers=(*hidden, layer), loss=loss.value)


@identity("split_invariance", source=SOURCE,
          statement="moving the softmax between network and loss leaves h, grad h, H and F "
                    "unchanged",
          applies=splittable)
def split_invariance(problem: Problem):
    """`h`, `grad h`, `H` and `F` of a problem equal those of its `split_twin`."""
    ref, twin = reference(problem), reference(split_twin(problem))
    tol = exact_rtol(problem)
    # MAGs of the two computations: log-sum-exp terms of size |z|, residuals up to 1/p_y on
    # the nll_probs side, and the Gauss-Newton plus network-curvature terms of the Hessian.
    jac = np.linalg.norm(ref.jacobians, axis=(1, 2))
    residual = np.maximum(np.linalg.norm(ref.loss_grads, axis=1),
                          np.linalg.norm(twin.loss_grads, axis=1))
    checks = [
        ("loss", ref.loss, twin.loss,
         problem.scale * float(np.sum(1.0 + np.abs(ref.outputs).max(axis=1)))),
        ("gradient", ref.gradient, twin.gradient,
         problem.scale * float(np.sum(jac * (1 + residual)))),
        ("hessian", ref.hessian, twin.hessian,
         max(gauss_newton_magnitude(ref), gauss_newton_magnitude(twin))
         + magnitude(ref.hessian - ref.ggn, twin.hessian - twin.ggn)),
        ("fisher", ref.fisher, twin.fisher,
         max(gauss_newton_magnitude(ref), gauss_newton_magnitude(twin))),
    ]
    return [result("split_invariance", problem, compare(b, a, tolerance=tol, magnitude=mag),
                   f"{what} unchanged by the split", SOURCE)
            for what, a, b, mag in checks]


@identity("ggn_depends_on_split", source=SOURCE,
          statement="the GGN changes when the softmax moves into the network",
          applies=splittable, negative_control=True)
def ggn_depends_on_split(problem: Problem):
    """Negative control of `split_invariance`: `G(problem) != G(split_twin(problem))`."""
    ref, twin = reference(problem), reference(split_twin(problem))
    mag = max(gauss_newton_magnitude(ref, ref.loss_hessians),
              gauss_newton_magnitude(twin, twin.loss_hessians))
    cmp = compare(twin.ggn, ref.ggn, tolerance=exact_rtol(problem), magnitude=mag)
    return separated("ggn_depends_on_split", problem, cmp, "G changes with the split", SOURCE)
