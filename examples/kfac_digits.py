"""Train an MLP on scikit-learn's `load_digits` with SGD, Adam, Hessian-free and K-FAC.

Writes three figures:
    docs/img/digits_loss.png    training loss against steps and against wall time;
    docs/img/kfac_spectrum.png  K-FAC's eigenvalues against the exact GGN's on a tiny problem
                                (dense reference), with the one-example case where they agree;
    docs/img/kfac_state.png     K-FAC's damping, alpha, beta and rho per step beside the loss,
                                with the default damping floor (1e-8) and with 1e-4
                                (`--kfac-state` writes only this one).

Run: `python examples/kfac_digits.py [--steps 300] [--out docs/img] [--kfac-state]` (CPU,
about a minute).
Model: 64-64-10, tanh, softmax cross-entropy, float32, minibatches of 256 (the full training
set, 1437 examples, for Hessian-free, which wants large batches; Grosse ch.4 s4).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from ngd_ref import dense as ref  # noqa: E402
from ngd_ref import jax as nj  # noqa: E402
from ngd_ref import zoo  # noqa: E402

ACTIVATIONS = ("tanh", "identity")
SIZES = (64, 64, 10)
BATCH = 256


def _data(seed: int = 0):
    digits = load_digits()
    x = digits.data.astype(np.float32) / 16.0
    x_train, _, y_train, _ = train_test_split(x, digits.target, test_size=0.2, random_state=seed)
    return jnp.asarray(x_train), jnp.asarray(y_train, jnp.int32)


def _init(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), jnp.float32),
             jnp.zeros(n_out, jnp.float32)) for n_in, n_out in zip(SIZES[:-1], SIZES[1:],
                                                                    strict=True)]


def _full_loss(apply, params, x, y) -> float:
    z = apply(params, x)
    return float(-jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], axis=1)))


def _run(name: str, step, state, params, x, y, steps: int, full_batch: bool):
    """Run `steps` updates; record (step, seconds, full training loss) after each."""
    apply = nj.mlp_apply(ACTIVATIONS)
    rng = np.random.default_rng(1)
    batches = [(x, y) if full_batch else _minibatch(rng, x, y) for _ in range(steps)]
    jax.block_until_ready(step(params, state, batches[0]))  # compile outside the clock
    history, elapsed = [(0, 0.0, _full_loss(apply, params, x, y))], 0.0
    for i, batch in enumerate(batches, start=1):
        start = time.perf_counter()
        params, state = step(params, state, batch)
        jax.block_until_ready(params)
        elapsed += time.perf_counter() - start
        history.append((i, elapsed, _full_loss(apply, params, x, y)))
    print(f"{name:>13}: final loss {history[-1][2]:.4f} after {elapsed:.1f} s")
    return np.array(history)


def _minibatch(rng, x, y):
    index = rng.choice(x.shape[0], BATCH, replace=False)
    return x[index], y[index]


def main(steps: int = 300, out: str = "docs/img") -> None:
    """Train the four optimizers and write the two figures into `out`."""
    x, y = _data()
    apply = nj.mlp_apply(ACTIVATIONS)
    objective = nj.Objective(apply, "softmax_cross_entropy")
    params = _init()
    curves = {}

    # -- SGD and Adam (optax) --------------------------------------------------------------------
    for name, tx in (("SGD (lr 0.5)", optax.sgd(0.5, momentum=0.9)), ("Adam (lr 3e-3)",
                                                                      optax.adam(3e-3))):
        def step(p, s, batch, tx=tx):
            grads = jax.grad(lambda q: nj.loss_value(objective, q, nj.Batch(*batch)))(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        curves[name] = _run(name, jax.jit(step), tx.init(params), params, x, y, steps, False)

    # -- Hessian-free (the JAX engineer's optimizer), full batch ---------------------------------
    hf = nj.hessian_free(objective, damping=1.0, maxiter=20)

    def hf_step(p, s, batch):
        p, s, _ = hf.update(p, s, nj.Batch(*batch))
        return p, s

    curves["Hessian-free"] = _run("Hessian-free", hf_step, hf.init(params), params, x, y,
                                  max(steps // 5, 20), True)

    # -- K-FAC (this module's optimizer) ---------------------------------------------------------
    kfac = nj.kfac(nj.mlp_network(ACTIVATIONS), "softmax_cross_entropy", damping=1e-2,
                   stats_every=1, inverse_every=10, adapt_damping=True)
    kfac_state = kfac.init(params, _minibatch(np.random.default_rng(2), x, y),
                           jax.random.PRNGKey(0))
    kfac_update = jax.jit(kfac.update)

    def kfac_step(p, s, batch):
        updates, s, _ = kfac_update(p, s, batch)
        return jax.tree_util.tree_map(jnp.add, p, updates), s

    curves["K-FAC"] = _run("K-FAC", kfac_step, kfac_state, params, x, y, steps, False)

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot_losses(curves, out_dir / "digits_loss.png")
    _plot_spectrum(out_dir / "kfac_spectrum.png")
    kfac_state_figure(steps, out)


def _kfac_states(x, y, steps: int, min_damping: float) -> np.ndarray:
    """K-FAC as in `main`, recording per step: full loss, damping, alpha, beta, rho, |d|."""
    apply = nj.mlp_apply(ACTIVATIONS)
    params = _init()
    kfac = nj.kfac(nj.mlp_network(ACTIVATIONS), "softmax_cross_entropy", damping=1e-2,
                   stats_every=1, inverse_every=10, adapt_damping=True, min_damping=min_damping)
    state = kfac.init(params, _minibatch(np.random.default_rng(2), x, y), jax.random.PRNGKey(0))
    update, rng, rows = jax.jit(kfac.update), np.random.default_rng(1), []
    for i in range(1, steps + 1):
        updates, state, info = update(params, state, _minibatch(rng, x, y))
        params = jax.tree_util.tree_map(jnp.add, params, updates)
        norm = float(jnp.sqrt(sum(jnp.vdot(u, u) for u in jax.tree_util.tree_leaves(updates))))
        rows.append((i, _full_loss(apply, params, x, y), float(info.damping), float(info.alpha),
                     float(info.beta), float(info.rho), norm))
    return np.array(rows)


def kfac_state_figure(steps: int = 300, out: str = "docs/img") -> None:
    """Damping, alpha, beta and rho per step beside the loss (docs/kfac.md, "The spike")."""
    x, y = _data()
    runs = {floor: _kfac_states(x, y, steps, floor) for floor in (1e-8, 1e-4)}
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharex=True)
    for index, (floor, h) in enumerate(runs.items()):
        label, color = f"min_damping {floor:g}", f"C{index}"
        axes[0].semilogy(h[:, 0], h[:, 1], lw=1.4, color=color, label=label)
        axes[1].semilogy(h[:, 0], h[:, 2], lw=1.4, color=color, label=label)
        axes[2].semilogy(h[:, 0], np.abs(h[:, 4]), lw=1.0, color=color, label=f"|beta|, {label}")
        axes[2].semilogy(h[:, 0], np.abs(h[:, 3]), lw=1.0, ls=":", color=color,
                         label=f"|alpha|, {label}")
        adapted = np.isfinite(h[:, 5])
        axes[3].plot(h[adapted, 0], h[adapted, 5], "o", ms=3, color=color, label=label)
        print(f"min_damping {floor:g}: worst full loss after step 100 "
              f"{h[100:, 1].max():.2e} (step {int(h[100 + h[100:, 1].argmax(), 0])}), "
              f"max |beta| {np.abs(h[:, 4]).max():.2f}, final loss {h[-1, 1]:.2e}")
    for ax, title in zip(axes, ("training loss (full set)", "damping lambda",
                                "eq. 27 coefficients", "rho (every 5th step)"), strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3, which="both")
    axes[3].axhline(0.75, color="k", lw=0.8, ls="--")
    axes[3].axhline(0.25, color="k", lw=0.8, ls="--")
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=7)
    fig.suptitle("K-FAC on load_digits (minibatch 256): the damping decays to its floor, then "
                 "eq. 27's beta grows")
    fig.tight_layout()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "kfac_state.png", dpi=110)
    plt.close(fig)


def _plot_losses(curves, path: Path) -> None:
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, h in curves.items():
        by_step.plot(h[:, 0], h[:, 2], label=name, lw=1.8)
        by_time.plot(h[:, 1], h[:, 2], label=name, lw=1.8)
    for ax, label in ((by_step, "step"), (by_time, "wall time (s, compilation excluded)")):
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, which="both")
    by_step.set_ylabel("training loss (full training set)")
    by_step.legend()
    fig.suptitle(f"MLP {'-'.join(map(str, SIZES))} tanh on load_digits: minibatch {BATCH} "
                 "(Hessian-free: full batch)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _plot_spectrum(path: Path) -> None:
    """K-FAC vs exact GGN eigenvalues (dense reference) on tiny problems."""
    cases = [("B = 3, tanh: K-FAC approximates",
              zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b3")),
             ("B = 1: K-FAC = exact diagonal blocks",
              zoo.get("mlp-3x4x3-tanh-softmax_cross_entropy-b1"))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (title, problem) in zip(axes, cases, strict=True):
        approx = ref.kfac_approximation(problem, "ggn")
        blocks = ref.exact_diagonal_blocks(problem, "ggn")
        block_spectrum = np.sort(np.concatenate([np.linalg.eigvalsh(b) for b in blocks]))[::-1]
        floor = 1e-12
        index = np.arange(1, problem.n_params + 1)
        ax.semilogy(index, np.maximum(approx.exact_spectrum, floor), "o-", ms=4,
                    label="exact GGN")
        ax.semilogy(index, np.maximum(block_spectrum, floor), "s", ms=6, mfc="none",
                    label="block diagonal of the GGN")
        ax.semilogy(index, np.maximum(approx.kfac_spectrum, floor), "x", ms=6,
                    label="K-FAC (A (x) S blocks)")
        ax.set_title(f"{title}\nrel. error vs blocks {approx.block_diagonal_error:.2g}, "
                     f"vs full GGN {approx.full_error:.2g}", fontsize=10)
        ax.set_xlabel("eigenvalue index")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel(f"eigenvalue (clipped at {1e-12:g})")
    axes[0].legend()
    fig.suptitle(f"{cases[0][1].name.rsplit('-b', 1)[0]}: spectra of the GGN and its K-FAC "
                 "approximation")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default="docs/img")
    parser.add_argument("--kfac-state", action="store_true",
                        help="only the K-FAC state figure (kfac_state.png)")
    args = parser.parse_args()
    if args.kfac_state:
        kfac_state_figure(args.steps, args.out)
    else:
        main(args.steps, args.out)
