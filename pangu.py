"""openPangu-Embedded-7B-V1.1, the decoder of I-OSUM-Pangu, in plain PyTorch.

A Llama-shaped decoder (RMSNorm, RoPE, GQA attention with q/k/v/o biases, SwiGLU MLP, untied
head) that computes the same function as openPangu's `modeling_openpangu_dense.py` and as
`transformers.LlamaForCausalLM(attention_bias=True, mlp_bias=False, rope_theta=1.6e7)`.
Also here: the loss, a pre-allocated KV cache and batched decoding, LoRA (as the release trains it
with peft) and strict loading of Hugging Face / peft checkpoints. Its tokenizer is tokenizer.py, its
faster CPU decoding cpu_decode.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from checkpoint import load_strict, read_tensors

BOS_ID = 1  # <s>
EOS_ID = 45892  # [unused10]: the release stops generation here
PAD_ID = 0  # <unk>, the pad of the LLM's config.json (the tokenizer's [PAD] is vocab_size)
IGNORE_ID = -100  # label of positions without loss (F.cross_entropy's default ignore_index)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj")  # not up_proj


# ----------------------------------------------------------------------------- config


@dataclass
class PanguConfig:
    vocab_size: int = 153376
    dim: int = 4096
    n_layers: int = 34
    n_heads: int = 32
    n_kv_heads: int = 8
    intermediate_size: int = 12800
    rope_theta: float = 1.6e7
    norm_eps: float = 1e-5
    bias: bool = True  # biases on q, k, v and o (never on the MLP)
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID
    head_dim: int = 0  # 0: dim // n_heads

    def __post_init__(self):
        if self.head_dim == 0:
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")

    @classmethod
    def from_name(cls, name: str, **overrides) -> PanguConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown Pangu preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_json(cls, path: str | Path) -> PanguConfig:
        """Read openPangu's (or a Hugging Face Llama) `config.json`."""
        c = json.loads(Path(path).read_text())
        if c.get("mlp_bias", False):
            raise ValueError(f"{path}: mlp_bias=true is not the openPangu architecture")
        if c.get("rope_scaling"):
            raise ValueError(f"{path}: rope_scaling {c['rope_scaling']} is not supported")
        eos = c.get("eos_token_id", EOS_ID)
        return cls(
            vocab_size=c["vocab_size"],
            dim=c["hidden_size"],
            n_layers=c["num_hidden_layers"],
            n_heads=c["num_attention_heads"],
            n_kv_heads=c.get("num_key_value_heads", c["num_attention_heads"]),
            intermediate_size=c["intermediate_size"],
            rope_theta=float(c.get("rope_theta", 1e4)),
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            bias=bool(c.get("bias", c.get("attention_bias", False))),  # openPangu | HF Llama
            bos_id=c.get("bos_token_id", BOS_ID),
            eos_id=eos[0] if isinstance(eos, list) else eos,
            pad_id=c.get("pad_token_id") if c.get("pad_token_id") is not None else PAD_ID,
            head_dim=c.get("head_dim") or 0,
        )

    def to_json(self) -> dict:
        """The config.json fields of openPangu (what `from_json` reads back)."""
        return dict(
            vocab_size=self.vocab_size,
            hidden_size=self.dim,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_kv_heads,
            intermediate_size=self.intermediate_size,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.norm_eps,
            bias=self.bias,
            bos_token_id=self.bos_id,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            head_dim=self.head_dim,
        )


PRESETS = {
    # openPangu-Embedded-7B-V1.1 config.json (docs/release.md §5): 8.03 B parameters, 6.77 B without
    # the embedding and the head.
    "pangu-7b": dict(),
    # the toy study: 4 layers of width 256 over the 1280-piece toy tokenizer, 3.6 M.
    "toy": dict(vocab_size=1280, dim=256, n_layers=4, n_heads=4, n_kv_heads=2, intermediate_size=688, eos_id=15),
    # unit tests: the dims of tests/fixtures/reference (eos stand-in 511 = vocab - 1), 0.15 M.
    "tiny": dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=160, eos_id=511),
}


# ----------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)  # cast back, then times weight (as HF Llama)


def rope_tables(position_ids, head_dim: int, theta: float, dtype):
    """cos, sin (B, T, head_dim) for the rotate-half layout, computed in float32."""
    exponent = torch.arange(0, head_dim, 2, device=position_ids.device).float() / head_dim
    inv_freq = 1.0 / (theta**exponent)  # (hd/2,)
    freqs = position_ids.float()[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache(nn.Module):
    """Keys and values of one attention layer, pre-allocated for max_len positions.

    Attention always reads the whole buffer (unwritten slots are masked), so every decode
    step has the same shapes: no re-allocation, and a step can be compiled / graph-captured.
    """

    def __init__(self, batch: int, max_len: int, n_kv_heads: int, head_dim: int, like):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", like.new_zeros(shape), persistent=False)
        self.register_buffer("v", like.new_zeros(shape), persistent=False)

    def update(self, pos, k, v):
        """Write k, v (B, n_kv, T, hd) at cache slots pos (T,); return the whole buffers."""
        self.k.index_copy_(2, pos, k.to(self.k.dtype))  # (autocast may hand bf16 to fp32)
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        return self.k, self.v  # (B, n_kv, max_len, hd)


class Attention(nn.Module):
    def __init__(self, cfg: PanguConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.bias)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, pos=None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(pos, k, v)  # (B, n_kv, max_len, hd)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True
        )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: PanguConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: PanguConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, cache=None, pos=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, pos)
        return x + self.mlp(self.post_attention_layernorm(x))


def attention_mask_4d(attention_mask, q_pos):
    """(B, S) key mask (1 = real token) -> (B, 1, T, S) boolean mask for queries at q_pos (T,).

    Causal and padding together. Each query may always see itself, so a pad query (its
    output is never used) has no fully masked row, which would give NaN in SDPA.
    """
    S = attention_mask.shape[1]
    q_idx = q_pos[:, None]  # (T, 1)
    k_idx = torch.arange(S, device=attention_mask.device)[None, :]  # (1, S)
    allowed = (k_idx <= q_idx) & attention_mask.bool()[:, None, :]  # (B, T, S)
    return (allowed | (k_idx == q_idx))[:, None]  # (B, 1, T, S)


class PanguModel(nn.Module):
    """Named like Hugging Face's `model.*` so the checkpoint keys map one to one."""

    def __init__(self, cfg: PanguConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class Pangu(nn.Module):
    def __init__(self, cfg: PanguConfig):
        super().__init__()
        self.cfg = cfg
        self.model = PanguModel(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def embed(self, ids):
        return self.model.embed_tokens(ids)

    def make_cache(self, batch: int, max_len: int) -> nn.ModuleList:
        """One KVCache per layer, on the device and in the dtype of the weights."""
        like = self.model.embed_tokens.weight  # (lm_head may be a PackedLinear)
        c = self.cfg
        return nn.ModuleList(KVCache(batch, max_len, c.n_kv_heads, c.head_dim, like) for _ in range(c.n_layers))

    def hidden(
        self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None, cache_pos=None
    ):
        """Final-norm hidden states (B, L, dim); see `forward`."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # (B, L, C)
        B, L, _ = x.shape
        if position_ids is None:
            if cache is not None or attention_mask is not None:
                raise ValueError("position_ids are required with an attention_mask or a cache")
            position_ids = torch.arange(L, device=x.device).expand(B, L)
        if cache_pos is None:  # the new tokens go to slots 0..L-1 (no cache: are the sequence)
            cache_pos = torch.arange(L, device=x.device)
        if cache is not None and (attention_mask is None or attention_mask.shape[1] != cache[0].k.shape[2]):
            raise ValueError("with a cache, attention_mask (B, max_len) must cover the whole cache")
        mask = attention_mask  # (B, 1, L, S) boolean, as given, or from a (B, S) key mask:
        if attention_mask is not None and attention_mask.dim() == 2:
            mask = attention_mask_4d(attention_mask, cache_pos)
        cos, sin = rope_tables(position_ids, self.cfg.head_dim, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.model.layers):
            c = None if cache is None else cache[i]
            if self.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, cos, sin, mask, c, cache_pos, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, c, cache_pos)
        return self.model.norm(x)

    def forward(
        self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, cache=None, cache_pos=None
    ):
        """Logits (B, L, vocab).

        input_ids (B, L) or inputs_embeds (B, L, dim); attention_mask (B, L) with 1 for real
        tokens and 0 for pads anywhere, or (B, 1, L, L) boolean, True where a query may attend
        (stage 0's lines packed in one row); position_ids (B, L), in the release cumsum(mask) - 1
        with pads set to 1. With a cache from `make_cache(B, max_len)`: the L new tokens are
        written to cache slots cache_pos (L,) (default 0..L-1) and attention_mask (B, max_len)
        covers the whole cache (0 for pads and for slots not written yet).
        """
        h = self.hidden(input_ids, inputs_embeds, attention_mask, position_ids, cache, cache_pos)
        return self.lm_head(h)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy (float32) of logits (B, L, V) against labels (B, L) already aligned (the label
    of position t is token t + 1), over the labels that are not IGNORE_ID; 0 when there are none."""
    n = (labels != IGNORE_ID).sum().clamp(min=1)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_ID, reduction="sum") / n


# ----------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(dropout(x))), as peft's LoRA Linear (no rslora)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        w = base.weight
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=w.dtype)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        if not w.is_meta:  # peft's init: A Kaiming-uniform, B zero, so training starts at base
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    def delta_weight(self):
        """scaling * B @ A (out, in), in float32 whatever the weights' dtype."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    @torch.no_grad()
    def merge(self):
        if not self.merged:
            self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
            self.merged = False

    def forward(self, x):
        y = self.base_layer(x)
        if self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


def apply_lora(
    model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets: Iterable[str] = LORA_TARGETS
) -> nn.Module:
    """Wrap every nn.Linear named like a target; afterwards only LoRA weights are trainable."""
    targets = tuple(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    found = [(n, m) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets]
    if not found:
        raise ValueError(f"no module named like {targets} to put LoRA on")
    for name, m in found:
        if not isinstance(m, nn.Linear):
            raise TypeError(f"{name} is {type(m).__name__}, not nn.Linear (LoRA twice?)")
        parent, child = name.rsplit(".", 1)
        setattr(model.get_submodule(parent), child, LoRALinear(m, r, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


# ----------------------------------------------------------------------------- generation


def sample(logits, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, generator=None):
    """Next ids (B,) from logits (B, V): argmax when temperature == 0, else HF's warper order
    (temperature, top-k, top-p) and a multinomial draw."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)  # ascending
        remove = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        remove[:, -1] = False  # keep at least the best token
        logits = logits.masked_fill(remove.scatter(1, order, remove), -math.inf)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def apply_repetition_penalty(logits, seen, penalty: float):
    """HF's rule on the ids in `seen` (B, V) bool: positive logits / penalty, others * penalty."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def decode_step(model: Pangu, token, mask, position_ids, cache, slot):
    """Logits (B, V) of one new token per row (B, 1) written to cache slot (1,). Its shapes
    are the same at every step, so it can be wrapped in torch.compile (see bench/decode.py)."""
    return model(input_ids=token, attention_mask=mask, position_ids=position_ids, cache=cache, cache_pos=slot)[:, -1]


@torch.no_grad()
def generate(
    model: Pangu,
    inputs_embeds,
    attention_mask,
    max_new_tokens: int,
    eos_id: int | Iterable[int],
    repetition_penalty: float = 1.0,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator=None,
) -> list[list[int]]:
    """Batched decoding after a prompt of embeddings.

    inputs_embeds (B, L, dim) and attention_mask (B, L) may have pads anywhere. Positions
    are cumsum(mask) - 1 (pads 1), new tokens continue each row at its last position + 1,
    and the next token of a row is read at its last real prompt position. The repetition
    penalty sees generated tokens only (the prompt is embeddings, as in the release). Each
    row stops at its first id in eos_id, which is not returned.
    """
    B, L, _ = inputs_embeds.shape
    device = inputs_embeds.device
    eos = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)
    prompt_mask = attention_mask.bool()  # (B, L)
    if not prompt_mask.any(-1).all():
        raise ValueError("a prompt row has no real token (attention_mask all zero)")
    S = L + max_new_tokens
    cache = model.make_cache(B, S)
    mask = torch.zeros(B, S, dtype=torch.bool, device=device)
    mask[:, :L] = prompt_mask
    position_ids = prompt_mask.long().cumsum(-1) - 1  # (B, L)
    position_ids.masked_fill_(~prompt_mask, 1)
    next_pos = prompt_mask.sum(-1, keepdim=True)  # (B, 1): last position + 1
    last = L - 1 - prompt_mask.flip(-1).int().argmax(-1)  # (B,) index of the last real token

    h = model.hidden(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=position_ids, cache=cache)
    logits = model.lm_head(h[torch.arange(B, device=device), last])  # (B, V)

    out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)
    seen = torch.zeros(B, logits.shape[-1], dtype=torch.bool, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    slot = torch.tensor([L], device=device)  # (1,) the cache slot of the next token
    n = 0
    for step in range(max_new_tokens):
        logits = logits.float()
        if repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        token = sample(logits, temperature, top_k, top_p, generator)  # (B,)
        out[:, step] = token
        n = step + 1
        done |= torch.isin(token, eos)  # finished rows decode on unseen (rows are independent)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        seen.scatter_(1, token[:, None], True)
        mask[:, L + step] = True
        logits = decode_step(model, token[:, None], mask, next_pos + step, cache, slot + step)
    stops, result = set(eos.tolist()), []
    for row in out[:, :n].tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        result.append(row[:cut])
    return result


# ----------------------------------------------------------------------------- loading

# Our module names are the Hugging Face / openPangu names, so that layout maps by identity.
# peft (the release) adds a prefix, `base_layer` for the wrapped Linear (kept: it is our
# LoRALinear's name too) and the adapter name `default` (dropped).
PEFT_PREFIXES = ("llama_model.base_model.model.", "base_model.model.")
PEFT_RENAMES = {".lora_A.default.": ".lora_A.", ".lora_B.default.": ".lora_B."}
DROPPED = ("rotary_emb.inv_freq",)  # a non-persistent RoPE buffer in older HF files: recomputed
_OUR_KEY = re.compile(
    r"^(lm_head\.weight|model\.(embed_tokens\.weight|norm\.weight|layers\.\d+\.("
    r"(input|post_attention)_layernorm\.weight|"
    r"(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.(base_layer\.)?(weight|bias)|"
    r"(self_attn\.[qkvo]|mlp\.(gate|up|down))_proj\.lora_[AB]\.weight)))$"
)


def pangu_state_dict(sd: dict) -> dict:
    """HF (`model.layers.N...`, `lm_head.weight`) or peft-prefixed keys -> our module names."""
    out = {}
    for key, value in sd.items():
        k = key
        for prefix in PEFT_PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix) :]
                break
        if k.endswith(DROPPED):
            continue
        for old, new in PEFT_RENAMES.items():
            k = k.replace(old, new)
        if not _OUR_KEY.match(k):
            raise KeyError(
                f"unknown Pangu checkpoint layout: key {key!r} is neither a Hugging Face "
                f"(model.*, lm_head.*) nor a peft ({' / '.join(PEFT_PREFIXES)}) key"
            )
        if k in out:
            raise KeyError(f"key {key!r} maps to {k!r}, which another key already gave")
        out[k] = value
    return out


def load_pangu(
    path_or_dir: str | Path | dict, cfg: PanguConfig | None = None, lora_alpha: float | None = None
) -> Pangu:
    """A Pangu from an HF/openPangu dir (config.json + shards + index), a single file or a
    state dict, built on the meta device and assigned the memory-mapped tensors (strict).

    A checkpoint with LoRA weights (peft layout) gets LoRA of the stored rank; its alpha
    cannot be read from tensors, so pass `lora_alpha` (the release: 32 for r 64).
    """
    if isinstance(path_or_dir, dict):
        source, sd = "state dict", path_or_dir
    else:
        path = Path(path_or_dir)
        source, sd = str(path), read_tensors(path)
        if cfg is None and path.is_dir() and (path / "config.json").exists():
            cfg = PanguConfig.from_json(path / "config.json")
    if cfg is None:
        raise ValueError(f"{source}: no config.json beside the weights; pass cfg")
    sd = pangu_state_dict(sd)
    ranks = {v.shape[0] for k, v in sd.items() if k.endswith(".lora_A.weight")}
    with torch.device("meta"):
        model = Pangu(cfg)
        if ranks:
            if len(ranks) > 1 or lora_alpha is None:
                raise ValueError(
                    f"{source} holds LoRA weights of rank {sorted(ranks)}: pass lora_alpha (one rank expected)"
                )
            targets = {k.split(".")[-3] for k in sd if k.endswith(".lora_A.weight")}
            apply_lora(model, ranks.pop(), lora_alpha, targets=targets)
    load_strict(model, sd, source)
    return model.eval()
