"""The analytic model of samplers/analytic.c in Python, for reference scripts.

Data: every element of x0 drawn from the 1-D mixture sum_k w_k N(mu_k, s_k^2).
Noised (variance-exploding view): y = x0 + sigma n. Then, per element,
  D(y; sigma) = sum_k r_k(y) (mu_k + s_k^2/(s_k^2+sigma^2) (y - mu_k)),
  r_k(y) proportional to w_k N(y; mu_k, s_k^2 + sigma^2)
is the optimal denoiser, and the probability-flow ODE dy/dsigma = (y - D)/sigma
is solved in closed form for one Gaussian,
  y(sigma) = mu + (y(sigma0) - mu) sqrt(s^2+sigma^2) / sqrt(s^2+sigma0^2),
and by RK4 in u = log sigma (dy/du = y - D) for a mixture.
Plain numpy, float64; works on arrays of any shape (elementwise).

Use it as a k-diffusion model: `denoiser(w, mu, s)` returns a callable
model(x, sigma) -> D, which k_diffusion.sampling.sample_* accept directly.
"""
import math

import numpy as np

RK4_STEPS_PER_UNIT = 100  # the same resolution as LDM_ANALYTIC_RK4_STEPS


def denoise(y, sigma, w, mu, s):
    """D(y; sigma) elementwise (sigma > 0)."""
    y = np.asarray(y, dtype=np.float64)
    w, mu, s = (np.asarray(v, dtype=np.float64) for v in (w, mu, s))
    var = s[:, None] ** 2 + sigma ** 2                      # [K,1]
    d = y.reshape(1, -1) - mu[:, None]                      # [K,N]
    logp = np.log(w)[:, None] - 0.5 * np.log(var) - 0.5 * d * d / var
    r = np.exp(logp - logp.max(axis=0, keepdims=True))
    r /= r.sum(axis=0, keepdims=True)
    post = mu[:, None] + (s[:, None] ** 2 / var) * d        # E[x0 | y, component k]
    return (r * post).sum(axis=0).reshape(y.shape)


def flow(y, sigma_from, sigma_to, w, mu, s):
    """The exact ODE solution at sigma_to started from y at sigma_from."""
    y = np.asarray(y, dtype=np.float64)
    if len(w) == 1:
        s2 = s[0] ** 2
        return mu[0] + (y - mu[0]) * math.sqrt(s2 + sigma_to ** 2) / math.sqrt(s2 + sigma_from ** 2)
    sf, st = max(sigma_from, 1e-7), max(sigma_to, 1e-7)
    u0, u1 = math.log(sf), math.log(st)
    m = int(math.ceil(abs(u1 - u0) * RK4_STEPS_PER_UNIT)) + 1
    h = (u1 - u0) / m

    def f(yy, u):
        return yy - denoise(yy, math.exp(u), w, mu, s)

    for i in range(m):
        u = u0 + i * h
        k1 = f(y, u)
        k2 = f(y + h / 2 * k1, u + h / 2)
        k3 = f(y + h / 2 * k2, u + h / 2)
        k4 = f(y + h * k3, u + h)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def denoiser(w, mu, s):
    """A k-diffusion style model: model(x, sigma) -> D(x; sigma), torch tensors in and out."""
    import torch

    def model(x, sigma, **kwargs):
        sig = float(sigma.reshape(-1)[0])
        d = denoise(x.detach().cpu().double().numpy(), sig, w, mu, s)
        return torch.from_numpy(d).to(x.dtype)

    return model


if __name__ == "__main__":
    # self-check: two identical components take the RK4 path and must equal the closed form
    y0 = np.array([-30.0, -3.0, 0.1, 2.0, 40.0])
    a = flow(y0, 14.6, 0.03, [0.5, 0.5], [0.4, 0.4], [0.6, 0.6])
    b = flow(y0, 14.6, 0.03, [1.0], [0.4], [0.6])
    print("RK4 vs closed form, max diff", np.abs(a - b).max())
    assert np.abs(a - b).max() < 1e-9
