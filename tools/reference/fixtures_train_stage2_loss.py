"""Fixtures for tests/test_train_stage2_loss.c: the stage-2 objective of
tools/train/train_tiny.py (LDM eq. 2 with the min-SNR weights of Hang et al.
2023) and its gradient, for ldm/train/loss.c.

tests/fixtures/train/stage2_loss/<name>.npy (float32):
  abar       [1000] DDPMScheduler(scaled_linear, 0.00085..0.012).alphas_cumprod
  w_g5       [1000] min(SNR, 5) / SNR, SNR = abar / (1 - abar), in float32 as
                    train_tiny.py computes it (torch.clamp(snr, max=5) / snr)
  w_g1       [1000] the same with gamma = 1
  pred, eps  [3,4,8,8] a batch of predictions and targets
  t          [3] timesteps (as floats): one with SNR > 5, one between, one below 1
  loss       [1] (w_g5[t] * per).mean(), per = ((pred - eps)^2).mean(dims 1..3)
  mse        [1] per.mean()
  dpred      [3,4,8,8] dloss/dpred from autograd in float64
Run: .venv-ref/bin/python tools/reference/fixtures_train_stage2_loss.py (or `make fixtures`).
"""
import os

import numpy as np
import torch
from diffusers import DDPMScheduler

OUT = os.path.join("tests", "fixtures", "train", "stage2_loss")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(5)


def save(name, t):
    np.save(os.path.join(OUT, name + ".npy"), t.detach().to(torch.float32).numpy())


sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", prediction_type="epsilon")
abar = sched.alphas_cumprod.float()
snr = abar / (1 - abar)
save("abar", abar)
for gamma in (5, 1):
    save(f"w_g{gamma}", torch.clamp(snr, max=gamma) / snr)
w5 = torch.clamp(snr, max=5) / snr

t = torch.tensor([40, 200, 700])                      # SNR 25, 3.1, 0.09
pred, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
save("pred", pred)
save("eps", eps)
save("t", t.float())
p64 = pred.double().requires_grad_(True)
per = (p64 - eps.double()).pow(2).mean(dim=(1, 2, 3))
loss = (w5[t].double() * per).mean()
(dpred,) = torch.autograd.grad(loss, [p64])
save("loss", loss.reshape(1))
save("mse", per.mean().reshape(1))
save("dpred", dpred)
print(f"fixtures_train_stage2_loss: SNR at t = {t.tolist()}: {snr[t].tolist()}; loss {loss.item():.6f}")
