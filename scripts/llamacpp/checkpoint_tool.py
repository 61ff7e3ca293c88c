#!/usr/bin/env python3
"""Tools for cross-checking seqmamba against llama.cpp's Mamba-1 implementation.

  to-gguf  CKPT OUT.gguf        write an f32 GGUF of an official-layout Mamba-1 checkpoint
                                (config.json + model.safetensors) with the tensor names and
                                metadata keys of llama.cpp's "mamba" architecture
  perturb  CKPT OUT_DIR [SEED]  copy a checkpoint with its weights pushed away from the
                                official initialisation, so that every part of the block
                                (norms, conv, D, out_proj, tied head) moves the logits

Needs numpy and the `gguf` package (PyPI, or gguf-py of a llama.cpp checkout on PYTHONPATH).
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

DTYPES = {"F32": np.float32}


def read_safetensors(path):
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            sys.exit(f"{path}: tensor {name} has dtype {info['dtype']}; only F32 is handled")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name, array in tensors.items():
        blob = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for blob in blobs:
            f.write(blob)


def gguf_name(name):
    """llama.cpp's tensor name for an official Mamba-1 tensor name (None: not stored)."""
    fixed = {"backbone.embedding.weight": "token_embd.weight",
             "backbone.norm_f.weight": "output_norm.weight",
             "lm_head.weight": None}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    if parts[:2] != ["backbone", "layers"]:
        sys.exit(f"unexpected tensor {name}")
    block = f"blk.{parts[2]}"
    rest = ".".join(parts[3:])
    per_layer = {"norm.weight": "attn_norm.weight",
                 "mixer.in_proj.weight": "ssm_in.weight",
                 "mixer.conv1d.weight": "ssm_conv1d.weight",
                 "mixer.conv1d.bias": "ssm_conv1d.bias",
                 "mixer.x_proj.weight": "ssm_x.weight",
                 "mixer.dt_proj.weight": "ssm_dt.weight",
                 "mixer.dt_proj.bias": "ssm_dt.bias",
                 "mixer.A_log": "ssm_a",
                 "mixer.D": "ssm_d",
                 "mixer.out_proj.weight": "ssm_out.weight"}
    if rest not in per_layer:
        sys.exit(f"unexpected tensor {name}")
    return f"{block}.{per_layer[rest]}"


def to_gguf(ckpt, out):
    import gguf

    ckpt = Path(ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    ssm = config.get("ssm_cfg", {})
    if ssm.get("layer", "Mamba1") != "Mamba1":
        sys.exit("only Mamba-1 checkpoints can be converted")
    tensors = read_safetensors(ckpt / "model.safetensors")
    d_model = config["d_model"]
    n_layer = config["n_layer"]
    d_inner = ssm.get("expand", 2) * d_model
    d_state = ssm.get("d_state", 16)
    dt_rank = ssm.get("dt_rank", "auto")
    if dt_rank == "auto":
        dt_rank = -(-d_model // 16)
    padded_vocab = tensors["backbone.embedding.weight"].shape[0]
    if "lm_head.weight" in tensors and not np.array_equal(
            tensors["lm_head.weight"], tensors["backbone.embedding.weight"]):
        sys.exit("untied LM heads are not handled")

    writer = gguf.GGUFWriter(str(out), "mamba")
    writer.add_context_length(1 << 20)
    writer.add_embedding_length(d_model)
    writer.add_feed_forward_length(0)
    writer.add_head_count(0)
    writer.add_block_count(n_layer)
    writer.add_ssm_conv_kernel(ssm.get("d_conv", 4))
    writer.add_ssm_inner_size(d_inner)
    writer.add_ssm_state_size(d_state)
    writer.add_ssm_time_step_rank(dt_rank)
    writer.add_layer_norm_rms_eps(config.get("layer_norm_epsilon", 1e-5))
    writer.add_ssm_dt_b_c_rms(False)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    # No tokenizer: token ids are fed directly; llama.cpp then takes the vocabulary size
    # from this key.
    writer.add_tokenizer_model("none")
    writer.add_vocab_size(padded_vocab)
    for name, array in tensors.items():
        target = gguf_name(name)
        if target is None:
            continue
        if name.endswith(".A_log"):
            array = -np.exp(array)
        if name.endswith("conv1d.weight"):
            array = array.reshape(array.shape[0], array.shape[-1])
        writer.add_tensor(target, np.ascontiguousarray(array, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def perturb(ckpt, out, seed):
    ckpt, out = Path(ckpt), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = read_safetensors(ckpt / "model.safetensors")
    for name, array in tensors.items():
        noise = rng.standard_normal(array.shape).astype(np.float32)
        if name.endswith("embedding.weight"):
            array *= 4.0
        elif name.endswith("norm.weight") or name.endswith("norm_f.weight"):
            array += 0.3 * noise
        elif name.endswith("out_proj.weight"):
            array *= 20.0
        elif name.endswith(".D"):
            array += 0.5 * noise
        elif name.endswith("conv1d.bias"):
            array += 0.2 * noise
        tensors[name] = array
    write_safetensors(out / "model.safetensors", tensors)
    for extra in ("config.json", "seqmamba.json"):
        if (ckpt / extra).exists():
            shutil.copy(ckpt / extra, out / extra)


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "to-gguf":
        to_gguf(args[1], args[2])
    elif len(args) in (3, 4) and args[0] == "perturb":
        perturb(args[1], args[2], int(args[3]) if len(args) == 4 else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
