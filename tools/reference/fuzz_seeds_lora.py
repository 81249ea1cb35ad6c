"""
tools/reference/fuzz_seeds_lora.py -- seed corpora of tests/fuzz/fuzz_lora.c
and tests/fuzz/fuzz_embeddings.c, cut from the committed fixtures.

The LoRA fixtures (tests/fixtures/lora/tiny_*.safetensors, 120-220 KB) are
larger than `make fuzz`'s -max_len, so each seed keeps the tensors of a few
layers of one fixture (a text-encoder projection, a LoCon conv, an attention
projection; the alpha tensors and the safetensors metadata kept), bytes as
stored. The embedding fixtures are small and are copied whole.
Plain Python (no torch): python3 tools/reference/fuzz_seeds_lora.py
"""
import json
import os
import shutil
import struct

FIX = "tests/fixtures"
OUT = "tests/fuzz/seeds"


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return header, data[8 + n:]


def write_subset(src, dst, keep):
    """The tensors of src whose name contains one of `keep`, into dst."""
    header, body = read_safetensors(src)
    out_header, chunks, offset = {}, [], 0
    if "__metadata__" in header:
        out_header["__metadata__"] = header["__metadata__"]
    for name in sorted(k for k in header if k != "__metadata__"):
        if not any(k in name for k in keep):
            continue
        info = header[name]
        begin, end = info["data_offsets"]
        chunks.append(body[begin:end])
        out_header[name] = {"dtype": info["dtype"], "shape": info["shape"],
                            "data_offsets": [offset, offset + end - begin]}
        offset += end - begin
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(dst, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))
    print(f"{dst}: {len(out_header) - ('__metadata__' in out_header)} tensors, "
          f"{os.path.getsize(dst)} bytes")


def main():
    lora = os.path.join(OUT, "fuzz_lora")
    os.makedirs(lora, exist_ok=True)
    write_subset(f"{FIX}/lora/tiny_kohya.safetensors", f"{lora}/kohya_three_layers.safetensors",
                 ["lora_te_text_model_encoder_layers_0_self_attn_q_proj.",
                  "lora_unet_down_blocks_0_resnets_0_conv1.",
                  "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k."])
    write_subset(f"{FIX}/lora/tiny_peft.safetensors", f"{lora}/peft_two_layers.safetensors",
                 ["text_encoder.text_model.encoder.layers.1.self_attn.v_proj.",
                  "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_q."])
    write_subset(f"{FIX}/lora/tiny_peft_alpha.safetensors", f"{lora}/peft_alpha_metadata.safetensors",
                 ["unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0."])
    emb = os.path.join(OUT, "fuzz_embeddings")
    os.makedirs(emb, exist_ok=True)
    for d in [f"{FIX}/embeddings", f"{FIX}/embeddings/sd2"]:
        for name in sorted(os.listdir(d)):
            if name.endswith((".pt", ".safetensors")):
                shutil.copyfile(os.path.join(d, name), os.path.join(emb, name))
                print(f"{emb}/{name}")


if __name__ == "__main__":
    main()
