#!/usr/bin/env python3
"""Reference values for the Rust DDIM scheduler, computed from the formulas with numpy.

The schedule is the one Wonder3D configures for diffusers' DDIMScheduler (0.19): 1000 training
steps, scaled_linear betas 0.00085 -> 0.012, epsilon prediction, set_alpha_to_one = false,
steps_offset = 1, "leading" spacing, eta = 1.0. Betas and their cumulative product are float32
as diffusers builds them (torch.linspace(..., dtype=float32) ** 2, torch.cumprod); the step
itself follows DDIMScheduler.step (DDIM paper eq. 12). diffusers is not needed.

    python3 scripts/ddim_reference.py > testdata/ddim_reference.json
"""
import json

import numpy as np

T = 1000
BETA_START, BETA_END = 0.00085, 0.012
ETA = 1.0
OFFSET = 1


def alphas_cumprod():
    betas = np.linspace(BETA_START**0.5, BETA_END**0.5, T, dtype=np.float64).astype(np.float32) ** 2
    return np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float32)


def timesteps(steps):
    ratio = T // steps
    return [int(x) for x in (np.arange(0, steps) * ratio).round()[::-1] + OFFSET]


def coefficients(ac, t, steps):
    prev_t = t - T // steps
    a_t = float(ac[t])
    a_prev = float(ac[prev_t]) if prev_t >= 0 else float(ac[0])  # set_alpha_to_one = false
    b_t, b_prev = 1 - a_t, 1 - a_prev
    variance = (b_prev / b_t) * (1 - a_t / a_prev)
    std = ETA * variance**0.5
    return [a_t**0.5, b_t**0.5, a_prev**0.5, (1 - a_prev - std**2) ** 0.5, std]


def step(ac, eps, t, sample, noise, steps):
    sa, sb, sap, direction, std = coefficients(ac, t, steps)
    x0 = (sample - sb * eps) / sa
    return sap * x0 + direction * eps + std * noise


def main():
    ac = alphas_cumprod()
    rng = np.random.default_rng(5)
    n = 16
    sample = rng.standard_normal(n).astype(np.float32)
    eps = rng.standard_normal(n).astype(np.float32)
    noise = rng.standard_normal(n).astype(np.float32)
    t = timesteps(50)[10]
    out = {
        "alphas_cumprod_at": [[i, float(ac[i])] for i in (0, 1, 20, 261, 500, 981, 999)],
        "timesteps_50": timesteps(50),
        "timesteps_10": timesteps(10),
        "coefficients_50": [[t_, coefficients(ac, t_, 50)] for t_ in (981, 501, 21, 1)],
        "step": {
            "steps": 50,
            "t": t,
            "sample": sample.tolist(),
            "eps": eps.tolist(),
            "noise": noise.tolist(),
            "prev_sample": step(ac, eps.astype(np.float64), t, sample.astype(np.float64), noise.astype(np.float64), 50).tolist(),
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
