"""The speech adapter of I-OSUM-Pangu: Whisper features (50 frames/s) -> LLM embeddings (12.5/s).

The released adapter type "osum_echat" (OSUM-EChat / I-OSUM-Pangu, arXiv 2603.10862), as built
by `wenet/llm_asr/llmasr_model_instruct_version.py`: a causal 4x Conv1d downsampler
(`down_sample_2`), a 4-block WeNet Transformer encoder (`speech_transformer`) and a linear
projection to the LLM width (`speech_llama_proj`). Module names are the checkpoint's own, so
`adapter_state_dict` only strips prefixes and drops the stored position table.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from whisper_enc import LayerNorm, check_positions  # LayerNorm in float32; eps 1e-5 is WeNet's too

PREFIXES = ("down_sample_2.", "speech_transformer.", "speech_llama_proj.")
PE_KEY = "speech_transformer.embed.pos_enc.pe"  # (1, 5000, d) sinusoid buffer of the release


@dataclass
class AdapterConfig:
    d_in: int = 1024  # encoder width
    d_model: int = 1024  # conv and transformer width
    n_blocks: int = 4
    n_heads: int = 4
    d_ffn: int = 2560
    d_out: int = 4096  # LLM width
    dropout: float = 0.1  # input layer, positions, residuals and FFN (attention weights: 0)

    def __post_init__(self):
        assert self.d_model % self.n_heads == 0, "d_model must be a multiple of n_heads"

    @classmethod
    def from_name(cls, name: str, **overrides) -> "AdapterConfig":
        if name not in ADAPTER_PRESETS:
            raise ValueError(f"unknown adapter preset {name!r}; known: {sorted(ADAPTER_PRESETS)}")
        return cls(**{**ADAPTER_PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


ADAPTER_PRESETS = {
    # the release: Whisper-medium 1024 -> openPangu-7B 4096; 4 blocks / 4 heads / FFN 2560 are
    # hard-coded in the release's adapter; 52.5 M parameters
    "osum_echat": dict(),
    # toy study: toy Whisper 128 -> toy Pangu 256; 0.6 M parameters
    "toy": dict(d_in=128, d_model=128, n_blocks=2, n_heads=4, d_ffn=512, d_out=256),
    # unit tests only
    "tiny": dict(d_in=64, d_model=64, n_blocks=2, n_heads=4, d_ffn=128, d_out=64),
}


def sinusoids_interleaved(length: int, d: int) -> torch.Tensor:
    """WeNet's absolute positions: pe[:, 0::2] = sin, pe[:, 1::2] = cos. (length, d) float32."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
    pe = torch.zeros(length, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class Conv1dSubsampling4(nn.Module):
    """3x [left pad 2 zeros, Conv1d k3, GELU] with strides 1, 2, 2: causal, not masked.

    Kept as one Sequential so the keys are the release's `conv.{1,4,7}` (0, 3, 6 are the pads,
    2, 5, 8 the GELUs). A valid output frame only sees valid input frames (left padding), so
    the padding of a batch cannot leak into valid frames.
    """

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        layers = []
        for i, stride in enumerate((1, 2, 2)):
            layers += [
                nn.ConstantPad1d((2, 0), 0.0),
                nn.Conv1d(d_in if i == 0 else d_out, d_out, 3, stride=stride),
                nn.GELU(),
            ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, ceil(ceil(T/2)/2), C)


class WenetAttention(nn.Module):
    """WeNet MultiHeadedAttention: biases on q, k, v, out; padded keys masked out."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.linear_q = nn.Linear(d, d)
        self.linear_k = nn.Linear(d, d)
        self.linear_v = nn.Linear(d, d)
        self.linear_out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (
            lin(x).view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
            for lin in (self.linear_q, self.linear_k, self.linear_v)
        )
        # WeNet adds -inf on padded keys and softmaxes; queries are not masked (their rows are
        # garbage the caller ignores). Every row has >= 1 valid key, so no NaN.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return self.linear_out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class FeedForward(nn.Module):
    def __init__(self, d: int, d_ffn: int, dropout: float):
        super().__init__()
        self.w_1 = nn.Linear(d, d_ffn)
        self.w_2 = nn.Linear(d_ffn, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))  # ReLU: WeNet's default activation


class EncoderLayer(nn.Module):
    """Pre-LayerNorm block (WeNet normalize_before=True)."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.self_attn = WenetAttention(cfg.d_model, cfg.n_heads)
        self.feed_forward = FeedForward(cfg.d_model, cfg.d_ffn, cfg.dropout)
        self.norm1 = LayerNorm(cfg.d_model)
        self.norm2 = LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm1(x), key_mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class LinearInput(nn.Module):
    """WeNet LinearNoSubsampling + PositionalEncoding: LN(Linear(x)) * sqrt(d) + pe."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.out = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_model),
            LayerNorm(cfg.d_model),
            nn.Dropout(cfg.dropout),
        )
        self.xscale = math.sqrt(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # the release's buffer holds 5000 rows; the formula goes on, so longer inputs still work
        pe = sinusoids_interleaved(T, C).to(x.device)  # (T, C) float32
        x = self.out(x)
        return self.dropout((x.float() * self.xscale + pe).to(x.dtype))  # (B, T, C)


class SpeechTransformer(nn.Module):
    """WeNet TransformerEncoder (input_layer "linear", pos "abs_pos", pre-LN, after_norm)."""

    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.embed = LinearInput(cfg)
        self.encoders = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_blocks))
        self.after_norm = LayerNorm(cfg.d_model)
        self.gradient_checkpointing = False  # the release checkpoints the encoder only

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.encoders:
            if self.gradient_checkpointing and self.training:  # recompute in backward, block by block
                x = checkpoint(layer, x, key_mask, use_reentrant=False)
            else:
                x = layer(x, key_mask)
        return self.after_norm(x)


class Adapter(nn.Module):
    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        self.cfg = cfg
        self.down_sample_2 = Conv1dSubsampling4(cfg.d_in, cfg.d_model)
        self.speech_transformer = SpeechTransformer(cfg)
        self.speech_llama_proj = nn.Linear(cfg.d_model, cfg.d_out)

    @property
    def gradient_checkpointing(self) -> bool:
        """The switch of the blocks, which are the speech transformer's (train.py sets it here)."""
        return self.speech_transformer.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, on: bool) -> None:
        self.speech_transformer.gradient_checkpointing = on

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder features (B, T, d_in) with valid lengths (B,) -> (B, T'', d_out), lengths''.

        T'' = ceil(ceil(T/2)/2) and lengths'' = ceil(ceil(lengths/2)/2) (the release subsamples
        the mask as `mask[..., ::2][..., ::2]`). Frames past a row's length hold unmasked values
        the caller must ignore (the release does the same). Each row of a padded batch gets the
        values it has alone.
        """
        B, T, _ = x.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
        x = self.down_sample_2(x)  # (B, T'', d_model)
        lengths = ((lengths + 1) // 2 + 1) // 2
        key_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T'')
        x = self.speech_transformer(x, key_mask)  # (B, T'', d_model)
        return self.speech_llama_proj(x), lengths  # (B, T'', d_out), (B,)


def adapter_state_dict(sd: dict) -> dict:
    """Released keys (`down_sample_2.`, `speech_transformer.`, `speech_llama_proj.`) -> ours.

    Our module names are the release's, so this keeps those keys as they are. The stored
    sinusoid table `speech_transformer.embed.pos_enc.pe` is a formula: checked, then dropped.
    Keys with other prefixes are ignored (the caller owns them).
    """
    out = {}
    for key, value in sd.items():
        if key == PE_KEY:
            check_positions(key, value, sinusoids_interleaved)
        elif key.startswith(PREFIXES):
            out[key] = value
    return out
