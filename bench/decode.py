"""Batched greedy decoding: pangu.generate vs transformers' generate on the same weights.

    python bench/decode.py                       # CPU float32, ~100 M Pangu-shaped model
    python bench/decode.py --device cuda --dtype bfloat16 --shape 7b --batch 1 8

Both sides get the same prompt embeddings (different lengths, pads inside), greedy, KV
cache, no eos, max_new_tokens; tokens/s counts new tokens over the whole call (prefill
included). On the CPU "ours" is timed twice: with plain nn.Linear (F.linear, the kernels
transformers calls too) and after `pack_for_cpu` (oneDNN with weights packed once), the way
to decode on a CPU. With --shape 7b the weights are random and no transformers model is built
unless --hf is given; it also prints the fraction of the memory-bandwidth bound: one
decode step must read every weight once, so the bound is bandwidth / weight bytes steps/s.
On a CPU shared with other jobs use --threads 1: two OpenMP threads that get descheduled
made every GEMM up to 5x slower here, for both sides alike.

Why `cpu_decode.pack_for_cpu` pays (AMD EPYC, float32): a decode step multiplies a few rows (one
per sequence) by every weight matrix; for 8 rows times the MLP and head matrices, F.linear (MKL)
took about 1.8x as long as oneDNN's product with the weight packed ahead of time into its blocked
layout, and packing once costs nothing per step. The row hint `cpu_decode.ROWS_HINT = 1`: on one
thread it decoded batch 1 faster than no hint or 8 did, and batch 8 as fast (within noise on two
threads). --compile swaps `pangu.decode_step`, which generate() looks up at every call, for a
torch.compile'd one while that side is timed.
"""

import argparse
import copy
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pangu  # noqa: E402
from checkpoint import count_params  # noqa: E402
from cpu_decode import pack_for_cpu  # noqa: E402
from pangu import Pangu, PanguConfig, generate  # noqa: E402

SHAPES = {
    # ~100 M parameters: 12 layers of width 768, GQA 12/4 heads, biases, 16 k vocab
    "100m": dict(vocab_size=16000, dim=768, n_layers=12, n_heads=12, n_kv_heads=4, intermediate_size=2048),
    "7b": {},  # the pangu-7b preset (docs/release.md §5)
}


def hf_model(model: Pangu):
    """transformers' LlamaForCausalLM with our weights (the keys are the same)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.cfg
    hc = LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.dim,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads,
        attention_bias=c.bias,
        mlp_bias=False,
        rope_theta=c.rope_theta,
        rms_norm_eps=c.norm_eps,
        tie_word_embeddings=False,
        head_dim=c.head_dim,
        torch_dtype=model.lm_head.weight.dtype,
    )
    with torch.device("meta"):
        hf = LlamaForCausalLM(hc)
    hf.load_state_dict(model.state_dict(), strict=True, assign=True)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hc, device=model.lm_head.weight.device)
    return hf.eval()


def prompts(model: Pangu, batch: int, length: int, seed: int):
    """Embeddings (B, L, D) and a mask with row b holding L - 3b real tokens, pads inside."""
    g = torch.Generator().manual_seed(seed)
    dev = model.lm_head.weight.device
    ids = torch.randint(3, model.cfg.vocab_size, (batch, length), generator=g).to(dev)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        pads = torch.randperm(length - 1, generator=g)[: min(3 * b, length // 2)]
        mask[b, pads] = 0
    with torch.no_grad():
        return model.embed(ids), mask.to(dev)


@contextmanager
def decode_step_as(step):
    """generate() with `step` (a compiled pangu.decode_step) in place of pangu.decode_step."""
    saved, pangu.decode_step = pangu.decode_step, step
    try:
        yield
    finally:
        pangu.decode_step = saved


def compiled_generate(step, *args, **kwargs):
    with decode_step_as(step):
        return generate(*args, **kwargs)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, device, repeats):
    """Best wall time and output of each function, the functions interleaved so that a
    busy machine slows them alike (the best run is the least disturbed one)."""
    outs = {name: fn() for name, fn in fns.items()}  # warm-up (and compile)
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            outs[name] = fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return best, outs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--shape", default="100m", choices=sorted(SHAPES))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--bandwidth", type=float, default=3.35e12, help="bytes/s (H100 SXM: 3.35e12)")
    ap.add_argument("--hf", action="store_true", help="also run transformers at --shape 7b")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--no-pack", action="store_true", help="CPU: do not time pack_for_cpu")
    ap.add_argument("--compile", action="store_true", help="also time pangu.generate with torch.compile'd decode steps")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")

    torch.manual_seed(0)
    cfg = PanguConfig.from_name("pangu-7b", **SHAPES[args.shape])
    torch.set_default_dtype(dtype)  # built directly in the dtype: a 7 B model once, not twice
    with torch.device(device):
        model = Pangu(cfg).eval()
    torch.set_default_dtype(torch.float32)
    with torch.no_grad():  # larger-than-default weights, so the greedy choices are clear-cut
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05)
    n_params = count_params(model)
    # a decode step reads every weight but the embedding table (one row per token)
    step_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    step_bytes -= model.model.embed_tokens.weight.numel() * dtype.itemsize
    hw = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    hw += f", {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    print(f"model {args.shape}: {n_params / 1e6:.1f} M params, {args.dtype}, {hw}")
    hf = hf_model(model) if args.shape != "7b" or args.hf else None
    pack = device.type == "cpu" and not args.no_pack and torch.backends.mkldnn.is_available()
    packed = pack_for_cpu(copy.deepcopy(model)) if pack else None
    # gpt-fast's recipe on GPU: the whole decode step as one CUDA graph
    mode = "reduce-overhead" if device.type == "cuda" else None
    step = torch.compile(pangu.decode_step, mode=mode, fullgraph=True) if args.compile else None
    for B in args.batch:
        print(f"batch {B}: " + bench_batch(model, packed, hf, step, B, args, step_bytes), flush=True)
    if device.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def bench_batch(model, packed, hf, step, B: int, args, step_bytes: int) -> str:
    device, n = torch.device(args.device), args.new_tokens
    embeds, mask = prompts(model, B, args.prompt_len, seed=B)
    fns = {"ours": lambda: generate(model, embeds, mask, n, eos_id=-1)}
    if packed is not None:
        fns["ours packed"] = lambda: generate(packed, embeds, mask, n, eos_id=-1)
    if step is not None:
        fns["ours+compile"] = lambda: compiled_generate(step, model, embeds, mask, n, eos_id=-1)
    if hf is not None:
        kw = dict(
            max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0
        )
        fns["transformers"] = lambda: hf.generate(inputs_embeds=embeds, attention_mask=mask, **kw).tolist()
    with torch.no_grad():
        best, outs = timed(fns, device, args.repeats)
    parts = [f"{name} {B * n / s:7.1f} tok/s" for name, s in best.items()]
    if hf is not None:
        parts.append(f"ratio {best['transformers'] / best['ours']:.2f}x")
        if packed is not None:
            parts.append(f"packed {best['transformers'] / best['ours packed']:.2f}x")
        if step is not None:
            parts.append(f"compiled {best['transformers'] / best['ours+compile']:.2f}x")
        same = sum(a == b for a, b in zip(outs["ours"], outs["transformers"]))
        parts.append(f"same tokens in {same}/{B} rows")
    for name in ("ours packed", "ours+compile"):
        if name in outs:
            same = sum(a == b for a, b in zip(outs["ours"], outs[name]))
            parts.append(f"{name} == ours in {same}/{B} rows")
    if args.shape == "7b" or device.type == "cuda":
        # per decode step: (time of n new tokens - time of 1) / (n - 1), so no prefill
        name = "ours+compile" if step is not None else "ours"
        fns_1 = {name: lambda: compiled_generate(step or pangu.decode_step, model, embeds, mask, 1, eos_id=-1)}
        with torch.no_grad():
            t1 = timed(fns_1, device, args.repeats)[0][name]
        per_step = (best[name] - t1) / (n - 1)
        bound = step_bytes / args.bandwidth  # seconds per step if only weight reads counted
        parts.append(
            f"{name} {per_step * 1e3:.2f} ms/step = {bound / per_step:.0%} of the bandwidth "
            f"bound ({bound * 1e3:.2f} ms/step at {args.bandwidth:.3g} B/s)"
        )
    return " | ".join(parts)


if __name__ == "__main__":
    main()
