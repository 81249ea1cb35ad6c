"""tools/bench/peers_unet.py -- one SD1 UNet evaluation in the peer runtimes,
for tools/bench/peers.sh: the same shapes as `sd unet --random sd1 --size HxW
--batch B` (diffusers UNet2DConditionModel with the SD1 config, random
weights, context [B,77,768], t = 981), fp32 on the CPU.

  peers_unet.py torch    [--threads N] [--size 64x64] [--batch 2] [--repeat 2]
  peers_unet.py openvino [...]   (the torch model converted by openvino.convert_model)

Prints one line "PEER <name> <seconds per evaluation>" (best of --repeat after
one warm-up evaluation) and nothing is asserted. Needs .venv-ref (make
reference-env; `pip install openvino` there for the OpenVINO line).
"""
import argparse
import sys
import time

SD1_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, down_block_types=(
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
    attention_head_dim=8, norm_num_groups=32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer", choices=["torch", "openvino"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="64x64")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    import torch
    from diffusers import UNet2DConditionModel
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    h, w = (int(v) for v in a.size.split("x"))
    unet = UNet2DConditionModel(**SD1_UNET).eval()
    x = torch.randn(a.batch, 4, h, w)
    t = torch.full((a.batch,), 981.0)
    ctx = torch.randn(a.batch, 77, 768)
    if a.peer == "torch":
        def run():
            with torch.no_grad():
                return unet(x, t, ctx).sample
        name = "pytorch-%s" % torch.__version__
    else:
        import openvino as ov

        class Wrap(torch.nn.Module):
            def __init__(self, u):
                super().__init__()
                self.u = u

            def forward(self, x, t, c):
                return self.u(x, t, c, return_dict=False)[0]
        with torch.no_grad():
            model = ov.convert_model(Wrap(unet), example_input=(x, t, ctx))
        core = ov.Core()
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": a.threads,
                                                      "INFERENCE_PRECISION_HINT": "f32"})
        del unet
        req = compiled.create_infer_request()

        def run():
            return req.infer([x.numpy(), t.numpy(), ctx.numpy()])
        name = "openvino-%s" % ov.__version__.split("-")[0]
    run()   # warm-up (one-time allocations, OpenVINO's first-inference compile)
    best = float("inf")
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    print("PEER %s %.2f" % (name, best))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
