#!/usr/bin/env python3
"""The peer of `wgtune bench --methods`: the same training step with torch + transformers + peft.

Same model shapes (random init, or a GGUF/HF model via --model), same methods and settings
(LoRA r 16, alpha 32; OFT block 32, Cayley-Neumann 5 terms; all seven projections; q* methods on
a bitsandbytes NF4 base), same step (forward + loss, backward, grad-norm clip 1.0 + AdamW), same
JSON schema (benches/schema.json). Median of --iters steps after one warm-up.

    python benches/peer/peft_bench.py --methods lora,oft,qlora,qoft --threads 2 --json peer.json

CPU by default (torch threads = --threads); --device cuda on a GPU (peak memory from
torch.cuda.max_memory_allocated; on the CPU peak memory is reported as null). Attention is
transformers' default (sdpa), what a user of the peer gets. `oft-v1` (weight-centric OFT) has no
peft 0.21 implementation and is reported as skipped.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peft import LoraConfig, OFTConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

ALL7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapter_config(method):
    if method in ("lora", "qlora"):
        return LoraConfig(r=16, lora_alpha=32, target_modules=ALL7, lora_dropout=0.0, bias="none",
                          task_type="CAUSAL_LM")
    return OFTConfig(r=0, oft_block_size=32, target_modules=ALL7, use_cayley_neumann=True,
                     num_cayley_neumann_terms=5, module_dropout=0.0, task_type="CAUSAL_LM")


def base_model(args, method, workdir):
    quant = method.startswith("q")
    kwargs = {}
    if quant:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    if args.model:
        path = args.model
        if args.model.endswith(".gguf"):
            gguf = dict(gguf_file=os.path.basename(args.model))
            path = os.path.dirname(os.path.abspath(args.model))
            if quant:
                # transformers cannot quantize while loading a GGUF: dequantize it to an f32 folder
                # once, then load that with bitsandbytes.
                dense = os.path.join(workdir, "gguf-f32")
                if not os.path.isdir(dense):
                    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **gguf)
                    cfg = m.config
                    if hasattr(cfg, "quantization_config"):
                        del cfg.quantization_config  # the GGUF tag; the weights are f32 now
                    fresh = type(m)(cfg)
                    fresh.load_state_dict(m.state_dict())
                    fresh.save_pretrained(dense)
                path = dense
            else:
                kwargs.update(gguf)
    else:
        path = os.path.join(workdir, "random")
        if not os.path.isdir(path):
            torch.manual_seed(0)
            cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                              intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                              num_attention_heads=args.heads, num_key_value_heads=args.heads,
                              tie_word_embeddings=False)
            LlamaForCausalLM(cfg).save_pretrained(path)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map=args.device, **kwargs)
    return m


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench(args, method, workdir):
    model = get_peft_model(base_model(args, method, workdir), adapter_config(method))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    vocab = model.config.vocab_size
    ids = torch.tensor([[(b * 7919 + t * 104729 + 13) % vocab for t in range(args.seq)]
                        for b in range(args.batch)], device=args.device)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for i in range(args.iters + 1):
        sync(args.device)
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.item()
        sync(args.device)
        t1 = time.perf_counter()
        loss.backward()
        sync(args.device)
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(args.device)
        t3 = time.perf_counter()
        if i > 0:
            rows.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2))
    med = lambda c: statistics.median(r[c] for r in rows) * 1e3  # noqa: E731
    step_ms = med(0)
    return {
        "method": method,
        "tokens_per_s": args.batch * args.seq / (step_ms / 1e3),
        "step_ms": step_ms,
        "forward_ms": med(1),
        "backward_ms": med(2),
        "optimizer_ms": med(3),
        "peak_mem_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "trainable_params": sum(p.numel() for p in params),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="lora,oft,oft-v1,qlora,qoft")
    ap.add_argument("--model", help="HF folder or .gguf (default: random init of the shape flags)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1376)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model_desc = ({"path": args.model} if args.model else
                  {"heads": args.heads, "hidden": args.hidden, "intermediate": args.intermediate,
                   "layers": args.layers, "vocab": args.vocab})
    backend = (f"torch {torch.__version__} {args.device}" +
               (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else
                f" ({args.threads} threads)"))
    print(f"{backend} | transformers {transformers.__version__} peft {peft.__version__} | {model_desc} | "
          f"batch {args.batch} x seq {args.seq}, median of {args.iters} steps after 1 warm-up", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for method in [m for m in args.methods.split(",") if m]:
            if method == "oft-v1":
                print("oft-v1   skipped: peft 0.21 has no weight-centric OFT", flush=True)
                continue
            r = bench(args, method, workdir)
            mem = "-" if r["peak_mem_bytes"] is None else f"{r['peak_mem_bytes'] / 2**20:.1f}"
            print(f"{method:<7} {r['tokens_per_s']:>9.1f} {r['step_ms']:>9.1f} {r['forward_ms']:>8.1f} "
                  f"{r['backward_ms']:>8.1f} {r['optimizer_ms']:>8.1f} {mem:>10} {r['trainable_params']:>11}",
                  flush=True)
            results.append(r)
    out = {"tool": "torch+peft", "version": f"torch {torch.__version__}, transformers {transformers.__version__}, "
           f"peft {peft.__version__}", "backend": backend, "model": model_desc, "batch": args.batch,
           "seq": args.seq, "iters": args.iters, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
