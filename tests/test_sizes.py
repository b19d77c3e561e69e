import pytest

from longconv import _sizes
from longconv._sizes import decomposition, fft_size, plan_fft_size


@pytest.mark.parametrize("n_min, expected", [(1, 2), (2, 2), (3, 4), (4, 4), (5, 8), (4095, 4096),
                                             (4096, 4096), (4097, 8192), (2**40, 2**40)])
def test_fft_size(n_min, expected):
    assert fft_size(n_min) == expected


def test_fft_size_is_smallest_table_entry():
    for n in range(1, 3000):
        s = fft_size(n)
        assert s in _sizes.TABLE and s >= n
        assert s == 2 or s // 2 < n


@pytest.mark.parametrize("bad, exc, msg", [
    (0, ValueError, "n_min must be >= 1; got 0"),
    (2**40 + 1, ValueError, "n_min must be <= 2**40 (the largest FFT size); got 1099511627777"),
    (3.0, TypeError, "n_min must be an int; got float"),
    (True, TypeError, "n_min must be an int; got bool"),
])
def test_fft_size_errors(bad, exc, msg):
    with pytest.raises(exc) as e:
        fft_size(bad)
    assert str(e.value) == msg


@pytest.mark.parametrize("n, radices", [(2, (2,)), (8, (8,)), (16, (16,)), (32, (16, 2)),
                                        (256, (16, 16)), (2048, (16, 16, 8)),
                                        (4096, (16, 16, 16)), (2**20, (16,) * 5)])
def test_decomposition(n, radices):
    assert decomposition(n) == radices


def test_decomposition_covers_table():
    for n in _sizes.TABLE:
        r = decomposition(n)
        prod = 1
        for v in r:
            prod *= v
        assert prod == n
        assert all(v == 16 for v in r[:-1]) and r[-1] in (2, 4, 8, 16)


@pytest.mark.parametrize("bad", [3, 12, 0, 2**41, 4096.0, "4096"])
def test_decomposition_rejects_non_table_sizes(bad):
    with pytest.raises(ValueError, match=r"n must be a power of two between 2 and 2\*\*40; got"):
        decomposition(bad)


@pytest.mark.parametrize("mode, L, Lk, n", [
    ("causal", 1024, 1024, 2048), ("causal", 1024, 5000, 2048), ("causal", 1000, 10, 1024),
    ("causal", 1, 1, 2), ("circular", 1024, 3, 1024), ("circular", 1000, 3, 2048),
    ("circular", 1, 7, 2), ("full", 1000, 25, 1024), ("same", 1000, 26, 2048),
    ("valid", 4097, 4097, 16384),
])
def test_plan_fft_size(mode, L, Lk, n):
    assert plan_fft_size(mode, L, Lk) == n


def test_plan_fft_size_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        plan_fft_size("bogus", 4, 4)
    with pytest.raises(ValueError, match="L must be >= 1; got 0"):
        plan_fft_size("causal", 0, 4)
    with pytest.raises(TypeError, match="Lk_eff must be an int; got float"):
        plan_fft_size("causal", 4, 4.0)
