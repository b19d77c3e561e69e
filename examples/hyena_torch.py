"""A small Hyena-style causal long-convolution layer in PyTorch, trained for a few steps.

The layer projects its input to three streams ``v, a, b``, convolves ``a * v`` with one long
learned filter per channel (as long as the sequence), gates the result with ``b``, adds a
per-channel skip of ``v`` and projects back::

    y = out_proj(b * causal_conv(a * v, k) + skip * v)

which is one call of ``longconv.convolve(v, k, pregate=a, postgate=b, skip=skip)``;
gradients flow through the custom operator ``longconv::convolve``. The same layer written
with ``torch.fft`` serves as the reference: outputs and gradients must agree to float32
tolerance. Training is Adam on random data; it runs on the CPU in a few seconds::

    python examples/hyena_torch.py
"""

from __future__ import annotations

import torch

import longconv


class HyenaConv(torch.nn.Module):
    """``x`` (B, L, D) -> (B, L, D); ``fft_reference=True`` convolves with ``torch.fft``."""

    def __init__(self, width, length, fft_reference=False):
        super().__init__()
        self.fft_reference = fft_reference
        self.in_proj = torch.nn.Linear(width, 3 * width)
        self.out_proj = torch.nn.Linear(width, width)
        decay = torch.exp(-torch.arange(length) / (0.1 * length))
        self.k = torch.nn.Parameter(torch.randn(width, length) * decay / length ** 0.5)
        self.skip = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        v, a, b = self.in_proj(x).transpose(1, 2).chunk(3, dim=1)  # each (B, D, L)
        if self.fft_reference:
            L = x.shape[1]
            n = 2 * L
            c = torch.fft.irfft(torch.fft.rfft(a * v, n=n) * torch.fft.rfft(self.k, n=n),
                                n=n)[..., :L]
            y = b * c + self.skip[:, None] * v
        else:
            y = longconv.convolve(v, self.k, pregate=a, postgate=b, skip=self.skip)
        return self.out_proj(y.transpose(1, 2))


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def check_against_reference(layer, x):
    """Outputs and every parameter's gradient agree with the ``torch.fft`` layer."""
    ref = HyenaConv(layer.k.shape[0], layer.k.shape[1], fft_reference=True)
    ref.load_state_dict(layer.state_dict())
    target = torch.randn_like(x)
    outs = []
    for m in (layer, ref):
        m.zero_grad()
        y = m(x)
        torch.nn.functional.mse_loss(y, target).backward()
        outs.append((y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (y, g), (yr, gr) = outs
    assert rel_err(y, yr) < 1e-5, rel_err(y, yr)
    for name in g:
        assert rel_err(g[name], gr[name]) < 1e-4, (name, rel_err(g[name], gr[name]))
    layer.zero_grad()


def main(steps=20, batch=8, length=256, width=16, seed=0):
    torch.manual_seed(seed)
    layer = HyenaConv(width, length)
    x = torch.randn(batch, length, width)
    check_against_reference(layer, x)
    # a target the layer can represent: a fixed random layer of the same shape
    teacher = HyenaConv(width, length)
    with torch.no_grad():
        target = teacher(x)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    check_against_reference(layer, x)
    layer.eval()
    with torch.no_grad():
        y = layer(x)
    assert torch.isfinite(y).all()
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} in {steps} Adam steps")
    assert losses[-1] < losses[0]
    return losses


if __name__ == "__main__":
    main()
