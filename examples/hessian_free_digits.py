"""Hessian-free training (Grosse ch. 4 s4, seed 002) of an MLP on scikit-learn's digits.

    pip install 'ngd-verify[examples]'      # scikit-learn
    python examples/hessian_free_digits.py

A 64-32-10 tanh MLP with softmax cross-entropy, full-batch: every update solves the damped
Gauss-Newton system (G + lambda I) d = -grad h by CG on the linearized network (at most 20
iterations), checks the reduction ratio (eq. 14) and adapts lambda by Levenberg-Marquardt.
"""

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from ngd_ref import jax as nj


def main(steps: int = 30) -> None:
    """Train for `steps` full-batch HF updates and print the test accuracy."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    train = nj.Batch(jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32))

    apply = nj.mlp_apply(("tanh", "identity"))
    objective = nj.Objective(apply, "softmax_cross_entropy")
    k1, k2 = jax.random.split(jax.random.key(0))
    params = [(jax.random.normal(k1, (32, 64)) / 8.0, jnp.zeros(32)),
              (jax.random.normal(k2, (10, 32)) / np.sqrt(32.0), jnp.zeros(10))]

    hf = nj.hessian_free(objective, damping=1.0, maxiter=20, tol=1e-4)
    state = hf.init(params)
    for step in range(steps):
        params, state, info = hf.update(params, state, train)
        if step % 5 == 0 or step == steps - 1:
            print(f"step {step:3d}  loss {float(info.loss):.4f}  rho {float(info.rho):6.3f}  "
                  f"lambda {float(info.damping):.3g}  CG iterations {int(info.cg_iterations)}")
    accuracy = float(jnp.mean(jnp.argmax(apply(params, jnp.asarray(x_test)), -1) == y_test))
    print(f"test accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
