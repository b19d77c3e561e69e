"""A small Hyena-style causal long-convolution layer in JAX, trained for a few steps.

The layer projects its input to three streams ``v, a, b``, convolves ``a * v`` with one long
learned filter per channel (as long as the sequence), gates the result with ``b``, adds a
per-channel skip of ``v`` and projects back::

    y = out_proj(b * causal_conv(a * v, k) + skip * v)

which is one call of ``longconv.convolve(v, k, pregate=a, postgate=b, skip=skip)``. The same
layer written with ``jnp.fft`` serves as the reference: outputs and gradients must agree to
float32 tolerance. Training is plain Adam, written inline, on random data; it runs on the CPU
in a few seconds::

    python examples/hyena_jax.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import longconv


def init_params(rng, width, length):
    """Random float32 parameters (``rng``: a NumPy generator)."""
    decay = np.exp(-np.arange(length) / (0.1 * length))
    params = {
        "in_proj": rng.standard_normal((width, 3 * width)) / np.sqrt(width),
        "filter": rng.standard_normal((width, length)) * decay / np.sqrt(length),
        "skip": rng.standard_normal(width) * 0.1,
        "out_proj": rng.standard_normal((width, width)) / np.sqrt(width),
    }
    return {name: jnp.asarray(p, dtype=jnp.float32) for name, p in params.items()}


def _fft_causal_conv(u, k):
    """Reference causal convolution along the last axis with jnp.fft (FFT size 2L)."""
    L = u.shape[-1]
    n = 2 * L
    return jnp.fft.irfft(jnp.fft.rfft(u, n) * jnp.fft.rfft(k, n), n)[..., :L]


def hyena(params, u, conv="longconv"):
    """``u``: (batch, length, width) -> (batch, length, width)."""
    z = u @ params["in_proj"]
    v, a, b = (jnp.swapaxes(t, -1, -2) for t in jnp.split(z, 3, axis=-1))
    k, skip = params["filter"], params["skip"]
    if conv == "longconv":
        y = longconv.convolve(v, k, pregate=a, postgate=b, skip=skip)
    else:
        y = b * _fft_causal_conv(a * v, k) + skip[:, None] * v
    return jnp.swapaxes(y, -1, -2) @ params["out_proj"]


def loss_fn(params, u, target, conv="longconv"):
    return jnp.mean((hyena(params, u, conv) - target) ** 2)


def adam(grads, state, params, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8):
    step = state["step"] + 1
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
    v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state["v"], grads)
    scale = jnp.sqrt(1 - b2 ** step) / (1 - b1 ** step)
    params = jax.tree.map(lambda p, m, v: p - lr * scale * m / (jnp.sqrt(v) + eps),
                          params, m, v)
    return params, {"step": step, "m": m, "v": v}


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def main(steps=20, batch=4, length=256, width=16, seed=0, verbose=True):
    rng = np.random.default_rng(seed)
    params = init_params(rng, width, length)
    u = rng.standard_normal((batch, length, width)).astype(np.float32)
    target = np.roll(u, 3, axis=1) * 0.5 + 0.1 * rng.standard_normal(u.shape)
    u, target = jnp.asarray(u), jnp.asarray(target, dtype=jnp.float32)

    forward = jax.jit(hyena, static_argnames="conv")
    gradient = jax.jit(jax.grad(loss_fn), static_argnames="conv")
    out, ref = forward(params, u), forward(params, u, conv="fft")
    grads, ref_grads = gradient(params, u, target), gradient(params, u, target, conv="fft")
    errors = {"output": _rel(out, ref)}
    errors.update({f"grad {name}": _rel(grads[name], ref_grads[name]) for name in grads})
    if verbose:
        for name, err in errors.items():
            print(f"{name:>14}: relative error vs jnp.fft {err:.2e}")

    @jax.jit
    def train_step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, u, target)
        params, state = adam(grads, state, params)
        return params, state, loss

    zeros = jax.tree.map(jnp.zeros_like, params)
    state = {"step": 0, "m": zeros, "v": zeros}
    losses = []
    for i in range(steps):
        params, state, loss = train_step(params, state)
        losses.append(float(loss))
        if verbose and (i % 5 == 0 or i == steps - 1):
            print(f"step {i:3d}  loss {losses[-1]:.5f}")
    return {"errors": errors, "losses": losses}


if __name__ == "__main__":
    result = main()
    worst = max(result["errors"].values())
    assert worst < 1e-4, f"longconv and jnp.fft disagree: {worst:.2e}"
    assert result["losses"][-1] < result["losses"][0], "loss did not decrease"
