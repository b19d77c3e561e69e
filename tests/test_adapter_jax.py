"""JAX arrays: round trips, jit, vmap and gradients (CPU), zero-copy on the GPU (gpu marker)."""

import os
import re
import warnings

# JAX preallocates 75% of GPU memory at its first GPU use; CuPy shares the device in the GPU
# tests, so allocate on demand instead (set before jax is imported).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.signal  # noqa: E402

jax = pytest.importorskip("jax")
jnp = jax.numpy

import longconv  # noqa: E402
from longconv import testing  # noqa: E402
from longconv.adapters import jax as ljax  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _x64():
    """float64 references need x64; restored for the other test modules afterwards."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.fixture(autouse=True)
def _cpu_unless_gpu_test(request):
    """Tests without the gpu marker run on JAX's CPU device whatever the default backend; the
    GPU tests place their arrays on the GPU themselves."""
    if request.node.get_closest_marker("gpu") is not None:
        yield
        return
    with jax.default_device(jax.devices("cpu")[0]):
        yield


def _jnp_conv(u, k, causal):
    """Pure-jnp float64 reference of ``conv(u, k)`` along the last axis."""
    L, Lk = u.shape[-1], k.shape[-1]
    n = L + Lk - 1
    full = jnp.fft.irfft(jnp.fft.rfft(u, n) * jnp.fft.rfft(k, n), n)
    off = 0 if causal else (Lk - 1) // 2
    return full[..., off:off + L]


def _jnp_layer(x, k, causal=True, pregate=None, postgate=None, skip=None):
    u = x if pregate is None else pregate * x
    c = _jnp_conv(u, k, causal)
    y = c if postgate is None else postgate * c
    if skip is not None:
        y = y + (skip.reshape(-1, 1) if x.ndim >= 2 else skip.reshape(-1)) * x
    return y


_ref_layer = jax.jit(_jnp_layer, static_argnums=2)


def _rand(rng, shape, dtype=jnp.float64):
    return jnp.asarray(rng.standard_normal(shape)).astype(dtype)


def _rel(a, b):
    a = np.asarray(jnp.asarray(a, jnp.float64))
    b = np.asarray(jnp.asarray(b, jnp.float64))
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


# ---------------------------------------------------------------------------------------------
# eager round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("causal", [True, False])
def test_round_trip_dtypes(rng, dtype, causal):
    xd = rng.standard_normal((2, 3, 64))
    kd = rng.standard_normal((3, 40))
    x = jnp.asarray(xd).astype(dtype)
    k = jnp.asarray(kd).astype(dtype)
    y = longconv.convolve(x, k, causal)
    assert isinstance(y, jax.Array)
    assert y.dtype == x.dtype and y.shape == x.shape
    ref = testing.reference_convolve(np.asarray(x.astype(jnp.float64)),
                                     np.asarray(k.astype(jnp.float64)), causal)
    assert _rel(y, ref) < 4 * testing.tolerance(dtype)


def test_cpu_input_is_shared_not_copied(rng):
    x = _rand(rng, (3, 128), jnp.float32)
    arr, dt = ljax.to_backend(x)
    assert isinstance(arr, np.ndarray) and dt == np.float32
    assert arr.__array_interface__["data"][0] == x.unsafe_buffer_pointer()
    bits, dt = ljax.to_backend(x.astype(jnp.bfloat16))
    assert dt == "bfloat16" and bits.dtype == np.uint16


@pytest.mark.parametrize("xshape,kshape", [
    ((100,), (30,)),
    ((100,), (1, 30)),
    ((4, 2, 3, 50), (3, 70)),
    ((3, 50), (50,)),
    ((1, 1), (1,)),
])
def test_shapes(rng, xshape, kshape):
    x, k = _rand(rng, xshape), _rand(rng, kshape)
    for causal in (True, False):
        y = longconv.convolve(x, k, causal)
        assert y.shape == x.shape
        kk = k if k.ndim == 1 or len(xshape) >= 2 else k[0]
        assert _rel(y, _ref_layer(x, kk, causal)) < 1e-12


def test_fftconvolve_long_and_plan_return_jax(rng):
    a, b = _rand(rng, (2, 90)), _rand(rng, (2, 33))
    for mode in ("full", "same", "valid"):
        y = longconv.fftconvolve_long(a, b, mode=mode, axes=-1)
        assert isinstance(y, jax.Array)
        ref = scipy.signal.fftconvolve(np.asarray(a), np.asarray(b), mode=mode, axes=-1)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-10, atol=1e-10)
    k = _rand(rng, (3, 20), jnp.float32)
    plan = longconv.LongConv(k, 64)
    x = _rand(rng, (2, 3, 64), jnp.float32)
    y = plan(x, skip=jnp.ones(3, jnp.float32))
    assert isinstance(y, jax.Array) and y.dtype == jnp.float32
    ref = _ref_layer(x.astype(jnp.float64), k.astype(jnp.float64), skip=jnp.ones(3))
    assert _rel(y, ref) < 1e-5


def test_eager_gates_and_skip(rng):
    x, k = _rand(rng, (2, 3, 64)), _rand(rng, (3, 64))
    pre, post, skip = _rand(rng, (3, 1)), _rand(rng, (2, 3, 64)), _rand(rng, (3,))
    y = longconv.convolve(x, k, pregate=pre, postgate=post, skip=skip)
    assert _rel(y, _ref_layer(x, k, True, pre, post, skip)) < 1e-12


# ---------------------------------------------------------------------------------------------
# jit and vmap
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,causal", [
    ("float32", True), ("float64", True), ("float16", True), ("bfloat16", True),
    ("float32", False), ("bfloat16", False),
])
def test_jit_matches_eager(rng, dtype, causal):
    x, k = _rand(rng, (2, 3, 48), dtype), _rand(rng, (3, 30), dtype)
    pre, post, skip = _rand(rng, (3, 48), dtype), _rand(rng, (48,), dtype), _rand(rng, (3,), dtype)
    f = jax.jit(longconv.convolve, static_argnames="causal")
    y = f(x, k, causal, pregate=pre, postgate=post, skip=skip)
    assert y.dtype == x.dtype and y.shape == x.shape
    eager = longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)
    ref = _ref_layer(*(a.astype(jnp.float64) for a in (x, k)), causal,
                     *(a.astype(jnp.float64) for a in (pre, post, skip)))
    tol = 4 * testing.tolerance(dtype)
    assert _rel(y, ref) < tol and _rel(eager, ref) < tol


def test_adapter_convolve_is_the_public_one_under_jit(rng):
    x, k = _rand(rng, (3, 40)), _rand(rng, (3, 10))
    a = jax.jit(ljax.convolve)(x, k)
    b = jax.jit(longconv.convolve)(x, k)
    assert _rel(a, b) == 0 and _rel(a, _jnp_layer(x, k)) < 1e-12


def test_vmap_over_leading_axis(rng):
    x, k = _rand(rng, (5, 3, 40)), _rand(rng, (3, 25))
    post = _rand(rng, (5, 3, 40))
    y = jax.vmap(lambda a, p: longconv.convolve(a, k, postgate=p))(x, post)
    assert _rel(y, _ref_layer(x, k, postgate=post)) < 1e-12
    ks = _rand(rng, (5, 3, 25))
    y = jax.jit(jax.vmap(lambda a, b: longconv.convolve(a, b, False)))(x, ks)
    ref = jax.vmap(lambda a, b: _jnp_layer(a, b, False))(x, ks)
    assert _rel(y, ref) < 1e-12
    skips = _rand(rng, (5, 3))
    y = jax.vmap(lambda s: longconv.convolve(x[0], k, skip=s))(skips)
    ref = jax.vmap(lambda s: _jnp_layer(x[0], k, skip=s))(skips)
    assert _rel(y, ref) < 1e-12


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------

def _loss(conv, causal, kernel_len=None):
    def f(x, k, pre, post, skip):
        y = conv(x, k, causal, pregate=pre, postgate=post, skip=skip)
        return jnp.sum(jnp.sin(y) * jnp.arange(y.shape[-1]))
    return f


def _ours(x, k, causal, **kw):
    return longconv.convolve(x, k, causal, **kw)


def _ref(x, k, causal, pregate, postgate, skip):
    return _jnp_layer(x, k, causal, pregate, postgate, skip)


_ALL = (0, 1, 2, 3, 4)


def _check_grad(rng, causal, L, Lk, jit):
    x, k = _rand(rng, (2, 3, L)), _rand(rng, (3, Lk))
    pre, post, skip = _rand(rng, (3, L)), _rand(rng, (2, 1, L)), _rand(rng, (3,))
    args = (x, k, pre, post, skip)
    g = jax.grad(_loss(_ours, causal), argnums=_ALL)
    got = (jax.jit(g) if jit else g)(*args)
    want = jax.jit(jax.grad(_loss(_ref, causal), argnums=_ALL))(*args)
    for name, a, b in zip(("x", "k", "pregate", "postgate", "skip"), got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert _rel(a, b) < 1e-11, (name, L, Lk)


@pytest.mark.parametrize("causal", [True, False])
def test_grad_jit_matches_jnp_reference(rng, causal):
    """Filters shorter and longer than the signal, odd and even lengths."""
    for L, Lk in [(50, 17), (40, 90)]:
        _check_grad(rng, causal, L, Lk, jit=True)


@pytest.mark.parametrize("causal", [True, False])
def test_grad_eager_matches_jnp_reference(rng, causal):
    _check_grad(rng, causal, 24, 8, jit=False)


def test_grad_shared_filter_scalar_skip_and_1d(rng):
    x, k = _rand(rng, (4, 3, 30)), _rand(rng, (12,))
    pre, skip = _rand(rng, ()), jnp.asarray(0.5)
    f = lambda x, k, pre, skip: jnp.sum(  # noqa: E731
        longconv.convolve(x, k, pregate=pre, skip=skip) ** 2)
    r = lambda x, k, pre, skip: jnp.sum(_jnp_layer(x, k, True, pre, None, skip) ** 2)  # noqa: E731
    got = jax.jit(jax.grad(f, (0, 1, 2, 3)))(x, k, pre, skip)
    want = jax.jit(jax.grad(r, (0, 1, 2, 3)))(x, k, pre, skip)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and _rel(a, b) < 1e-11
    x1 = _rand(rng, (30,))
    got = jax.jit(jax.grad(lambda x, k: jnp.sum(longconv.convolve(x, k, False) ** 2),
                           (0, 1)))(x1, k)
    want = jax.jit(jax.grad(lambda x, k: jnp.sum(_jnp_conv(x, k, False) ** 2), (0, 1)))(x1, k)
    for a, b in zip(got, want, strict=True):
        assert _rel(a, b) < 1e-11


@pytest.mark.parametrize("causal", [True, False])
def test_grad_kernel_len(rng, causal):
    x, k = _rand(rng, (2, 40)), _rand(rng, (2, 30))
    gk = jax.jit(jax.grad(lambda k: jnp.sum(
        longconv.convolve(x, k, causal, kernel_len=11) ** 2)))(k)
    want = jax.jit(jax.grad(lambda k: jnp.sum(_jnp_conv(x, k[:, :11], causal) ** 2)))(k)
    assert _rel(gk, want) < 1e-11
    assert not np.any(np.asarray(gk[:, 11:]))


def test_check_grads(rng):
    from jax.test_util import check_grads

    x, k = _rand(rng, (2, 2, 12)), _rand(rng, (2, 7))
    pre, post, skip = _rand(rng, (2, 12)), _rand(rng, (2, 2, 12)), _rand(rng, (2,))
    for causal in (True, False):
        f = jax.jit(lambda *a, c=causal: longconv.convolve(
            a[0], a[1], c, pregate=a[2], postgate=a[3], skip=a[4]))
        check_grads(f, (x, k, pre, post, skip), order=1, modes=("rev",))


def test_grad_float32_and_half_dtypes(rng):
    x64, k64 = _rand(rng, (2, 3, 64)), _rand(rng, (3, 64))
    ref_grad = jax.jit(jax.grad(lambda x, k: jnp.sum(_jnp_conv(x, k, True) ** 2), (0, 1)))
    ours = jax.jit(jax.grad(lambda x, k: jnp.sum(
        longconv.convolve(x, k).astype(jnp.float32) ** 2), (0, 1)))
    for dtype, tol in (("float32", 1e-5), ("float16", 4e-3), ("bfloat16", 3e-2)):
        x, k = x64.astype(dtype), k64.astype(dtype)
        got = ours(x, k)
        ref = ref_grad(x.astype(jnp.float64), k.astype(jnp.float64))
        for a, b in zip(got, ref, strict=True):
            assert a.dtype == jnp.dtype(dtype)
            assert _rel(a, b) < tol


def test_vmap_of_grad(rng):
    x, k = _rand(rng, (4, 3, 32)), _rand(rng, (3, 20))
    f = lambda x, k: jnp.sum(jnp.cos(longconv.convolve(x, k, False)))  # noqa: E731
    r = lambda x, k: jnp.sum(jnp.cos(_jnp_conv(x, k, False)))  # noqa: E731
    got = jax.vmap(jax.grad(f, (0, 1)), in_axes=(0, None))(x, k)
    want = jax.jit(jax.vmap(jax.grad(r, (0, 1)), in_axes=(0, None)))(x, k)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and _rel(a, b) < 1e-11


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_errors_under_jit(rng):
    x, k = _rand(rng, (3, 40)), _rand(rng, (3, 10))
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        jax.jit(longconv.convolve)(x.astype(jnp.int32), k)
    with pytest.raises(TypeError, match="pregate must be a JAX array"):
        jax.jit(lambda x: longconv.convolve(x, k, pregate="a"))(x)
    with pytest.raises(ValueError, match="k must have shape"):
        jax.jit(longconv.convolve)(x, k[None])
    with pytest.raises(ValueError, match="k holds H=3 filters"):
        jax.jit(longconv.convolve)(x[:2], k)
    with pytest.raises(ValueError, match="postgate must have a shape"):
        jax.jit(lambda x: longconv.convolve(x, k, postgate=jnp.ones((4, 40))))(x)
    with pytest.raises(ValueError, match="skip must have shape"):
        jax.jit(lambda x: longconv.convolve(x, k, skip=jnp.ones(2)))(x)
    with pytest.raises(TypeError, match="causal must be a bool"):
        jax.jit(lambda x: longconv.convolve(x, k, "yes"))(x)
    with pytest.raises(NotImplementedError, match="freq_keep"):
        jax.jit(lambda x: longconv.convolve(x, k, freq_keep=0.5))(x)
    with pytest.raises(ValueError, match="kernel_len"):
        jax.jit(lambda x: longconv.convolve(x, k, kernel_len=0))(x)


def test_errors_eager_and_traced_public_functions(rng):
    x, k = _rand(rng, (3, 40)), _rand(rng, (3, 10))
    with pytest.raises(TypeError, match="same kind of array"):
        longconv.convolve(x, np.asarray(k))
    with pytest.raises(TypeError, match="traced JAX value"):
        jax.jit(lambda a: longconv.fftconvolve_long(a, k))(x)
    with pytest.raises(TypeError, match="traced JAX value"):
        jax.jit(lambda a: longconv.LongConv(k, 40)(a))(x)
    with pytest.raises(ValueError, match="x must have shape"):
        longconv.convolve(jnp.asarray(1.0), k)


# ---------------------------------------------------------------------------------------------
# callbacks: which one each platform gets, and the buffer_callback path run on CPU buffers
# ---------------------------------------------------------------------------------------------

def _custom_call_targets(f, args, platform):
    """Custom-call targets of ``jax.jit(f)`` lowered for ``platform`` (no device needed)."""
    traced = jax.jit(f).trace(*args)
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    return set(re.findall(r"custom_call @(\w+)", text))


def test_lowering_picks_buffer_callback_for_cuda_and_pure_callback_for_cpu(rng):
    x, k = _rand(rng, (2, 3, 64), jnp.float32), _rand(rng, (3, 64), jnp.float32)

    def loss(x, k):
        return jnp.sum(longconv.convolve(x, k, pregate=x, skip=jnp.ones(3, jnp.float32)) ** 2)

    for f in (lambda x, k: longconv.convolve(x, k, False), jax.grad(loss, (0, 1))):
        cuda = _custom_call_targets(f, (x, k), "cuda")
        cpu = _custom_call_targets(f, (x, k), "cpu")
        assert cuda == {"xla_buffer_python_gpu_callback"}, cuda
        assert cpu == {"xla_ffi_python_cpu_callback"}, cpu


def test_without_buffer_callback_every_platform_uses_pure_callback(rng, monkeypatch):
    monkeypatch.setattr(ljax, "_buffer_callback", lambda: None)
    x, k = _rand(rng, (2, 3, 40)), _rand(rng, (3, 12))
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with the CPU as JAX's default backend: no warning
        y = jax.jit(lambda a, b: longconv.convolve(a, b, False))(x, k)
    assert _rel(y, _ref_layer(x, k, False)) < 1e-12
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(longconv.convolve(a, b))))(x, k))
    assert "pure_callback" in jaxpr
    assert "buffer_callback" not in jaxpr and "platform_index" not in jaxpr
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.warns(RuntimeWarning, match="no jax.experimental.buffer_callback"):
        jax.jit(lambda a, b: longconv.convolve(a, b) * 2).trace(x, k)


@pytest.fixture
def buffer_route(monkeypatch):
    """Traced calls use buffer_callback on every platform (here: CPU buffers through NumPy)."""
    monkeypatch.setattr(ljax, "_ROUTE", "buffer")


@pytest.mark.parametrize("dtype", ["float64", "float32", "bfloat16", "float16"])
def test_buffer_route_forward(rng, buffer_route, dtype):
    x, k = _rand(rng, (2, 3, 48), dtype), _rand(rng, (3, 30), dtype)
    pre, post, skip = _rand(rng, (3, 48), dtype), _rand(rng, (48,), dtype), _rand(rng, (3,), dtype)
    targets = _custom_call_targets(lambda x, k: longconv.convolve(x, k), (x, k), "cpu")
    assert targets == {"xla_buffer_python_cpu_callback"}, targets
    f = jax.jit(lambda *a: longconv.convolve(a[0], a[1], False, pregate=a[2], postgate=a[3],
                                             skip=a[4]))
    y = f(x, k, pre, post, skip)
    assert y.dtype == x.dtype and y.shape == x.shape
    eager = longconv.convolve(x, k, False, pregate=pre, postgate=post, skip=skip)
    assert _rel(y, eager) == 0


def test_buffer_route_mixed_dtypes(rng, buffer_route):
    x, k = _rand(rng, (2, 40), jnp.float32), _rand(rng, (2, 9), jnp.bfloat16)
    y = jax.jit(lambda a, b: longconv.convolve(a, b))(x, k)
    assert y.dtype == jnp.float32
    assert _rel(y, _jnp_conv(x.astype(jnp.float64), k.astype(jnp.float64), True)) < 1e-6


def test_buffer_route_grad_and_vmap(rng, buffer_route):
    for causal in (True, False):
        _check_grad(rng, causal, 40, 90, jit=True)
    x, k = _rand(rng, (5, 3, 40)), _rand(rng, (3, 25))
    ks = _rand(rng, (5, 3, 25))
    y = jax.jit(jax.vmap(lambda a, b: longconv.convolve(a, b, False)))(x, ks)
    assert _rel(y, jax.vmap(lambda a, b: _jnp_layer(a, b, False))(x, ks)) < 1e-12
    y = jax.jit(jax.vmap(lambda a: longconv.convolve(a, k)))(x)
    assert _rel(y, _ref_layer(x, k, True)) < 1e-12
    f = lambda x, k: jnp.sum(jnp.cos(longconv.convolve(x, k, False)))  # noqa: E731
    r = lambda x, k: jnp.sum(jnp.cos(_jnp_conv(x, k, False)))  # noqa: E731
    got = jax.jit(jax.vmap(jax.grad(f, (0, 1)), in_axes=(0, None)))(x, k)
    want = jax.jit(jax.vmap(jax.grad(r, (0, 1)), in_axes=(0, None)))(x, k)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and _rel(a, b) < 1e-11


# ---------------------------------------------------------------------------------------------
# GPU: eager zero-copy through DLPack; under jit, buffer_callback on XLA's stream
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def jax_gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("jax has no GPU backend (CPU jaxlib)")


def _on(device, *arrays):
    return tuple(jax.device_put(a, device) for a in arrays)


@pytest.mark.gpu
def test_gpu_input_is_shared_not_copied(rng, jax_gpu):
    x = jax.device_put(_rand(rng, (2, 3, 256), jnp.float32), jax_gpu)
    arr, dt = ljax.to_backend(x)
    assert arr.data.ptr == x.unsafe_buffer_pointer()
    assert dt == np.float32


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_gpu_round_trip(rng, jax_gpu, dtype):
    xd, kd = rng.standard_normal((2, 3, 256)), rng.standard_normal((3, 256))
    x = jax.device_put(jnp.asarray(xd).astype(dtype), jax_gpu)
    k = jax.device_put(jnp.asarray(kd).astype(dtype), jax_gpu)
    y = longconv.convolve(x, k)
    assert isinstance(y, jax.Array) and y.dtype == x.dtype
    assert next(iter(y.devices())) == jax_gpu
    assert y.unsafe_buffer_pointer() % 256 == 0
    ref = testing.reference_convolve(np.asarray(x.astype(jnp.float64)),
                                     np.asarray(k.astype(jnp.float64)))
    assert _rel(y, ref) < 4 * testing.tolerance(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_jit_matches_eager(rng, jax_gpu, dtype, causal):
    L = 1000
    x, k = _on(jax_gpu, _rand(rng, (4, 8, L), dtype), _rand(rng, (8, L), dtype))
    pre, post, skip = _on(jax_gpu, _rand(rng, (8, L), dtype), _rand(rng, (4, 8, L), dtype),
                          _rand(rng, (8,), dtype))
    f = jax.jit(lambda *a, c=causal: longconv.convolve(a[0], a[1], c, pregate=a[2],
                                                       postgate=a[3], skip=a[4]))
    y = f(x, k, pre, post, skip)
    assert isinstance(y, jax.Array) and y.dtype == x.dtype and y.shape == x.shape
    assert next(iter(y.devices())) == jax_gpu
    eager = longconv.convolve(x, k, causal, pregate=pre, postgate=post, skip=skip)
    ref = _ref_layer(*(a.astype(jnp.float64) for a in (x, k)), causal,
                     *(a.astype(jnp.float64) for a in (pre, post, skip)))
    tol = 4 * testing.tolerance(dtype)
    assert _rel(y, ref) < tol and _rel(eager, ref) < tol
    assert _rel(y, eager) < testing.tolerance(dtype)
    plain = jax.jit(lambda a, b, c=causal: longconv.convolve(a, b, c))(x, k)
    assert _rel(plain, _ref_layer(x.astype(jnp.float64), k.astype(jnp.float64), causal)) < tol


@pytest.mark.gpu
def test_gpu_jit_mixed_dtypes_and_shapes(rng, jax_gpu):
    x, k = _on(jax_gpu, _rand(rng, (3, 500), jnp.float32), _rand(rng, (3, 77), jnp.bfloat16))
    y = jax.jit(lambda a, b: longconv.convolve(a, b, pregate=jnp.float32(0.5)))(x, k)
    assert y.dtype == jnp.float32
    ref = 0.5 * _jnp_conv(x.astype(jnp.float64), k.astype(jnp.float64), True)
    assert _rel(y, ref) < 4 * testing.tolerance("float32")
    x1, k1 = _on(jax_gpu, _rand(rng, (300,), jnp.float16), _rand(rng, (40,), jnp.float16))
    y1 = jax.jit(lambda a, b: longconv.convolve(a, b, False))(x1, k1)
    assert y1.shape == (300,) and y1.dtype == jnp.float16
    ref1 = _jnp_conv(x1.astype(jnp.float64), k1.astype(jnp.float64), False)
    assert _rel(y1, ref1) < 4 * testing.tolerance("float16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_gpu_jit_grad_matches_jnp_reference(rng, jax_gpu, dtype):
    """Gradients of every operand, jitted and eager, against float64 jnp.fft on the host."""
    x, k = _on(jax_gpu, _rand(rng, (2, 4, 300), dtype), _rand(rng, (4, 120), dtype))
    pre, post, skip = _on(jax_gpu, _rand(rng, (4, 300), dtype), _rand(rng, (2, 1, 300), dtype),
                          _rand(rng, (4,), dtype))
    args = (x, k, pre, post, skip)
    tol = 1e-11 if dtype == "float64" else 8 * testing.tolerance(dtype)
    cpu = jax.devices("cpu")[0]
    host_args = tuple(jax.device_put(a.astype(jnp.float64), cpu) for a in args)
    wide = jnp.float64 if dtype == "float64" else jnp.float32
    # a weighted sum of squares: well conditioned in every dtype (a sine of the output would
    # amplify the output's rounding in 16 bits)
    for causal in (True, False):
        def loss(*a, c=causal):
            y = longconv.convolve(a[0], a[1], c, pregate=a[2], postgate=a[3], skip=a[4])
            return jnp.sum(y.astype(wide) ** 2 * jnp.linspace(0.5, 1.5, y.shape[-1], dtype=wide))

        def ref(*a, c=causal):
            y = _jnp_layer(a[0], a[1], c, a[2], a[3], a[4])
            return jnp.sum(y ** 2 * jnp.linspace(0.5, 1.5, y.shape[-1]))

        want = jax.jit(jax.grad(ref, argnums=_ALL))(*host_args)
        for got in (jax.jit(jax.grad(loss, argnums=_ALL))(*args),
                    jax.grad(loss, argnums=_ALL)(*args)):
            for name, a, b in zip(("x", "k", "pregate", "postgate", "skip"), got, want,
                                  strict=True):
                assert a.shape == b.shape and a.dtype == jnp.dtype(dtype), name
                assert next(iter(a.devices())) == jax_gpu, name
                assert _rel(a, b) < tol, (name, causal, _rel(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_jit_grad_uses_the_fused_backward(rng, jax_gpu, dtype, spy):
    """16-bit data under jit on the GPU: du and dk come from one fused backward launch."""
    from longconv import _fused

    calls = spy(_fused.FusedPlan, "backward_ptrs", lambda a, r: (a[0].n, a[0].mode))
    x, k = _on(jax_gpu, _rand(rng, (3, 4, 1000), dtype), _rand(rng, (4, 1000), dtype))

    def loss(x, k):
        return jnp.sum(longconv.convolve(x, k).astype(jnp.float32) ** 2)

    gx, gk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
    assert calls == [(2048, "causal")]
    cpu = jax.devices("cpu")[0]
    hx, hk = (jax.device_put(a.astype(jnp.float64), cpu) for a in (x, k))
    wx, wk = jax.jit(jax.grad(lambda x, k: jnp.sum(_jnp_layer(x, k, True, None, None, None) ** 2),
                              argnums=(0, 1)))(hx, hk)
    assert _rel(gx, wx) < 8 * testing.tolerance(dtype)
    assert _rel(gk, wk) < 8 * testing.tolerance(dtype)


@pytest.mark.gpu
def test_gpu_jit_grad_with_long_filters(rng, jax_gpu, spy):
    """Filters too long for the direct spectrum kernel (2048 taps x 2049 bins x 8 filters):
    the forward and the backward still take the fused kernels on XLA's buffers (CuPy's float64
    rfft gathered by our kernels, dk from its gathered half spectrum), against float64."""
    from longconv import _fused

    calls = spy(_fused.FusedPlan, "gather_spectrum_into", lambda a, r: a[0].n)
    x, k = _on(jax_gpu, _rand(rng, (2, 8, 2048), jnp.float16), _rand(rng, (8, 2048), jnp.float32))

    def loss(x, k):
        return jnp.sum(longconv.convolve(x, k).astype(jnp.float32) ** 2)

    gx, gk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
    assert calls == [4096, 4096]  # the forward's spectrum, the backward's
    cpu = jax.devices("cpu")[0]
    hx, hk = (jax.device_put(a.astype(jnp.float64), cpu) for a in (x, k))
    wx, wk = jax.jit(jax.grad(lambda x, k: jnp.sum(_jnp_layer(x, k, True, None, None, None) ** 2),
                              argnums=(0, 1)))(hx, hk)
    assert _rel(gx, wx) < 8 * testing.tolerance("float16")
    assert _rel(gk, wk) < 8 * testing.tolerance("float16")


@pytest.mark.gpu
def test_gpu_vmap_under_jit(rng, jax_gpu):
    x, k, ks = _on(jax_gpu, _rand(rng, (5, 3, 400), jnp.float32), _rand(rng, (3, 250), jnp.float32),
                   _rand(rng, (5, 3, 250), jnp.float32))
    post = jax.device_put(_rand(rng, (5, 3, 400), jnp.float32), jax_gpu)
    x64, k64, ks64, post64 = (a.astype(jnp.float64) for a in (x, k, ks, post))
    tol = 4 * testing.tolerance("float32")
    y = jax.jit(jax.vmap(lambda a, p: longconv.convolve(a, k, postgate=p)))(x, post)
    assert _rel(y, _ref_layer(x64, k64, postgate=post64)) < tol
    y = jax.jit(jax.vmap(lambda a, b: longconv.convolve(a, b, False)))(x, ks)
    assert _rel(y, jax.vmap(lambda a, b: _jnp_layer(a, b, False))(x64, ks64)) < tol
    xh = _on(jax_gpu, _rand(rng, (5, 3, 400), jnp.bfloat16))[0]
    y = jax.jit(jax.vmap(lambda a: longconv.convolve(a, k.astype(jnp.bfloat16))))(xh)
    assert y.dtype == jnp.bfloat16
    assert _rel(y, _ref_layer(xh.astype(jnp.float64), k.astype(jnp.bfloat16).astype(
        jnp.float64), True)) < 4 * testing.tolerance("bfloat16")
    f = lambda x, k: jnp.sum(jnp.cos(longconv.convolve(x, k, False)))  # noqa: E731
    r = lambda x, k: jnp.sum(jnp.cos(_jnp_conv(x, k, False)))  # noqa: E731
    got = jax.jit(jax.vmap(jax.grad(f, (0, 1)), in_axes=(0, None)))(x, k)
    want = jax.jit(jax.vmap(jax.grad(r, (0, 1)), in_axes=(0, None)))(x64, k64)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and _rel(a, b) < tol


@pytest.mark.gpu
def test_gpu_jit_zero_copy_on_xla_stream(rng, jax_gpu, monkeypatch):
    """Inside jit the callback sees the caller's buffers and writes the result's buffer, with
    CuPy's current stream set to the stream XLA gave it."""
    seen = []
    monkeypatch.setattr(ljax, "_probe", seen.append)
    x, k = _on(jax_gpu, _rand(rng, (4, 8, 1024), jnp.float16), _rand(rng, (8, 1024), jnp.float16))
    f = jax.jit(lambda a, b: longconv.convolve(a, b))
    y = f(x, k)
    y.block_until_ready()
    assert len(seen) == 1, seen
    info = seen[0]
    assert info["inputs"] == [x.unsafe_buffer_pointer(), k.unsafe_buffer_pointer()]
    assert info["outputs"] == [y.unsafe_buffer_pointer()]
    assert info["current_stream"] == info["stream"]
    assert info["device"] == jax_gpu.id
    ref = _ref_layer(x.astype(jnp.float64), k.astype(jnp.float64), True)
    assert _rel(y, ref) < 4 * testing.tolerance("float16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_jit_orders_with_surrounding_xla_work(rng, jax_gpu, dtype):
    """In one jitted program with no synchronisation, the convolution reads an input written
    only after a long XLA computation, and a later XLA op reads its result. On any stream but
    XLA's it would read the input before it is written, or hand a stale output to the next op
    (each run uses another input, so stale memory holds other values)."""
    n, B, H, L = 2048, 4, 16, 4096

    def program(a, w, zero, base, k):
        for _ in range(24):  # unrolled: no loop predicate makes the host wait for the GPU
            a = jnp.tanh(a @ w)
        x = base + (zero * jnp.sum(a)).astype(base.dtype)  # == base, written after the chain
        y = longconv.convolve(x, k)
        return y, 2 * y + 1

    a = jax.device_put(_rand(rng, (n, n), jnp.float32), jax_gpu)
    w = jax.device_put(_rand(rng, (n, n), jnp.float32) / np.sqrt(n), jax_gpu)
    zero = jax.device_put(jnp.float32(0), jax_gpu)
    k = jax.device_put(_rand(rng, (H, L), dtype), jax_gpu)
    run = jax.jit(program)
    tol = 4 * testing.tolerance(dtype)
    for _ in range(3):
        base = jax.device_put(_rand(rng, (B, H, L), dtype), jax_gpu)
        y, z = run(a, w, zero, base, k)
        ref = testing.reference_convolve(np.asarray(base.astype(jnp.float64)),
                                         np.asarray(k.astype(jnp.float64)))
        assert _rel(y, ref) < tol
        assert _rel(z, 2 * ref + 1) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, L, route", [
    ("float16", 4096, "_fused"),   # the fused kernels (spectrum + convolution)
    ("float16", 200, "_fused"),    # FFT size 512 (8 rows: above the direct kernel's bound)
    ("float32", 300, "_direct"),   # small float32: the direct kernel
])
def test_gpu_eager_fast_path_reads_the_callers_memory(rng, jax_gpu, spy, dtype, L, route):
    """An eager call with default options goes through the adapter's fast entry
    (``adapters.FAST_CONVOLVE``), and its kernels read the caller's buffers (the DLPack views
    alias the JAX arrays' memory)."""
    from longconv import _direct, _fused, adapters

    module = {"_fused": _fused, "_direct": _direct}[route]
    seen = spy(module, "cupy_convolve", lambda a, r: (a[0].data.ptr, a[1].data.ptr))
    x, k = _on(jax_gpu, _rand(rng, (2, 4, L), dtype), _rand(rng, (4, L), dtype))
    y = longconv.convolve(x, k, False)
    assert adapters.FAST_CONVOLVE.get(type(x)) is ljax.fast_convolve
    assert seen and seen[-1] == (x.unsafe_buffer_pointer(), k.unsafe_buffer_pointer())
    assert isinstance(y, jax.Array) and y.dtype == x.dtype and y.shape == x.shape
    assert next(iter(y.devices())) == jax_gpu
    ref = _ref_layer(x.astype(jnp.float64), k.astype(jnp.float64), False)
    assert _rel(y, ref) < 4 * testing.tolerance(dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, H", [("float16", 16), ("float32", 1)])
def test_gpu_eager_orders_with_pending_jax_work(rng, jax_gpu, dtype, H):
    """Eager calls are dispatched asynchronously: the input is written by JAX only after a long
    computation that is still running when longconv is called, and a JAX op reads the result
    right away. Read on a stream that did not wait for JAX, the kernels would see the input's
    memory before it is written (each round writes other values); a result handed to JAX
    before the kernels finish would give the next op stale data. (float16 at H = 16 takes the
    fused kernels; float32 at H = 1 the direct kernel.)"""
    n, B, L = 2048, 2, 2048
    chain = jax.jit(lambda a, w: jnp.tanh(a @ w))
    a = jax.device_put(_rand(rng, (n, n), jnp.float32), jax_gpu)
    w = jax.device_put(_rand(rng, (n, n), jnp.float32) / np.sqrt(n), jax_gpu)
    zero = jax.device_put(jnp.float32(0), jax_gpu)
    k = jax.device_put(_rand(rng, (H, L), dtype), jax_gpu)
    tol = 4 * testing.tolerance(dtype)
    for _ in range(3):
        base = jax.device_put(_rand(rng, (B, H, L), dtype), jax_gpu)
        base.block_until_ready()
        b = a
        for _ in range(24):
            b = chain(b, w)
        x = base + (zero * jnp.sum(b)).astype(base.dtype)  # == base, written after the chain
        y = longconv.convolve(x, k)
        z = 2 * y + 1
        ref = testing.reference_convolve(np.asarray(base.astype(jnp.float64)),
                                         np.asarray(k.astype(jnp.float64)))
        assert _rel(y, ref) < tol
        assert _rel(z, 2 * ref + 1) < tol


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("xshape, kshape, kernel_len", [
    ((2, 4, 300), (4, 120), None),
    ((3, 2, 100), (2, 257), None),   # filters longer than the signal
    ((2, 3, 64), (1, 64), None),     # one filter for every channel
    ((2, 4, 200), (4, 150), 90),     # kernel_len cuts the filters
])
def test_gpu_small_grad_takes_the_direct_kernel(rng, jax_gpu, spy, dtype, causal, xshape,
                                                kshape, kernel_len):
    """A small float32/float64 jit(grad) step: the forward, du and dk each one launch of the
    direct kernel on XLA's buffers, against float64 jnp.fft and against the general route."""
    from longconv import _direct

    launches = spy(_direct, "launch", lambda a, r: a[1])
    x, k = _on(jax_gpu, _rand(rng, xshape, dtype), _rand(rng, kshape, dtype))
    w = jax.device_put(_rand(rng, xshape, dtype), jax_gpu)

    def loss(x, k):  # not linear in the output: the backward needs the forward's value
        return jnp.sum(longconv.convolve(x, k, causal, kernel_len=kernel_len) ** 2 * w)

    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    gx, gk = step(x, k)
    assert launches == [dtype] * 3
    cpu = jax.devices("cpu")[0]
    hx, hk, hw = (jax.device_put(a.astype(jnp.float64), cpu) for a in (x, k, w))
    m = kshape[-1] if kernel_len is None else kernel_len

    def ref(x, k):
        return jnp.sum(_jnp_layer(x, k[:, :m], causal) ** 2 * hw)

    rx, rk = jax.jit(jax.grad(ref, argnums=(0, 1)))(hx, hk)
    tol = 1e-11 if dtype == "float64" else 1e-5
    assert gx.dtype == x.dtype and gk.dtype == k.dtype and gk.shape == k.shape
    assert _rel(gx, rx) < tol and _rel(gk, rk) < tol
    if m < kshape[-1]:
        assert not np.asarray(gk)[:, m:].any()
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(_direct.DIRECT_MAX_WORK, dtype, 0)  # the general route (cuFFT)
        fx, fk = step(x, k)
    assert _rel(fx, gx) < tol and _rel(fk, gk) < tol
