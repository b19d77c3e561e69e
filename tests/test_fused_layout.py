"""CPU checks of the fused kernel's index conventions.

A float64 NumPy model follows ``cuda_src/fused_conv.cu`` step by step (outer fp32 stages in place,
256-point tensor-core segments in the accumulator layout of ``inner256.cuh``, the spectrum stored
in :func:`longconv._fused.spectrum_order`), so the permutation, the twiddles, the scaling and the
output windows are proven here without a GPU; the GPU tests then compare the kernel itself with
the float64 oracle.
"""

from pathlib import Path

import numpy as np
import pytest

from longconv import _fused


def dft(r, sign=-1):
    j = np.arange(r)
    return np.exp(sign * 2j * np.pi * np.outer(j, j) / r)


def outer_forward(z, size, r, twiddle=True):
    """In-place outer stage on every segment of length `size` of z (last axis)."""
    s = size // r
    seg = z.reshape(*z.shape[:-1], -1, r, s)
    k, q = np.arange(r)[:, None], np.arange(s)[None, :]
    tw = (np.exp(-2j * np.pi * q * k / size) if twiddle else 1) / np.sqrt(r)
    out = np.einsum("kp,...ps->...ks", dft(r), seg) * tw
    return out.reshape(z.shape)


def outer_inverse(z, size, r, twiddle=True):
    s = size // r
    seg = z.reshape(*z.shape[:-1], -1, r, s)
    k, q = np.arange(r)[:, None], np.arange(s)[None, :]
    if twiddle:
        seg = seg * np.exp(2j * np.pi * q * k / size)
    return np.einsum("pk,...ks->...ps", dft(r, +1), seg).reshape(z.shape)


def inner_conv(z, kl, M, kfold):
    """Every 256-point segment: stages a, b, product, b', a' of inner256.cuh, with the outer
    stages' twiddle W_M^(k (16 p + q)), k = kfold(segment), folded in as seg_consts does."""
    n = z.shape[-1]
    F = dft(16)
    k2, q = np.arange(16)[:, None], np.arange(16)[None, :]
    order = _fused._inner_order()
    out = np.empty_like(z)
    for s in range(n // 256):
        k = kfold(s)
        p = np.arange(16)
        Fa = F * np.exp(-2j * np.pi * 16 * k * p / M)[None, :]           # column scaling
        Ga = (F * np.exp(-2j * np.pi * 16 * k * p / M)[:, None]).conj()  # row scaling
        tw = np.exp(-2j * np.pi * k2 * q / 256) * np.exp(-2j * np.pi * k * q / M)
        X = z[..., 256 * s: 256 * (s + 1)].reshape(*z.shape[:-1], 16, 16)
        C = (Fa / 4) @ X * tw
        D = C @ (F / 4)
        K = np.empty((16, 16), complex)
        K[order % 16, order // 16] = kl[s]
        E = (D * K) @ F.conj() * tw.conj()
        Y = Ga @ E
        out[..., 256 * s: 256 * (s + 1)] = Y.reshape(*z.shape[:-1], 256)
    return out


def mid_stage(z, n, inverse):
    """Radix 16 at stride 256 on each 4096-point segment k, its matrix carrying W_N^(256 k p)."""
    F = dft(16)
    p = np.arange(16)
    out = np.empty_like(z)
    for k in range(n // 4096):
        seg = z[4096 * k: 4096 * (k + 1)].reshape(16, 256)
        w = np.exp(-2j * np.pi * 256 * k * p / n)
        if inverse:
            out[4096 * k: 4096 * (k + 1)] = ((F * w[:, None]).conj() @ seg).reshape(-1)
        else:
            out[4096 * k: 4096 * (k + 1)] = ((F * w[None, :]) / 4 @ seg).reshape(-1)
    return out


def model(x0, x1, k, mode):
    """What the kernel computes for one pair of sequences, in float64."""
    L, Lk = x0.shape[-1], k.shape[-1]
    n, off, lout, fold = _fused.fft_size_for(mode, L, Lk)
    kk = k.astype(float)
    if mode == "circular":
        reps = -(-Lk // L)
        kk = np.concatenate([kk, np.zeros(reps * L - Lk)]).reshape(reps, L).sum(0)
    spec = np.fft.fft(kk, n) / np.sqrt(n)
    kl = spec[_fused.spectrum_order(n).reshape(-1)].reshape(n // 256, 32, 8)
    z = np.zeros(n, complex)
    z[:L] = x0 + 1j * x1
    nseg = n // 256
    if nseg <= 16:
        if nseg > 1:
            z = outer_forward(z, n, nseg, twiddle=False)
        z = inner_conv(z, kl, n, lambda s: s)
        if nseg > 1:
            z = outer_inverse(z, n, nseg, twiddle=False)
    else:
        r1 = nseg // 16
        z = outer_forward(z, n, r1, twiddle=False)
        z = mid_stage(z, n, inverse=False)
        z = inner_conv(z, kl, n, lambda s: r1 * (s % 16) + s // 16)
        z = mid_stage(z, n, inverse=True)
        z = outer_inverse(z, n, r1, twiddle=False)
    if fold:
        z = z[:fold] + z[fold: 2 * fold]
        return z.real, z.imag
    return z.real[off: off + lout], z.imag[off: off + lout]


def reference(x, k, mode):
    L = x.shape[-1]
    full = np.convolve(x, k)
    if mode == "causal":
        return full[:L]
    if mode == "circular":
        y = np.zeros(L)
        for s, tap in enumerate(k):
            y += tap * np.roll(x, s)
        return y
    _, off, lout = _fused.window(mode, L, len(k))
    return full[off: off + lout]


@pytest.mark.parametrize("n", [256, 512, 1024, 4096, 8192, 32768])
def test_spectrum_order_is_a_permutation(n):
    order = _fused.spectrum_order(n).reshape(-1)
    assert np.array_equal(np.sort(order), np.arange(n))


@pytest.mark.parametrize(
    "L, Lk, mode",
    [(128, 128, "causal"), (97, 40, "causal"), (1000, 1000, "causal"), (2048, 2048, "causal"),
     (4097, 4097, "causal"), (256, 256, "circular"), (4096, 300, "circular"),
     (1000, 1000, "circular"), (300, 500, "circular"), (300, 41, "same"), (200, 301, "full"),
     (500, 77, "valid"), (77, 500, "valid"), (3, 1, "causal")],
)
def test_model_matches_convolution(L, Lk, mode):
    rng = np.random.default_rng(L * 7 + Lk)
    x0, x1, k = rng.standard_normal(L), rng.standard_normal(L), rng.standard_normal(Lk)
    y0, y1 = model(x0, x1, k, mode)
    for y, x in ((y0, x0), (y1, x1)):
        ref = reference(x, k, mode)
        assert y.shape == ref.shape
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-9 * max(1, np.abs(ref).max()))


def test_model_freq_keep_matches_masked_reference():
    rng = np.random.default_rng(3)
    L = 512
    x, k = rng.standard_normal(L), rng.standard_normal(L)
    n = _fused.fft_size_for("causal", L, L)[0]
    keep = int(np.ceil(0.3 * (n // 2 + 1)))
    kf = np.fft.rfft(k, n)
    kf[keep:] = 0
    ref = np.fft.irfft(np.fft.rfft(x, n) * kf, n)[:L]
    spec = np.fft.fft(k, n)
    j = np.arange(n)
    spec[np.minimum(j, n - j) >= keep] = 0
    got = np.fft.ifft(np.fft.fft(x, n) * spec).real[:L]
    np.testing.assert_allclose(got, ref, atol=1e-10)


@pytest.mark.parametrize("mode, L, Lk, expect", [
    ("causal", 2048, 2048, (4096, 0, 2048, 0)),
    ("causal", 1, 1, (256, 0, 1, 0)),
    ("causal", 4097, 10, (8192, 0, 4097, 0)),
    ("circular", 4096, 9000, (4096, 0, 4096, 0)),
    ("circular", 1000, 1000, (2048, 0, 1000, 1000)),
    ("same", 1000, 101, (2048, 50, 1000, 0)),
    ("valid", 1000, 101, (2048, 100, 900, 0)),
    ("full", 1000, 101, (2048, 0, 1100, 0)),
])
def test_fft_size_for(mode, L, Lk, expect):
    assert _fused.fft_size_for(mode, L, Lk) == expect


def test_params_dtype_matches_the_c_struct():
    from longconv import _compile

    if not _compile.nvrtc_available():
        pytest.skip("NVRTC library not found")
    # Only the struct's header (and what it includes): the whole kernel takes far longer to build.
    root = Path(_fused.__file__).resolve().parent.parent / "cuda_src"
    if not (root / "params.cuh").exists():
        import importlib.resources

        root = importlib.resources.files("longconv.cuda_src")
    source = "\n".join(
        line for name in ("common.cuh", "params.cuh")
        for line in (root / name).read_text().splitlines() if not line.startswith("#include")
    )
    _compile.check_layout(source, "ConvParams", _fused.PARAMS_DTYPE)


def smem_index(j):
    s = (j >> 8) ^ (j >> 12)
    return j ^ (((((j >> 6) ^ s) & 1) | (s & 6)) << 3)


def outer_rows(blk, lr, S):
    """Row start positions of block `blk` of the tensor-core outer stage (outer_tc.cuh)."""
    R, half = 1 << lr, (1 << lr) >> 1
    per_seg = (S << lr) >> 8
    seg, bb = divmod(blk, per_seg)
    base = seg * (S << lr) + (bb // half) * 128 + (bb % half) * 16
    return [base + 8 * R * (r >> lr) + S * (r & (R - 1)) for r in range(16)]


def banks_of_tile(rows):
    """16-byte bank groups hit by the 8 rows of one ldmatrix tile (one per row)."""
    return {(smem_index(r) >> 3) & 7 for r in rows}


@pytest.mark.parametrize("n, lr, S", [(512, 1, 256), (1024, 2, 256), (2048, 3, 256),
                                      (4096, 4, 256), (8192, 1, 4096), (16384, 2, 4096),
                                      (32768, 3, 4096), (32768, 4, 256)])
def test_outer_stage_blocks_cover_every_point_once_without_bank_conflicts(n, lr, S):
    seen = []
    for blk in range(n // 256):
        rows = outer_rows(blk, lr, S)
        seen += [r + q for r in rows for q in range(16)]
        for half in (rows[:8], rows[8:]):
            for chunk in (0, 8):
                assert len(banks_of_tile([r + chunk for r in half])) == 8
    assert sorted(seen) == list(range(n))


def test_segment_tiles_and_load_phase_are_conflict_free():
    for base in range(0, 32768, 256):
        for half in (0, 8):
            for chunk in (0, 8):
                rows = [base + 16 * (half + r) + chunk for r in range(8)]
                assert len(banks_of_tile(rows)) == 8
    for start in range(0, 32768, 64):  # 8 consecutive 16-byte chunks (copy phases)
        assert len({(smem_index(start + 8 * c) >> 3) & 7 for c in range(8)}) == 8


def test_swizzle_is_a_permutation_of_each_plane():
    for n in (256, 4096, 32768):
        assert sorted(smem_index(j) for j in range(n)) == list(range(n))


OUTER_STAGES = [(512, 1, 256), (1024, 2, 256), (2048, 3, 256), (4096, 4, 256), (8192, 1, 4096),
                (16384, 2, 4096), (32768, 3, 4096), (32768, 4, 256)]


@pytest.mark.parametrize("n, lr, S", OUTER_STAGES)
def test_swizzle_splits_into_block_base_and_lane_part(n, lr, S):
    # The kernels compute smem_index once per block base and once per lane offset and XOR the two
    # (inner256.cuh, lane_idx): that needs disjoint bits and a swizzle linear over GF(2).
    R = 1 << lr
    offsets = [8 * R * (r >> lr) + S * (r & (R - 1)) + c for r in range(16) for c in range(16)]
    for blk in range(n // 256):
        base = outer_rows(blk, lr, S)[0]
        for off in offsets:
            assert base & off == 0
            assert smem_index(base + off) == smem_index(base) ^ smem_index(off)
    for base in range(0, 32768, 256):  # 256-point segments: row r at 16 r
        for off in range(256):
            assert smem_index(base + off) == smem_index(base) ^ smem_index(off)


@pytest.mark.parametrize("n, lr, S", [st for st in OUTER_STAGES if st[2] << st[1] == st[0]])
def test_causal_forms_touch_exactly_the_lower_half(n, lr, S):
    # First outer stage (the one spanning the whole sequence) with a zero upper half of the input:
    # each block reads only its rows p < R / 2, which must be exactly its rows below n / 2 and,
    # over all blocks, cover the lower half once; the last inverse stage stores those same rows
    # (outer_tc.cuh, half_idx).
    R = 1 << lr
    seen = []
    for blk in range(n // 256):
        rows = outer_rows(blk, lr, S)
        lower = [rows[r] for r in range(16) if (r & (R - 1)) < R // 2]
        assert sorted(lower) == sorted(x for x in rows if x < n // 2)
        seen += [x + q for x in lower for q in range(16)]
        # the ldmatrix.x2 tile of the 8 lower rows: at most a 2-way bank conflict (none for
        # R = 2 and 16), i.e. no worse than the x4 load of all 16 rows it replaces
        for chunk in (0, 8):
            assert len(banks_of_tile([x + chunk for x in lower])) >= (4 if R in (4, 8) else 8)
    assert sorted(seen) == list(range(n // 2))


@pytest.mark.parametrize("n", [256, 2048])
def test_dk_reduction_formulas_match_the_complex_inverse(rng, n):
    """The two dk reductions of kspec.cuh, modelled in float64 on partial spectra in fragment
    order: the Hermitian half X[f] = (A[f] + conj(A[N - f])) / 2 summed directly with the
    weights c_f (lc_kspec_dk, the twiddle advanced by a recurrence reseeded every 32 bins as
    there) and through an unscaled inverse real FFT (lc_dk_gather), against Re(N ifft(A))."""
    S = 3
    dks = rng.standard_normal((S, n)) + 1j * rng.standard_normal((S, n))
    fpos = np.argsort(_fused.spectrum_order(n).reshape(-1))
    A = dks.sum(axis=0)[fpos]                       # natural frequency order
    want = (n * np.fft.ifft(A)).real
    row = dks.sum(axis=0)
    f = np.arange(n // 2 + 1)
    pair = row[fpos[f]] + np.conj(row[fpos[(n - f) % n]])
    got_fft = np.fft.irfft(pair / 2, n=n, norm="forward")
    np.testing.assert_allclose(got_fft, want, rtol=0, atol=1e-9 * np.abs(want).max())
    xs = pair * np.where((f == 0) | (f == n // 2), 0.5, 1.0)
    split, reseed = 4, 32
    t = np.arange(n)
    direct = np.zeros(n)
    for fs in range(split):
        step = np.exp(-2j * np.pi * split * t / n).astype(np.complex64)
        for f0 in range(fs, n // 2 + 1, split * reseed):
            w = np.exp(-2j * np.pi * ((f0 * t) % n) / n).astype(np.complex64)
            for ff in range(f0, min(n // 2 + 1, f0 + split * reseed), split):
                direct += xs[ff].real * w.real + xs[ff].imag * w.imag
                w = (w * step).astype(np.complex64)
    err = np.abs(direct - want).max() / np.abs(want).max()
    assert err < 2e-5, err


def test_segment_causal_form_reads_and_writes_the_lower_half():
    # N = 256 causal forms (inner256.cuh, conv_segment_half): stage a loads rows p < 8 of
    # x[16 p + q] by ldmatrix.x2 (tile h: columns 8 h .. 8 h + 7), stage a' stores rows p < 8;
    # together exactly the positions below 128, each tile conflict-free
    seen = []
    for h in (0, 1):
        rows = [16 * r + 8 * h for r in range(8)]
        assert len(banks_of_tile(rows)) == 8
        seen += [x + q for x in rows for q in range(8)]
    assert sorted(seen) == list(range(128))
    # the transposed stage a' (y^T = E^T G^T, n-tile p < 8) equals y's rows p < 8
    rng = np.random.default_rng(0)
    G = rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))
    E = rng.standard_normal((16, 16)) + 1j * rng.standard_normal((16, 16))
    np.testing.assert_allclose((E.T @ G.T)[:, :8].T, (G @ E)[:8], atol=1e-12)
    # stage a on the lower rows: F[:, :8] x[:8] is F x for x zero from row 8 on
    X = np.vstack([rng.standard_normal((8, 16)), np.zeros((8, 16))])
    np.testing.assert_allclose(dft(16)[:, :8] @ X[:8], dft(16) @ X, atol=1e-12)
