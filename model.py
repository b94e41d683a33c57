"""I-OSUM-Pangu: Whisper encoder -> adapter -> [speech bos, speech, speech eos] -> openPangu.

The whole speech LLM of "I-OSUM-Pangu" (arXiv 2603.10862), as the release's
`wenet/llm_asr/llmasr_model_instruct_version.py` (`LLMASR_Model`) builds it: prompt layout,
training loss, batched generation, and loading of the released checkpoint (`step_N.pt`,
a plain state dict) or of our own format (`model.safetensors` + `config.json`).
Convert the release to ours: `python model.py convert CHECKPOINT OUT_DIR [--llm-dir D]`.
generate() defaults to the release's own generate() prompt (layout="release", docs/release.md §7).
"""

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import pangu
from adapter import Adapter, AdapterConfig, adapter_state_dict
from checkpoint import atomic_dir, count_params, load_strict, read_tensors, some_keys
from pangu import IGNORE_ID, Pangu, PanguConfig, apply_lora, lm_loss, pangu_state_dict
from tokenizer import PanguTokenizer
from whisper_enc import WhisperConfig, WhisperEncoder, log_mel_spectrogram, whisper_state_dict

UNK_LABEL_ID = 7672  # the "&&" piece: the release embeds it as id 0 and gives it no loss
SPEECH_TOKEN_NUM = 4097  # speech_token_emded rows 4097 / 4098 are the speech bos / eos

# docs/release.md §7. Training prompt of speech tasks (the release's `..._pattern_1_understand`); note the
# missing space after "responses." -- it is in the release.
SYSTEM_SPEECH = (
    "You are OSUM-chat, an audio understanding assistant by ASLP Lab. You can transcribe speech "
    "accurately and analyze paralinguistic cues to provide precise text responses.First perform "
    "intent recognition on the user's input and output the corresponding task tag, then execute "
    "the relevant task based on the tag."
)
# Stage 2 (text-only intent understanding).
SYSTEM_TEXT = (
    "You are OSUM-chat, a text-to-text dialogue assistant by ASLP Lab. You understand user input "
    "text and reply with corresponding user intent tags."
)
# The release's generate() hard-codes this different string, typos included ("anaosum_echat2e"
# is a search-and-replace accident of "analyze"); we keep it by default for parity.
SYSTEM_GENERATE = (
    "You are OSUM-chat, an audio understanding. You can transcribe speech accurately and "
    "anaosum_echat2e paralinguistic cues to provide precise text responses.First perform intent "
    "recognition on the user's input and output the corresponding task tag, then execute the "
    "relevant task based on the tag."
)


def pattern1(system: str) -> str:
    return "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n"


PATTERN2 = "<|im_end|>\n<|im_start|>assistant\n"
# Prompt segments, all tokenized WITH a BOS as the release does (`self.tokenizer([...])`).
PROMPT_TEXTS = {
    "p1_speech": pattern1(SYSTEM_SPEECH),
    "p1_text": pattern1(SYSTEM_TEXT),
    "p1_generate": pattern1(SYSTEM_GENERATE),
    "p2": PATTERN2,
}
LAYOUTS = ("release", "train")  # generate(): the release's generate() prompt, or forward()'s


# ----------------------------------------------------------------------------- config


def _init_fields(cfg) -> dict:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.init}


@dataclass
class IOSUMConfig:
    whisper: WhisperConfig = field(default_factory=lambda: WhisperConfig.from_name("medium"))
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig.from_name("osum_echat"))
    llm: PanguConfig = field(default_factory=lambda: PanguConfig.from_name("pangu-7b"))
    lora_r: int = 64  # 0: no LoRA modules (e.g. a checkpoint with LoRA merged)
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    speech_token_num: int = SPEECH_TOKEN_NUM

    def __post_init__(self):
        if self.adapter.d_in != self.whisper.d_model or self.adapter.d_out != self.llm.dim:
            raise ValueError(
                f"adapter {self.adapter.d_in} -> {self.adapter.d_out} does not join encoder "
                f"width {self.whisper.d_model} to LLM width {self.llm.dim}"
            )

    @classmethod
    def from_name(cls, name: str, **overrides) -> "IOSUMConfig":
        """A preset; overrides are top-level fields, or for whisper / adapter / llm either a
        config or a dict that updates the preset's part (`llm=dict(n_layers=2)`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown I-OSUM-Pangu preset {name!r}; known: {sorted(PRESETS)}")
        kw = {**PRESETS[name], **overrides}
        for part, klass in PARTS.items():
            preset_name, preset_overrides = PRESETS[name][part]
            value = overrides.get(part, {})
            if isinstance(value, dict):
                kw[part] = klass.from_name(preset_name, **{**preset_overrides, **value})
        return cls(**kw)

    @classmethod
    def from_dict(cls, d: dict) -> "IOSUMConfig":
        """What `to_dict` wrote (our config.json)."""
        kw = dict(d)
        for part, klass in PARTS.items():
            kw[part] = klass(**d[part])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = _init_fields(self)
        for part in ("whisper", "adapter", "llm"):
            d[part] = _init_fields(d[part])
        return d


PRESETS = {
    # the release: Whisper-medium (306 M) + adapter (52.5 M) + speech-token table (16.8 M) +
    # openPangu-Embedded-7B-V1.1 (8.03 B) + LoRA r 64 / alpha 32 on q, k, v, o, gate, down
    # (131 M): 8.54 B in all
    "iosum-pangu-7b": dict(
        whisper=("medium", dict(dropout=0.1)),  # the release trains the encoder with 0.1
        adapter=("osum_echat", {}),
        llm=("pangu-7b", {}),
        lora_r=64,
        lora_alpha=32.0,
        lora_dropout=0.1,
    ),
    # the toy study: encoder 0.48 M, adapter 0.59 M, speech-token table 1.05 M, LLM 3.56 M,
    # LoRA r 16 0.24 M. LoRA scaling 1.0 (the release's is 0.5): with r 8 / scaling 0.5 the toy's
    # stage 2 learnt the train phrasings only slowly; no LoRA dropout (a fifth of a toy step's
    # time went to its masks, and stage 2's text is the regulariser here).
    "toy": dict(
        whisper=("toy", dict(dropout=0.1)),
        adapter=("toy", {}),
        llm=("toy", {}),
        lora_r=16,
        lora_alpha=16.0,
        lora_dropout=0.0,
    ),
    # tests/fixtures/reference (the original code on tiny dims): encoder 64 / 4 heads / 2 blocks / FFN
    # 256; the adapter keeps the release's hard-coded 4 blocks, 4 heads, FFN 2560; LLM 64 wide,
    # 2 layers, 4 heads, 2 kv heads, FFN 160, vocab 512; LoRA r 8, alpha 16. 1.99 M (2.26 M
    # with the unused ln_speech and speech_head, as its report.json counts).
    "reference-tiny": dict(
        whisper=("medium", dict(d_model=64, n_layers=2, n_heads=4, d_mlp=256)),
        adapter=("osum_echat", dict(d_in=64, d_model=64, d_out=64)),
        llm=(
            "pangu-7b",
            dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=160),
        ),
        lora_r=8,
        lora_alpha=16.0,
        lora_dropout=0.1,
    ),
}
PARTS = {"whisper": WhisperConfig, "adapter": AdapterConfig, "llm": PanguConfig}


# ----------------------------------------------------------------------------- the model


class IOSUMPangu(nn.Module):
    def __init__(self, cfg: IOSUMConfig, llm: Pangu | None = None):
        """llm: an already loaded Pangu of config cfg.llm (train.py's stage 1), so that a 7 B
        decoder is never initialised at random only to be overwritten."""
        super().__init__()
        self.cfg = cfg
        self.encoder = WhisperEncoder(cfg.whisper)
        self.adapter = Adapter(cfg.adapter)
        # `emded` is the release's spelling, kept so the key names match. Its speech-token table (rows
        # < 4097 feed its unused speech_head path); rows speech_token_num and speech_token_num + 1 are
        # the bos / eos around every speech span.
        self.speech_token_emded = nn.Embedding(cfg.speech_token_num + 2, cfg.llm.dim)
        if llm is not None and llm.cfg != cfg.llm:
            raise ValueError(f"the given LLM's config {llm.cfg} is not cfg.llm {cfg.llm}")
        self.llm = Pangu(cfg.llm) if llm is None else llm
        if cfg.lora_r > 0:
            apply_lora(self.llm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
        self.tokenizer: PanguTokenizer | None = None
        self.tokenizer_file: Path | None = None
        self.prompt_ids: dict[str, list[int]] = {}
        # "release": the weights are the release's (its step_N.pt, or our conversion of it), which its
        # generate() decodes with another prompt than it trained with; "ours": trained by train.py
        self.source = "ours"

    # -- prompts ---------------------------------------------------------------------------

    def set_prompts(self, tokenizer: PanguTokenizer | str | Path) -> None:
        """Tokenize the fixed prompt segments (each WITH a BOS, as the release does)."""
        if not isinstance(tokenizer, PanguTokenizer):
            self.tokenizer_file = Path(tokenizer)
            tokenizer = PanguTokenizer(tokenizer)
        self.tokenizer = tokenizer
        self.prompt_ids = {name: tokenizer.encode(text, bos=True) for name, text in PROMPT_TEXTS.items()}

    def set_prompt_ids(self, **ids: list[int]) -> None:
        """Explicit prompt ids (keys of PROMPT_TEXTS), e.g. the reference's recorded ones."""
        unknown = set(ids) - set(PROMPT_TEXTS)
        if unknown:
            raise ValueError(f"unknown prompt segments {sorted(unknown)}; known: {list(PROMPT_TEXTS)}")
        self.prompt_ids.update({k: [int(i) for i in v] for k, v in ids.items()})

    def _need_tokenizer(self, why: str) -> PanguTokenizer:
        if self.tokenizer is None:
            raise RuntimeError(
                f"{why} needs a tokenizer: pass llm_dir (with tokenizer.model) or tokenizer= to "
                "from_pretrained, or call model.set_prompts(path_to_tokenizer_model)"
            )
        return self.tokenizer

    # -- segments: each returns embeds (B, L, D), mask (B, L) bool, labels (B, L) ----------

    def _fixed(self, name: str, B: int):
        if name not in self.prompt_ids:
            self._need_tokenizer(f"the prompt segment {name!r}")
            raise RuntimeError(f"no ids for prompt segment {name!r}")
        w = self.speech_token_emded.weight
        ids = torch.tensor(self.prompt_ids[name], device=w.device).expand(B, -1)  # (B, L)
        return (
            self.llm.embed(ids),
            torch.ones_like(ids, dtype=torch.bool),
            torch.full_like(ids, IGNORE_ID),
        )

    def _instruction(self, ids: torch.Tensor, bos: bool):
        """ids (B, Li) padded with -1 (no BOS). The release fills pads with the eos id."""
        ids = ids.to(self.speech_token_emded.weight.device)
        mask = ids >= 0  # (B, Li)
        ids = ids.masked_fill(~mask, 0)  # pads are masked: any valid row will do (the release: eos)
        if bos:  # the release's generate() tokenizes the instruction with a BOS
            ids = F.pad(ids, (1, 0), value=self.cfg.llm.bos_id)
            mask = F.pad(mask, (1, 0), value=True)
        return self.llm.embed(ids), mask, torch.full_like(ids, IGNORE_ID)

    def _target(self, target: torch.Tensor):
        """target (B, Lt) padded with -100: ids + eos. "&&" (7672) is embedded as id 0 and gets
        no loss, as in the release; pads are embedded as row 0 and masked."""
        target = target.to(self.speech_token_emded.weight.device)
        mask = target != IGNORE_ID  # (B, Lt)
        unk = target == UNK_LABEL_ID
        ids = target.masked_fill(~mask | unk, 0)
        return self.llm.embed(ids), mask, target.masked_fill(unk, IGNORE_ID)

    def speech_embeddings(self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None):
        """mel (B, n_mels, T) zero-padded -> adapter output (B, S, D) and lengths (B,).
        Each row gets the values it has alone (frames past its length are garbage)."""
        w = self.speech_token_emded.weight
        # the release casts the features to the model's dtype (bf16) too
        mel = mel.to(device=w.device, dtype=w.dtype)
        if mel_lengths is not None:
            mel_lengths = mel_lengths.to(w.device)
        feats, lengths = self.encoder(mel, mel_lengths)  # (B, T', d_enc)
        return self.adapter(feats, lengths)  # (B, S, D), (B,)

    def _speech(self, mel, mel_lengths):
        """[bos, speech (padded: pads INSIDE the span, before the eos), eos], as the release's
        `_add_bos_eos` wraps the padded adapter output."""
        x, lengths = self.speech_embeddings(mel, mel_lengths)  # (B, S, D)
        B, S, _ = x.shape
        n = self.cfg.speech_token_num
        bos_eos = self.speech_token_emded(torch.tensor([n, n + 1], device=x.device))  # (2, D)
        embeds = torch.cat([bos_eos[0].expand(B, 1, -1), x, bos_eos[1].expand(B, 1, -1)], 1)
        valid = torch.arange(S, device=x.device)[None, :] < lengths[:, None]  # (B, S)
        ones = torch.ones(B, 1, dtype=torch.bool, device=x.device)
        mask = torch.cat([ones, valid, ones], 1)  # (B, S + 2)
        return embeds, mask, torch.full(mask.shape, IGNORE_ID, device=x.device)

    def build_inputs(self, batch: dict, layout: str = "train", with_target: bool = True) -> dict:
        """The LLM inputs of a batch (docs/release.md §7): segments padded on their own, concatenated.

        speech: [P1][instruction][bos_s][speech][eos_s][P2]([target])
        text:   [P1_text][instruction][P2]([target])
        layout "release" = the release's generate(): typo'd system prompt, instruction with
        BOS (speech only; the release has no text-only generate, so text keeps the training
        layout). Returns inputs_embeds (B, L, D), attention_mask (B, L) long, position_ids
        (B, L) = cumsum(mask) - 1 with pads at 1, labels (B, L) (-100 but on the target).
        """
        if layout not in LAYOUTS:
            raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
        kind = batch.get("kind", "speech")
        instruction = batch["instruction"]
        B = instruction.shape[0]
        if kind == "speech":
            release = layout == "release"
            segments = [
                self._fixed("p1_generate" if release else "p1_speech", B),
                self._instruction(instruction, bos=release),
                self._speech(batch["mel"], batch.get("mel_lengths")),
            ]
        elif kind == "text":
            segments = [self._fixed("p1_text", B), self._instruction(instruction, bos=False)]
        else:
            raise ValueError(f"batch kind {kind!r}: expected 'speech' or 'text'")
        segments.append(self._fixed("p2", B))
        if with_target:
            segments.append(self._target(batch["target"]))
        embeds, mask, labels = (torch.cat(parts, 1) for parts in zip(*segments))
        mask = mask.long()
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        return dict(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, labels=labels)

    # -- training forward --------------------------------------------------------------------

    def forward(self, batch: dict, all_logits: bool = True) -> dict:
        """A data.py batch -> dict(loss, n_tokens, logits (B, L, V)).

        The loss is Hugging Face's: logits shifted by one against the labels, mean
        cross-entropy over every target token of the batch (float32). all_logits=False
        (training): the LM head runs on the positions that predict a target only, and
        logits is (n_tokens, V); the loss is the same (a toy prompt is ~60 positions for
        ~8 targets: a tenth of a toy step went to logits no loss reads).
        """
        x = self.build_inputs(batch, layout="train", with_target=True)
        labels = x.pop("labels")
        shift_labels = labels[:, 1:]  # (B, L - 1): position t predicts token t + 1
        targets = shift_labels != IGNORE_ID
        h = self.llm.hidden(**x)  # (B, L, D)
        if all_logits:
            logits = self.llm.lm_head(h)  # (B, L, V)
            loss = lm_loss(logits[:, :-1], shift_labels)
        else:
            logits = self.llm.lm_head(h[:, :-1][targets])  # (n_tokens, V)
            loss = lm_loss(logits[None], shift_labels[targets][None])
        return dict(loss=loss, n_tokens=int(targets.sum()), logits=logits)

    # -- generation --------------------------------------------------------------------------

    def _as_batch(self, batch, mel, mel_lengths, audio, instruction: list) -> dict:
        """generate()'s keyword inputs -> a data.py-style batch."""
        if batch is not None:
            return batch
        if any(isinstance(r, str) for r in instruction):  # strings or id lists, one per row
            tok = self._need_tokenizer("a text instruction")
            instruction = [tok.encode(r, bos=False) if isinstance(r, str) else r for r in instruction]
        width = max(len(r) for r in instruction)
        instruction = torch.tensor([list(r) + [-1] * (width - len(r)) for r in instruction])  # (B, Li)
        if audio is not None:  # 16 kHz waveforms -> zero-padded log-mels
            mels = [log_mel_spectrogram(torch.as_tensor(a), n_mels=self.cfg.whisper.n_mels) for a in audio]
            mel_lengths = torch.tensor([m.shape[-1] for m in mels])
            mel = torch.zeros(len(mels), mels[0].shape[0], int(mel_lengths.max()))
            for i, m in enumerate(mels):
                mel[i, :, : m.shape[-1]] = m
        kind = "text" if mel is None else "speech"
        return dict(kind=kind, instruction=instruction, mel=mel, mel_lengths=mel_lengths)

    @torch.no_grad()
    def generate_ids(
        self,
        batch: dict | None = None,
        *,
        mel: torch.Tensor | None = None,
        mel_lengths: torch.Tensor | None = None,
        audio: list | None = None,
        instruction: list | None = None,
        layout: str = "release",
        max_new_tokens: int = 400,
        repetition_penalty: float = 1.05,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Token ids (eos not included) for a batch, with the KV cache; no tokenizer needed
        when the instruction is ids. Defaults are the release's decoding: its generate()
        prompt, greedy, repetition penalty 1.05 on generated tokens, 400 new tokens at most.

        Give a data.py batch, or mel (B, n_mels, T) + mel_lengths (B,), or audio (a list of
        16 kHz waveforms), with instruction a list of strings or of id lists, one per row;
        without speech the batch is text-only. A batch gives the tokens each row gives alone.
        """
        batch = self._as_batch(batch, mel, mel_lengths, audio, instruction)
        x = self.build_inputs(batch, layout=layout, with_target=False)
        return pangu.generate(
            self.llm,
            x["inputs_embeds"],
            x["attention_mask"],
            max_new_tokens=max_new_tokens,
            eos_id=self.cfg.llm.eos_id if eos_id is None else eos_id,
            repetition_penalty=repetition_penalty,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            generator=generator,
        )

    def generate(self, batch: dict | None = None, **kwargs) -> tuple[list[str], list[list[int]]]:
        """(texts, ids): `generate_ids` decoded with the tokenizer (special pieces skipped
        as the release's `skip_special_tokens=True`)."""
        tok = self._need_tokenizer("decoding generated ids")
        ids = self.generate_ids(batch, **kwargs)
        return [tok.decode(row) for row in ids], ids

    # -- loading and saving ------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        checkpoint: str | Path,
        llm_dir: str | Path | None = None,
        config: "str | IOSUMConfig | None" = None,
        dtype: torch.dtype | None = None,
        tokenizer: "str | Path | PanguTokenizer | None" = None,
        verbose: bool = True,
    ) -> "IOSUMPangu":
        """Load our format (a directory: model.safetensors + config.json, no flags needed) or
        the released layout (a `.pt` state dict like `step_N.pt`, or the same dict as
        `.safetensors`) with dims from `config` (a preset name, default "iosum-pangu-7b", or
        an IOSUMConfig; head counts cannot be read from shapes) and the LLM's from
        `llm_dir/config.json`. `llm_dir`'s weights are read only when the checkpoint has no
        LLM; its `tokenizer.model`, when present, sets the prompts. Strict: a missing,
        unexpected or mis-shaped key raises naming it. dtype: the model's (default: the
        checkpoint's). Built on the meta device; each tensor is read once. verbose: print
        what was loaded (train.py: rank 0 only).
        """
        path, t = Path(checkpoint), time.time()
        if path.is_dir():
            if config is not None:
                raise ValueError(f"{path} carries its own config.json: drop config=")
            model = cls._from_dir(path, dtype)
            model.source = _read_our_config(path).get("source", "ours")
        else:
            model = cls._from_release(path, llm_dir, config, dtype)
            model.source = "release"
        n = count_params(model)
        w = model.speech_token_emded.weight
        if verbose:
            print(f"loaded {path}: {n / 1e6:.1f} M parameters, {w.dtype}, {time.time() - t:.1f} s")
        tokenizer = tokenizer or tokenizer_in(llm_dir) or model.tokenizer_file
        if tokenizer is not None:
            model.set_prompts(tokenizer)
        return model.eval()

    @classmethod
    def _from_release(cls, path: Path, llm_dir, config, dtype) -> "IOSUMPangu":
        if config is None or isinstance(config, str):
            source = f"preset {config or 'iosum-pangu-7b'!r}"
            cfg = IOSUMConfig.from_name(config or "iosum-pangu-7b")
        else:
            source, cfg = "the given IOSUMConfig", config
        if llm_dir is not None and (Path(llm_dir) / "config.json").exists():
            llm_cfg = PanguConfig.from_json(Path(llm_dir) / "config.json")
            source += f" + {Path(llm_dir) / 'config.json'}"
            try:
                cfg = dataclasses.replace(cfg, llm=llm_cfg)
            except ValueError as e:
                raise ValueError(f"{Path(llm_dir) / 'config.json'}: {e}") from None
        if path.suffix == ".safetensors":
            # The aliases are separate copies here. Compare them through a mapping of their
            # own, which goes away afterwards: read through the main mapping, their pages
            # would stay resident (2 x 1.26 GB for the 7B) for as long as the model lives.
            sd = read_tensors(path, skip=RELEASED_ALIASES)
            check_release_layout(sd, str(path))
            for pair in RELEASED_ALIASES.items():  # one pair at a time
                check_aliases(read_tensors(path, keys=pair), str(path))
        else:
            sd = read_tensors(path)  # a .pt shares one storage per alias: nothing to read
        ours = released_state_dict(sd, str(path))
        with torch.device("meta"):
            model = cls(cfg)
        if not any(k.startswith("llm.") for k in ours):
            # encoder + adapter only (e.g. after stage 1): the base LLM from the openPangu dir
            if llm_dir is None:
                raise ValueError(f"{path} holds no LLM weights (llama_model.*): pass llm_dir")
            wrapped = {k.replace(".base_layer.", ".") for k in model.state_dict() if ".base_layer." in k}
            for k, v in pangu_state_dict(read_tensors(llm_dir)).items():
                name = "llm." + k  # a LoRA-wrapped Linear keeps its weights under base_layer
                if name in wrapped:
                    name = "{}.base_layer.{}".format(*name.rsplit(".", 1))
                ours[name] = v
            if cfg.lora_r > 0:  # fresh LoRA (B = 0): the LLM's function is the base model's
                for name, p in model.named_parameters():
                    if ".lora_" in name:
                        ours[name] = (torch.zeros if ".lora_B." in name else _kaiming)(p.shape)
        dtype = dtype or _main_dtype(ours)
        load_strict(model, ours, f"{path} (dims from {source})", dtype)
        return model

    @classmethod
    def _from_dir(cls, path: Path, dtype) -> "IOSUMPangu":
        meta = _read_our_config(path)
        if meta.get("trainable_only"):
            raise ValueError(
                f"{path} holds only the trainable parameters of a training run: load the full "
                "model with from_pretrained(...), then model.load_trainable(path)"
            )
        cfg = IOSUMConfig.from_dict(meta["config"])
        sd = read_tensors(path / WEIGHTS_NAME)
        with torch.device("meta"):
            model = cls(cfg)
        load_strict(model, sd, str(path / WEIGHTS_NAME), dtype or _main_dtype(sd))
        model.prompt_ids = {k: list(v) for k, v in meta.get("prompt_ids", {}).items()}
        if (path / TOKENIZER_NAME).exists():
            model.tokenizer_file = path / TOKENIZER_NAME
        return model

    def save_pretrained(self, out_dir: str | Path, trainable_only: bool = False, merge_lora: bool = False) -> Path:
        """Write `model.safetensors` + `config.json` (+ the tokenizer files), loadable by
        `from_pretrained(out_dir)`. trainable_only: only parameters with requires_grad (a
        training checkpoint, for `load_trainable`). merge_lora: fold LoRA into the base
        weights and save a LoRA-free model (config lora_r = 0)."""
        cfg = self.cfg
        if trainable_only:
            sd = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        else:
            sd = {k: v.detach() for k, v in self.state_dict().items()}
        if merge_lora:
            sd = _merged(self, sd)
            cfg = dataclasses.replace(cfg, lora_r=0)
        from safetensors.torch import save_file

        meta = dict(format=FORMAT, source=self.source, trainable_only=trainable_only, config=cfg.to_dict())
        meta["prompt_ids"] = self.prompt_ids
        # A new folder renamed over the old one (checkpoint.atomic_dir): a model loaded from the old
        # files keeps them memory-mapped, while rewriting them in place would pull its pages away.
        with atomic_dir(out_dir) as tmp:
            save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp / WEIGHTS_NAME))
            (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
            if self.tokenizer_file is not None and self.tokenizer_file.exists():
                shutil.copyfile(self.tokenizer_file, tmp / TOKENIZER_NAME)
                table = self.tokenizer_file.parent / "tokenizer_config.json"  # its added tokens
                if table.exists():
                    shutil.copyfile(table, tmp / table.name)
        return Path(out_dir)

    @torch.no_grad()
    def load_trainable(self, path: str | Path) -> "IOSUMPangu":
        """Copy a `save_pretrained(..., trainable_only=True)` checkpoint into this model."""
        path = Path(path)
        meta = _read_our_config(path)
        if meta["config"] != self.cfg.to_dict():
            raise ValueError(f"{path / 'config.json'}: its config differs from this model's")
        sd = read_tensors(path / WEIGHTS_NAME)
        want = self.state_dict()
        for k, v in sd.items():
            if k not in want:
                raise KeyError(f"{path}: unexpected key {k}")
            if v.shape != want[k].shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, model {tuple(want[k].shape)}")
            want[k].copy_(v)
        return self


FORMAT = "iosum-pangu"  # config.json "format" of our own checkpoints
WEIGHTS_NAME = "model.safetensors"
TOKENIZER_NAME = "tokenizer.model"


def tokenizer_in(llm_dir) -> Path | None:
    """The `tokenizer.model` of a model folder (an openPangu dir or one of our checkpoints), or None."""
    if llm_dir is not None and (Path(llm_dir) / TOKENIZER_NAME).exists():
        return Path(llm_dir) / TOKENIZER_NAME
    return None


def _read_our_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.exists() or not (path / WEIGHTS_NAME).exists():
        raise FileNotFoundError(
            f"{path}: not one of our checkpoints (needs config.json and {WEIGHTS_NAME}); a "
            "released checkpoint is a single .pt / .safetensors file"
        )
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{file}: not an I-OSUM-Pangu config (format {meta.get('format')!r}); an openPangu "
            "directory goes in llm_dir=, with the released checkpoint as first argument"
        )
    return meta


def _kaiming(shape):
    w = torch.empty(shape)
    nn.init.kaiming_uniform_(w, a=5**0.5)  # peft's init of lora_A
    return w


def _main_dtype(sd: dict) -> torch.dtype:
    """The floating dtype holding most bytes (a bf16 release loads as bf16)."""
    count: dict[torch.dtype, int] = {}
    for v in sd.values():
        if v.is_floating_point():
            count[v.dtype] = count.get(v.dtype, 0) + v.numel() * v.element_size()
    return max(count, key=count.get) if count else torch.float32


def _merged(model: IOSUMPangu, sd: dict) -> dict:
    """State dict with every LoRALinear folded: W + scaling * B @ A, LoRA keys dropped."""
    sd = dict(sd)
    for name, m in model.named_modules():
        if isinstance(m, pangu.LoRALinear):
            w = sd[f"{name}.base_layer.weight"]
            if not m.merged:  # float32, then rounded once
                sd[f"{name}.base_layer.weight"] = (w.float() + m.delta_weight()).to(w.dtype)
            del sd[f"{name}.lora_A.weight"], sd[f"{name}.lora_B.weight"]
    return {k.replace(".base_layer.", "."): v for k, v in sd.items()}


# ----------------------------------------------------------------------------- the released layout

# Prefix of each part in the released state dict (LLMASR_Model.state_dict()) -> ours.
RELEASED_PARTS = (
    "encoder.",
    "down_sample_2.",
    "speech_transformer.",
    "speech_llama_proj.",
    "speech_token_emded.",
    "llama_model.",
)
# Keys dropped on purpose, each with the reason.
RELEASED_DROPPED = {
    "ln_speech.": "LayerNorm(1024) registered in LLMASR_Model.__init__ but never called",
    "speech_head.": "Linear(4096, 4097): the speech-token (TTS) output, not speech-to-text",
}
RELEASED_ALIASES = {  # LLMASR_Model also registers the LLM's embedding and head as submodules
    "embed_tokens.weight": "llama_model.base_model.model.model.embed_tokens.weight",
    "lm_head.weight": "llama_model.base_model.model.lm_head.weight",
}


def check_release_layout(sd: dict, source: str) -> None:
    if not any(k.startswith(("down_sample_2.", "speech_llama_proj.")) for k in sd):
        raise ValueError(
            f"{source} is not a released I-OSUM-Pangu checkpoint (no down_sample_2.* / "
            f"speech_llama_proj.* keys; it starts with {some_keys(sorted(sd), 4)}). "
            "An openPangu checkpoint goes in llm_dir=; a Whisper one in whisper_enc.load_whisper"
        )


def check_aliases(sd: dict, source: str) -> None:
    """The top-level aliases, when present, must be the LLM's tensors (the .pt shares one
    storage; the .safetensors holds two equal copies)."""
    for alias, key in RELEASED_ALIASES.items():
        if alias not in sd:
            continue
        if key not in sd:
            raise KeyError(f"{source}: {alias} is present but {key} is not")
        a, b = sd[alias], sd[key]
        if a.shape != b.shape:
            raise ValueError(f"{source}: {alias} {tuple(a.shape)} vs {key} {tuple(b.shape)}")
        if a.data_ptr() != b.data_ptr() and not torch.equal(a, b):
            raise ValueError(f"{source}: {alias} differs from {key} (they must be one tensor)")


def released_state_dict(sd: dict, source: str = "checkpoint") -> dict:
    """The released checkpoint's keys -> our module names (encoder., adapter., llm.,
    speech_token_emded.). Every key is consumed or dropped on purpose; anything else raises."""
    check_release_layout(sd, source)
    check_aliases(sd, source)
    parts: dict[str, dict] = {p: {} for p in RELEASED_PARTS}
    unknown = []
    for k, v in sd.items():
        if k in RELEASED_ALIASES or k.startswith(tuple(RELEASED_DROPPED)):
            continue
        part = next((p for p in RELEASED_PARTS if k.startswith(p)), None)
        if part is None:
            unknown.append(k)
        else:
            parts[part][k] = v
    if unknown:
        raise ValueError(f"{source}: unexpected keys {some_keys(unknown)}")
    out = {}
    if parts["encoder."]:  # checks encoder.embed.pos_enc.pe against the formula, drops it
        out.update({"encoder." + k: v for k, v in whisper_state_dict(parts["encoder."]).items()})
    adapter_keys = {
        **parts["down_sample_2."],
        **parts["speech_transformer."],
        **parts["speech_llama_proj."],
    }
    # keeps our (= the release's) names; checks speech_transformer.embed.pos_enc.pe, drops it
    out.update({"adapter." + k: v for k, v in adapter_state_dict(adapter_keys).items()})
    out.update(parts["speech_token_emded."])
    if parts["llama_model."]:  # peft names -> ours (base_layer kept, ".default" dropped)
        out.update({"llm." + k: v for k, v in pangu_state_dict(parts["llama_model."]).items()})
    return out


# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="released checkpoint -> our format (a directory)")
    conv.add_argument("checkpoint", help="step_N.pt or the same dict as .safetensors")
    conv.add_argument("out_dir")
    conv.add_argument(
        "--llm-dir", help="openPangu dir: config.json, tokenizer.model (weights only if the checkpoint has none)"
    )
    conv.add_argument("--preset", default="iosum-pangu-7b", choices=sorted(PRESETS))
    conv.add_argument("--merge-lora", action="store_true", help="fold LoRA into the weights")
    conv.add_argument(
        "--dtype", choices=["bfloat16", "float32", "float16"], default=None, help="default: the checkpoint's"
    )
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = IOSUMPangu.from_pretrained(args.checkpoint, args.llm_dir, args.preset, dtype=dtype)
    n = count_params(model)
    out = model.save_pretrained(args.out_dir, merge_lora=args.merge_lora)
    print(
        f"{args.checkpoint} -> {out} ({n / 1e6:.1f} M parameters, "
        f"{'LoRA merged' if args.merge_lora else f'LoRA r {model.cfg.lora_r}'})"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
