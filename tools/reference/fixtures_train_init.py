"""
tools/reference/fixtures_train_init.py -- the initial weights PyTorch gives the
tiny model's three components (tools/train/train_tiny.py VAE_CFG, UNET_CFG,
TEXT_CFG), described tensor by tensor, for tests/test_train_loop.c to check
ldm/train/init.c against: the names, shapes and order of named_parameters(),
and each tensor's statistics (its values are torch's random numbers, which
ldm.c does not reproduce; the distributions must agree).

Writes tests/fixtures/train/init/{unet,vae,text_encoder}.tsv, one line per
parameter: name, shape (comma-separated), mean, std, max |x| (float64 over the
tensor; std with n - 1).

  .venv-ref/bin/python tools/reference/fixtures_train_init.py
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "train"))
import train_tiny  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "train", "init")


def main():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    models = [("vae", AutoencoderKL(**train_tiny.VAE_CFG)),
              ("unet", UNet2DConditionModel(**train_tiny.UNET_CFG)),
              ("text_encoder", CLIPTextModel(CLIPTextConfig(**train_tiny.TEXT_CFG)))]
    os.makedirs(OUT, exist_ok=True)
    for name, m in models:
        with open(os.path.join(OUT, name + ".tsv"), "w") as f:
            for n, p in m.named_parameters():
                x = p.detach().double()
                std = x.std().item() if x.numel() > 1 else 0.0
                f.write(f"{n}\t{','.join(str(s) for s in p.shape)}\t{x.mean().item():.6g}\t"
                        f"{std:.6g}\t{x.abs().max().item():.6g}\n")
        print(f"{name}: {len(list(m.parameters()))} tensors")


if __name__ == "__main__":
    main()
