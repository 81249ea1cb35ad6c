"""
tools/train/compare_c.py -- the tiny model through ldm.c and through diffusers,
same prompt, seed and sampler; prints how many uint8 pixels agree.

  diffusers: StableDiffusionPipeline (fp32, the exported fp16 weights) with
             DDIMScheduler (leading spacing, steps_offset 1, eta 0), one CPU
             torch.Generator seeded with S, context ids from open_clip's
             tokenizer (SD1 form: SOT, ids, EOT, EOT padding).
  ldm.c:     sd txt2img --rng cpu --schedule leading --seed S --n_samples 1
             (its uint8 conversion truncates as CompVis; the reference is
             compared after truncation too)
  usage:     .venv-ref/bin/python tools/train/compare_c.py --sd build/sd
             [--model tools/tiny-model] [--out build/tiny-compare]
Exit status 1 when an image differs by more than 1 in more than 0.1% of its
values (the project's tolerance for same-seed final images, docs/00-overview.md).
"""
import argparse
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny  # noqa: E402

PROMPTS = ["a red circle on the left", "左に赤い丸", "a blue square above a yellow triangle",
           "右に大きい緑の三角、背景は黒"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sd", default="build/sd")
    p.add_argument("--model", default="tools/tiny-model")
    p.add_argument("--out", default="build/tiny-compare")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args()
    import torch
    from diffusers import DDIMScheduler
    from PIL import Image
    torch.set_num_threads(1)
    pipe = train_tiny.load_pipeline(a.model)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    te = pipe.text_encoder
    bad = 0
    for k, prompt in enumerate(PROMPTS):
        d = os.path.join(a.out, f"p{k}")
        os.makedirs(d, exist_ok=True)
        with torch.no_grad():
            c = te(torch.from_numpy(train_tiny.tokenize([prompt]))).last_hidden_state
            u = te(torch.from_numpy(train_tiny.tokenize([""]))).last_hidden_state
        g = torch.Generator().manual_seed(a.seed)
        ref = pipe(prompt_embeds=c, negative_prompt_embeds=u, height=64, width=64,
                   num_inference_steps=a.steps, guidance_scale=a.scale, generator=g,
                   eta=0.0, output_type="np").images[0]
        ref = np.clip(ref, 0, 1) * 255
        Image.fromarray(ref.round().astype(np.uint8)).save(os.path.join(d, "diffusers.png"))
        cmd = [a.sd, "txt2img", "--ckpt", a.model, "--prompt", prompt, "--H", "64", "--W", "64",
               "--n_samples", "1", "--n_iter", "1", "--ddim_steps", str(a.steps),
               "--scale", str(a.scale), "--seed", str(a.seed), "--rng", "cpu",
               "--schedule", "leading", "--outdir", d, "--skip_grid"]
        sdir = os.path.join(d, "samples")
        if os.path.isdir(sdir):          # sd numbers its files on from the ones it finds
            for f in os.listdir(sdir):
                os.remove(os.path.join(sdir, f))
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"NOT OK  {prompt!r}: sd txt2img failed:\n{r.stderr}")
            bad += 1
            continue
        got = np.asarray(Image.open(os.path.join(d, "samples", "00000.png")).convert("RGB"))
        # ldm.c converts to uint8 by truncation (CompVis), diffusers by rounding:
        # compare with whichever of the two the C image follows.
        diffs = {m: np.abs(got.astype(int) - f(ref).astype(int))
                 for m, f in (("truncated", np.floor), ("rounded", np.round))}
        conv = max(diffs, key=lambda m: (diffs[m] == 0).mean())
        diff = diffs[conv]
        frac_eq = float((diff == 0).mean())
        frac_gt1 = float((diff > 1).mean())
        ok = frac_gt1 <= 1e-3
        bad += not ok
        print(f"{'OK    ' if ok else 'NOT OK'}  {prompt!r}: identical {100 * frac_eq:.2f}% of values ({conv}), "
              f"max diff {diff.max()}, >1 in {100 * frac_gt1:.3f}%  ({d})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
