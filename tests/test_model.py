"""The whole model against the original code's tensors (tests/fixtures/reference), loaded like a user
loads the release; batch invariance; the 7B key set; loader errors; our own format."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapter import sinusoids_interleaved
from model import IOSUMConfig, IOSUMPangu, main, released_state_dict

# Parity with the original's float32 run (ATOL + RTOL * |ref|): other code and other CPU kernels
# (MKL / oneDNN blocking per ISA, SDPA vs HF's path) sum in other orders. Rounding in a K-term
# float32 dot product is random-signed, ~sqrt(K) * eps (1.19e-7) of its |terms|: K <= 2560 gives
# ~6e-6 relative. The original is within 5.3e-7 (encoder), 1.9e-7 (adapter, embeds), 2.3e-7
# (logits) of a float64 copy (report.json); we measure <= 3e-6 (speech transformer and LLM hidden
# states, values <= 4): the bound is >= 3x that.
ATOL = 1e-5
RTOL = 1e-4
EOS_STANDIN = 511  # the reference's fake tokenizer eos (stands for 45892)


@pytest.fixture
def fx(reference_dir):
    return load_file(reference_dir / "fixtures.safetensors")


def load_reference(reference_dir, fx, checkpoint=None, **kw) -> IOSUMPangu:
    """As a user would: the released-layout file, the LLM dir (config.json; the reference has
    no tokenizer.model), the preset with the reference's head counts. Prompts: recorded ids."""
    model = IOSUMPangu.from_pretrained(
        checkpoint or reference_dir / "checkpoint.pt", llm_dir=reference_dir, config="reference-tiny", **kw
    )
    model.set_prompt_ids(
        p1_speech=fx["ids_prompt_pattern1"].tolist(),
        p1_generate=fx["ids_prompt_pattern1_generate"].tolist(),
        p2=fx["ids_prompt_pattern2"].tolist(),
    )
    return model


def single_batch(fx, target=True) -> dict:
    b = dict(
        kind="speech",
        mel=fx["mel"].T[None],  # (1, 80, 320)
        mel_lengths=torch.tensor([320]),
        instruction=fx["ids_instruction_prompt"][None],
    )
    if target:
        b["target"] = fx["ids_label"][None]
    return b


def batch2(fx) -> dict:
    mel = torch.zeros(2, 80, 320)  # WeNet's collate: zero padding
    mel[0] = fx["mel"].T
    mel[1, :, :251] = fx["batch2_mel_short"].T
    return dict(
        kind="speech",
        mel=mel,
        mel_lengths=fx["batch2_mel_lens"],
        instruction=fx["batch2_prompt"],  # padded with -1, as data.py
        target=fx["batch2_target"],  # padded with -100
    )


def close(a, b, atol=ATOL, rtol=RTOL):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------- reference parity


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
@torch.no_grad()
def test_reference_single_utterance(reference_dir, reference_safetensors, fx, fmt):
    model = load_reference(reference_dir, fx, reference_safetensors if fmt == "safetensors" else None)
    assert model.speech_token_emded.weight.dtype == torch.float32
    mel = fx["mel"].T[None]
    enc, enc_len = model.encoder(mel)
    assert enc_len.tolist() == [160]
    close(enc[0], fx["encoder_out"])
    down = model.adapter.down_sample_2(enc)
    close(down[0], fx["downsample_out"])
    st = model.adapter.speech_transformer(down, torch.ones(1, 40, dtype=torch.bool))
    close(st[0], fx["speech_transformer_out"])
    speech, speech_len = model.speech_embeddings(mel, torch.tensor([320]))
    assert speech_len.tolist() == [40]
    close(speech[0], fx["adapter_out"])

    batch = single_batch(fx)
    x = model.build_inputs(batch, layout="train")
    close(x["inputs_embeds"][0], fx["forward_inputs_embeds"])
    assert x["attention_mask"][0].equal(fx["forward_attention_mask"])
    assert x["position_ids"][0].equal(fx["forward_position_ids"])
    assert x["labels"][0].equal(fx["forward_target"])
    hidden = model.llm.hidden(
        inputs_embeds=x["inputs_embeds"],
        attention_mask=x["attention_mask"],
        position_ids=x["position_ids"],
    )
    close(hidden[0], fx["forward_llm_hidden_states"][2])
    out = model(batch)
    close(out["logits"][0], fx["forward_logits"])
    assert out["n_tokens"] == 8
    # mean CE over 8 targets: moves like the logits (~1e-6) plus eps * 6.3; rtol 1e-5 = 6.3e-5
    close(out["loss"], fx["forward_loss"][0], atol=0, rtol=1e-5)

    g = model.build_inputs(single_batch(fx, target=False), layout="release", with_target=False)
    close(g["inputs_embeds"][0], fx["generate_inputs_embeds"])
    assert g["attention_mask"].bool().all()
    # Exact ids: the recorded top-1/top-2 gaps are >= 1.55e-3 (9.04e-5 with the penalty below),
    # far above our logit gap of ~1e-6 from the original.
    greedy = model.generate_ids(single_batch(fx, False), max_new_tokens=16, repetition_penalty=1.0, eos_id=EOS_STANDIN)
    assert greedy == [fx["generate_ids"].tolist()]
    # the release's defaults: its generate() prompt and repetition penalty 1.05
    default = model.generate_ids(single_batch(fx, False), max_new_tokens=16, eos_id=EOS_STANDIN)
    assert default == [fx["generate_ids_reppen105"].tolist()]


@torch.no_grad()
def test_reference_batch_of_two(reference_dir, fx):
    """The release's batch-2 forward. Masks, positions, targets: exact. Row 0: as the fixture.
    Row 1 (251 mel frames, padded to 320): our encoder gives it its solo 126 frames, where the
    release's parity rule gives 125 (docs/release.md §3) and so attention over one frame less; its encoder
    frames then differ from the release's batch by ~1.2e-3, so they are compared with the
    release's solo run. The adapter gives 32 frames either way (ceil(ceil(L/2)/2)), so the
    layout is the same and the later tensors differ by only ~4e-6 (adapter) / ~7e-6 (logits)."""
    model = load_reference(reference_dir, fx)
    b = batch2(fx)
    enc, enc_len = model.encoder(b["mel"], b["mel_lengths"])
    assert enc_len.tolist() == [160, 126]  # the release: [160, 125]
    assert fx["batch2_encoder_lens"].tolist() == [160, 125]
    close(enc[0], fx["batch2_encoder_out"][0])
    close(enc[1, :126], fx["short_alone_encoder_out"])
    release_gap = (enc[1, :125] - fx["batch2_encoder_out"][1, :125]).abs().max().item()
    assert 1e-4 < release_gap < 1e-2, release_gap  # the documented parity quirk, not noise

    speech, speech_len = model.speech_embeddings(b["mel"], b["mel_lengths"])
    assert speech_len.tolist() == fx["batch2_adapter_lens"].tolist() == [40, 32]
    close(speech[0], fx["batch2_adapter_out"][0])
    close(speech[1, :32], fx["short_alone_adapter_out"])
    # not rounding: the release's row 1 saw 125 encoder frames, 4.2e-6 off its solo run at the
    # adapter (reference README, quirk 7); that gap is fixed by the data, 1e-4 is 20x
    close(speech[1, :32], fx["batch2_adapter_out"][1, :32], atol=1e-4)

    x = model.build_inputs(b)
    assert x["attention_mask"].equal(fx["batch2_forward_attention_mask"])
    assert x["position_ids"].equal(fx["batch2_forward_position_ids"])
    assert x["labels"].equal(fx["batch2_forward_target"])
    valid = fx["batch2_forward_attention_mask"].bool()
    close(x["inputs_embeds"][0], fx["batch2_forward_inputs_embeds"][0])
    emb1, want1 = x["inputs_embeds"][1][valid[1]], fx["batch2_forward_inputs_embeds"][1][valid[1]]
    close(emb1, want1, atol=1e-4)  # speech rows: the ~4e-6 above; text rows: exact
    out = model(b)
    assert out["n_tokens"] == 12
    close(out["logits"][0], fx["forward_logits"])
    # the same 125-frame quirk carried to the logits (~7e-6, measured 6.5e-6), 1e-4 is 15x
    close(out["logits"][1][valid[1]], fx["batch2_forward_logits_row1"][valid[1]], atol=1e-4)
    close(out["loss"], fx["batch2_forward_loss"][0], atol=0, rtol=1e-5)  # as for the single loss


@torch.no_grad()
def test_reference_batch_generation_equals_single(reference_dir, fx):
    model = load_reference(reference_dir, fx)
    b = batch2(fx)
    solo = {}
    for layout in ("release", "train"):
        kw = dict(max_new_tokens=16, eos_id=EOS_STANDIN, layout=layout)
        together = model.generate_ids(b, **kw)
        for i in range(2):
            n, k = int(b["mel_lengths"][i]), int((b["instruction"][i] >= 0).sum())
            alone = model.generate_ids(
                mel=b["mel"][i : i + 1, :, :n], instruction=[b["instruction"][i, :k].tolist()], **kw
            )
            assert together[i] == alone[0], (layout, i)
            solo[layout, i] = alone[0]
    assert solo["release", 0] != solo["train", 0]  # the two layouts are different prompts
    # eos 85: row 1 writes it at step 12, row 0 never: rows stop apart, each as it would alone
    together = model.generate_ids(b, max_new_tokens=16, eos_id=85)
    assert together == [solo["release", 0], solo["release", 1][:12]]
    assert 85 not in solo["release", 0] and solo["release", 1][12] == 85


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch without oneDNN")
@torch.no_grad()
def test_packed_llm_generates_the_same(reference_dir, fx):
    """The CPU recipe of the README (merge LoRA, pack the decoder) changes no token."""
    from cpu_decode import pack_for_cpu
    from pangu import merge_lora

    model = load_reference(reference_dir, fx)
    b = batch2(fx)
    kw = dict(max_new_tokens=16, eos_id=EOS_STANDIN)
    want = [model.generate_ids(b, layout=layout, **kw) for layout in ("release", "train")]
    pack_for_cpu(merge_lora(model.llm))
    assert [model.generate_ids(b, layout=layout, **kw) for layout in ("release", "train")] == want


@torch.no_grad()
def test_position_tables_in_checkpoint(reference_safetensors, fx, tmp_path):
    """The real release stores both sinusoid buffers: accepted when they are the formulas
    (here in bf16, as the release probably is), refused when they are not."""
    sd = load_file(reference_safetensors)
    from whisper_enc import sinusoids

    sd["encoder.embed.pos_enc.pe"] = sinusoids(30000, 64)[None].bfloat16().float()
    sd["speech_transformer.embed.pos_enc.pe"] = sinusoids_interleaved(5000, 64)[None]
    save_file(sd, tmp_path / "with_pe.safetensors")
    model = IOSUMPangu.from_pretrained(tmp_path / "with_pe.safetensors", config="reference-tiny")
    model.set_prompt_ids(**{k: fx[v].tolist() for k, v in PROMPTS.items()})
    close(model(single_batch(fx))["logits"][0], fx["forward_logits"])  # tables dropped: see ATOL
    sd["speech_transformer.embed.pos_enc.pe"] = sinusoids(5000, 64)[None]  # [sin | cos]: wrong
    save_file(sd, tmp_path / "bad_pe.safetensors")
    with pytest.raises(ValueError, match="speech_transformer.embed.pos_enc.pe"):
        IOSUMPangu.from_pretrained(tmp_path / "bad_pe.safetensors", config="reference-tiny")


PROMPTS = dict(
    p1_speech="ids_prompt_pattern1",
    p1_generate="ids_prompt_pattern1_generate",
    p2="ids_prompt_pattern2",
)


@torch.no_grad()
def test_bf16_checkpoint_and_bf16_model(reference_dir, reference_safetensors, fx, tmp_path):
    sd = {k: v.bfloat16() for k, v in load_file(reference_safetensors).items()}
    save_file(sd, tmp_path / "bf16.safetensors")
    for path, dtype in [
        (tmp_path / "bf16.safetensors", None),
        (reference_dir / "checkpoint.pt", torch.bfloat16),
    ]:
        model = IOSUMPangu.from_pretrained(path, config="reference-tiny", dtype=dtype)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        model.set_prompt_ids(**{k: fx[v].tolist() for k, v in PROMPTS.items()})
        out = model(single_batch(fx))
        # the reference measured 6.1e-3 (logits) and 4.3e-5 (loss) for its own bf16 run. The gap
        # is bf16 rounding of weights and activations (2^-8 relative each), which is the same on
        # any CPU; accumulation order only flips a rounding here and there. Measured 7.3e-3 on
        # logits <= 0.6; 3e-2 is 4x.
        close(out["logits"][0].float(), fx["forward_logits"], atol=3e-2, rtol=0)
        assert abs(out["loss"].item() - fx["forward_loss"].item()) < 5e-3
    model = IOSUMPangu.from_pretrained(tmp_path / "bf16.safetensors", config="reference-tiny", dtype=torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


# ----------------------------------------------------------------------------- the release's key set


def released_keys(enc_layers, d_enc, enc_ffn, d_ad, ad_ffn, ad_blocks, llm_layers, d, kv, ffn, vocab, r, n_mels=80):
    """Names and shapes of the released state dict, written from docs/release.md §3-6 (not from our code)."""
    keys = {
        "encoder.embed.conv.0.weight": (d_enc, n_mels, 3),
        "encoder.embed.conv.0.bias": (d_enc,),
        "encoder.embed.conv.2.weight": (d_enc, d_enc, 3),
        "encoder.embed.conv.2.bias": (d_enc,),
        "encoder.after_norm.weight": (d_enc,),
        "encoder.after_norm.bias": (d_enc,),
        "ln_speech.weight": (d_enc,),
        "ln_speech.bias": (d_enc,),
    }
    for i in range(enc_layers):
        p = f"encoder.encoders.{i}."
        for n in "qkv" + "o":
            name = "out" if n == "o" else n
            keys[p + f"self_attn.linear_{name}.weight"] = (d_enc, d_enc)
            if n != "k":  # Whisper's key projection has no bias
                keys[p + f"self_attn.linear_{name}.bias"] = (d_enc,)
        keys |= {
            p + "feed_forward.w_1.weight": (enc_ffn, d_enc),
            p + "feed_forward.w_1.bias": (enc_ffn,),
            p + "feed_forward.w_2.weight": (d_enc, enc_ffn),
            p + "feed_forward.w_2.bias": (d_enc,),
        }
        for n in ("norm1", "norm2"):
            keys |= {p + n + ".weight": (d_enc,), p + n + ".bias": (d_enc,)}
    s = "speech_transformer."
    keys |= {
        s + "embed.out.0.weight": (d_ad, d_ad),
        s + "embed.out.0.bias": (d_ad,),
        s + "embed.out.1.weight": (d_ad,),
        s + "embed.out.1.bias": (d_ad,),
        s + "after_norm.weight": (d_ad,),
        s + "after_norm.bias": (d_ad,),
    }
    for i in range(ad_blocks):
        p = f"{s}encoders.{i}."
        for n in ("q", "k", "v", "out"):
            keys |= {
                p + f"self_attn.linear_{n}.weight": (d_ad, d_ad),
                p + f"self_attn.linear_{n}.bias": (d_ad,),
            }
        keys |= {
            p + "feed_forward.w_1.weight": (ad_ffn, d_ad),
            p + "feed_forward.w_1.bias": (ad_ffn,),
            p + "feed_forward.w_2.weight": (d_ad, ad_ffn),
            p + "feed_forward.w_2.bias": (d_ad,),
        }
        for n in ("norm1", "norm2"):
            keys |= {p + n + ".weight": (d_ad,), p + n + ".bias": (d_ad,)}
    for i, c_in in zip((1, 4, 7), (d_enc, d_ad, d_ad)):
        keys |= {
            f"down_sample_2.conv.{i}.weight": (d_ad, c_in, 3),
            f"down_sample_2.conv.{i}.bias": (d_ad,),
        }
    keys |= {"speech_llama_proj.weight": (d, d_ad), "speech_llama_proj.bias": (d,)}
    m = "llama_model.base_model.model."
    head_dim = 16 if d == 64 else 128
    q, k = d, kv * head_dim
    for i in range(llm_layers):
        p = f"{m}model.layers.{i}."
        lin = {
            "self_attn.q_proj": (q, d),
            "self_attn.k_proj": (k, d),
            "self_attn.v_proj": (k, d),
            "self_attn.o_proj": (d, q),
            "mlp.gate_proj": (ffn, d),
            "mlp.down_proj": (d, ffn),
        }
        for n, (o, i_) in lin.items():
            keys[p + n + ".base_layer.weight"] = (o, i_)
            if n.startswith("self_attn"):
                keys[p + n + ".base_layer.bias"] = (o,)
            keys[p + n + ".lora_A.default.weight"] = (r, i_)
            keys[p + n + ".lora_B.default.weight"] = (o, r)
        keys[p + "mlp.up_proj.weight"] = (ffn, d)  # no LoRA on up_proj
        keys |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)}
    keys |= {
        m + "model.embed_tokens.weight": (vocab, d),
        m + "model.norm.weight": (d,),
        m + "lm_head.weight": (vocab, d),
        "embed_tokens.weight": (vocab, d),
        "lm_head.weight": (vocab, d),
        "speech_token_emded.weight": (4099, d),
        "speech_head.weight": (4097, d),
        "speech_head.bias": (4097,),
    }
    return keys


REFERENCE_DIMS = dict(
    enc_layers=2,
    d_enc=64,
    enc_ffn=256,
    d_ad=64,
    ad_ffn=2560,
    ad_blocks=4,
    llm_layers=2,
    d=64,
    kv=2,
    ffn=160,
    vocab=512,
    r=8,
)
RELEASE_DIMS = dict(
    enc_layers=24,
    d_enc=1024,
    enc_ffn=4096,
    d_ad=1024,
    ad_ffn=2560,
    ad_blocks=4,
    llm_layers=34,
    d=4096,
    kv=8,
    ffn=12800,
    vocab=153376,
    r=64,
)


def test_key_generator_matches_reference_keys(reference_dir):
    """The generator above reproduces the reference's keys.txt exactly (names and shapes)."""
    listed = {}
    for line in (reference_dir / "keys.txt").read_text().splitlines():
        if line.startswith("#") or "NOT in checkpoint" in line:
            continue
        name, shape = line.split("\t")[:2]
        listed[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    assert released_keys(**REFERENCE_DIMS) == listed


def test_release_preset_has_the_released_key_set():
    """iosum-pangu-7b on the meta device: the released keys (docs/release.md §6 with the LLM of docs/release.md §5,
    peft names, r 64) map one to one onto our parameters, with the same shapes."""
    with torch.device("meta"):
        model = IOSUMPangu(IOSUMConfig.from_name("iosum-pangu-7b"))
        released = {k: torch.empty(s) for k, s in released_keys(**RELEASE_DIMS).items()}
    released["embed_tokens.weight"] = released["llama_model.base_model.model.model.embed_tokens.weight"]
    released["lm_head.weight"] = released["llama_model.base_model.model.lm_head.weight"]
    ours = released_state_dict(released)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == want
    n = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert 52.0e6 < n(model.adapter) < 53.0e6  # docs/release.md §4: about 52 M
    assert 305e6 < n(model.encoder) < 307e6  # docs/release.md §11: about 306 M
    lora = sum(p.numel() for k, p in model.llm.named_parameters() if ".lora_" in k)
    assert 130e6 < lora < 132e6  # docs/release.md §11: about 131 M
    base = n(model.llm) - lora
    assert 8.02e9 < base < 8.04e9  # docs/release.md §11: 8.03 B with embedding and head


# ----------------------------------------------------------------------------- loader errors


def test_loader_errors(reference_dir, reference_safetensors, fx, tmp_path):
    sd = load_file(reference_safetensors)

    def attempt(d: dict, name: str, **kw):
        save_file(d, tmp_path / name)
        return IOSUMPangu.from_pretrained(tmp_path / name, config="reference-tiny", **kw)

    llm_only = {k[len("llama_model.base_model.model.") :]: v for k, v in sd.items() if k.startswith("llama_model.")}
    with pytest.raises(ValueError, match="not a released I-OSUM-Pangu checkpoint"):
        attempt(llm_only, "hf_pangu.safetensors")
    missing = dict(sd)
    del missing["speech_transformer.encoders.2.norm1.bias"]
    with pytest.raises(ValueError, match=r"missing keys adapter\.speech_transformer\.encoders\.2\.norm1\.bias"):
        attempt(missing, "missing.safetensors")
    bad = dict(sd, **{"speech_llama_proj.weight": torch.zeros(64, 32)})
    with pytest.raises(ValueError, match=r"mis-shaped keys: adapter\.speech_llama_proj\.weight: \(64, 32\)"):
        attempt(bad, "shape.safetensors")
    extra = dict(sd, **{"speech_extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected keys speech_extra.weight"):
        attempt(extra, "extra.safetensors")
    alias = dict(sd, **{"lm_head.weight": torch.zeros(512, 64)})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        attempt(alias, "alias.safetensors")
    # a config.json whose dims disagree with the checkpoint: named, with where the dims came from
    llm_dir = tmp_path / "llm"
    llm_dir.mkdir()
    cfg = json.loads((reference_dir / "config.json").read_text())
    (llm_dir / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=128)))
    with pytest.raises(ValueError, match=r"mlp\.up_proj\.weight: \(160, 64\).*wants \(128, 64\)") as e:
        IOSUMPangu.from_pretrained(reference_dir / "checkpoint.pt", llm_dir, "reference-tiny")
    assert "llm/config.json" in str(e.value)
    # the head counts are not in the shapes: a preset without the reference's widths fails
    with pytest.raises(ValueError, match="does not join"):
        IOSUMPangu.from_pretrained(reference_dir / "checkpoint.pt", reference_dir, "toy")
    with pytest.raises(ValueError, match="no LLM weights"):
        attempt(
            {
                k: v
                for k, v in sd.items()
                if not k.startswith("llama_model.") and k not in ("embed_tokens.weight", "lm_head.weight")
            },
            "nollm.safetensors",
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        IOSUMPangu.from_pretrained(tmp_path / "absent.pt", config="reference-tiny")


def test_missing_tokenizer(reference_dir, fx):
    model = IOSUMPangu.from_pretrained(reference_dir / "checkpoint.pt", reference_dir, "reference-tiny")
    assert model.tokenizer is None  # the reference dir has no tokenizer.model: loading works
    with pytest.raises(RuntimeError, match="needs a tokenizer"):
        model(single_batch(fx))  # no prompt ids yet
    model.set_prompt_ids(**{k: fx[v].tolist() for k, v in PROMPTS.items()})
    with pytest.raises(RuntimeError, match="needs a tokenizer"):
        model.generate(single_batch(fx, False), max_new_tokens=2)
    with pytest.raises(RuntimeError, match="needs a tokenizer"):
        model.generate_ids(mel=fx["mel"].T[None], instruction=["transcribe"], max_new_tokens=2)


# ----------------------------------------------------------------------------- our own format


@torch.no_grad()
def test_save_load_round_trip_and_convert(reference_dir, fx, tmp_path):
    model = load_reference(reference_dir, fx)
    batch = single_batch(fx)
    want = model(batch)["logits"]
    model.save_pretrained(tmp_path / "ours")
    again = IOSUMPangu.from_pretrained(tmp_path / "ours")  # no flags: config.json has it all
    assert again.cfg == model.cfg and again.prompt_ids == model.prompt_ids
    assert torch.equal(again(batch)["logits"], want)  # bit-identical
    again.save_pretrained(tmp_path / "ours")  # over the file it is memory-mapped from
    assert torch.equal(again(batch)["logits"], want)
    assert torch.equal(IOSUMPangu.from_pretrained(tmp_path / "ours")(batch)["logits"], want)
    # the command line, LoRA merged: same function, no LoRA modules left
    main(
        [
            "convert",
            str(reference_dir / "checkpoint.pt"),
            str(tmp_path / "merged"),
            "--llm-dir",
            str(reference_dir),
            "--preset",
            "reference-tiny",
            "--merge-lora",
        ]
    )
    merged = IOSUMPangu.from_pretrained(tmp_path / "merged")
    assert merged.cfg.lora_r == 0
    assert not any(".lora_" in k for k in merged.state_dict())
    merged.set_prompt_ids(**model.prompt_ids)
    close(merged(batch)["logits"][0], fx["forward_logits"])  # merge rounding ~1e-6 on top: see ATOL
    with pytest.raises(FileNotFoundError, match="not one of our checkpoints"):
        IOSUMPangu.from_pretrained(tmp_path)


def test_trainable_only_checkpoint(reference_dir, fx, tmp_path):
    model = load_reference(reference_dir, fx)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.adapter.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        model.adapter.speech_llama_proj.bias.add_(1.0)
    model.save_pretrained(tmp_path / "ckpt", trainable_only=True)
    assert set(load_file(tmp_path / "ckpt" / "model.safetensors")) == {
        "adapter." + k for k, _ in model.adapter.named_parameters()
    }
    with pytest.raises(ValueError, match="only the trainable parameters"):
        IOSUMPangu.from_pretrained(tmp_path / "ckpt")
    fresh = load_reference(reference_dir, fx).load_trainable(tmp_path / "ckpt")
    assert torch.equal(fresh.adapter.speech_llama_proj.bias, model.adapter.speech_llama_proj.bias)


# ----------------------------------------------------------------------------- batch invariance, text


def tiny_model(vocab=512) -> IOSUMPangu:
    torch.manual_seed(0)
    cfg = IOSUMConfig.from_name(
        "reference-tiny", llm=dict(vocab_size=vocab, eos_id=vocab - 1), adapter=dict(d_ffn=128, n_blocks=2)
    )
    model = IOSUMPangu(cfg).eval()
    with torch.no_grad():  # LoRA B starts at zero: make LoRA count in the tests
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.02)
    return model


@torch.no_grad()
def test_speech_embeddings_batch_equals_single():
    model = tiny_model()
    lengths = [301, 160, 37, 9]
    mels = [torch.randn(1, 80, n) for n in lengths]
    batch = torch.zeros(4, 80, max(lengths))
    for i, m in enumerate(mels):
        batch[i, :, : lengths[i]] = m[0]
    y, yl = model.speech_embeddings(batch, torch.tensor(lengths))
    for i, m in enumerate(mels):
        y1, l1 = model.speech_embeddings(m)
        assert yl[i] == l1[0]
        # same code and CPU, other shapes: other GEMM / SDPA sum orders, ~sqrt(K) * eps relative
        # (K <= 256: 2e-6); measured 7.2e-7
        close(y[i, : l1[0]], y1[0], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_text_batch_is_one_token_sequence():
    """A text-only (stage 2) sample is [P1_text][instruction][P2][target]: the LLM on those
    ids as one sequence (no pads) gives the same loss; a padded batch of two gives the mean
    over both rows' targets."""
    model = tiny_model()
    model.set_prompt_ids(p1_text=[1, 5, 6, 7], p2=[1, 8, 9])
    rows = [([20, 21, 22], [30, 31, 511]), ([23], [32, 7672, 33, 34, 511])]
    losses, counts = [], []
    for instr, tgt in rows:
        b = dict(kind="text", instruction=torch.tensor([instr]), target=torch.tensor([tgt]))
        out = model(b)
        ids = torch.tensor([[1, 5, 6, 7, *instr, 1, 8, 9, *[0 if t == 7672 else t for t in tgt]]])
        logits = model.llm(input_ids=ids)
        labels = torch.tensor([[-100] * (ids.shape[1] - len(tgt)) + [-100 if t == 7672 else t for t in tgt]])
        ref = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
        close(out["loss"], ref, atol=1e-6, rtol=1e-5)  # the same logits, the same CE: measured 0.0
        losses.append(out["loss"] * out["n_tokens"])
        counts.append(out["n_tokens"])
    assert counts == [3, 4]  # 7672 gets no loss
    b = dict(
        kind="text",
        instruction=torch.tensor([[20, 21, 22], [23, -1, -1]]),
        target=torch.tensor([rows[0][1] + [-100, -100], rows[1][1]]),
    )
    out = model(b)
    # the padded batch changes GEMM shapes (logits ~1e-6 apart) and the mean's order: rtol 1e-5
    # is 80 eps of the loss
    close(out["loss"], sum(losses) / sum(counts), atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_generate_with_tokenizer_text(reference_dir):
    """Text in and out through the openPangu tokenizer rules (the reference's stand-in model):
    a text instruction gives the ids of its tokenization; ids decode to the returned text."""
    from tokenizer import PanguTokenizer

    tok_file = reference_dir / "tokenizer" / "tokenizer.model"
    tok = PanguTokenizer(tok_file)
    model = tiny_model(vocab=tok.vocab_size)
    model.cfg.llm.eos_id = tok.eos_id
    model.set_prompts(tok_file)
    assert model.prompt_ids["p2"][0] == tok.bos_id
    audio = [torch.randn(16000) * 0.1, torch.randn(24000) * 0.1]
    texts, ids = model.generate(audio=audio, instruction=["请转录这段音频。", "<asr>"], max_new_tokens=5)
    assert texts == [tok.decode(r) for r in ids]
    from whisper_enc import log_mel_spectrogram

    alone = model.generate_ids(
        mel=log_mel_spectrogram(audio[1])[None], instruction=[tok.encode("<asr>", bos=False)], max_new_tokens=5
    )
    assert alone[0] == ids[1]


def test_llm_dir_given_as_checkpoint(reference_dir, tmp_path):
    """An openPangu directory in the checkpoint's place is named as such."""
    shutil.copy(reference_dir / "config.json", tmp_path / "config.json")
    save_file({"lm_head.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not an I-OSUM-Pangu config"):
        IOSUMPangu.from_pretrained(tmp_path)


@torch.no_grad()
def test_checkpoint_without_llm_reads_llm_dir(reference_dir, reference_safetensors, fx, tmp_path):
    """A checkpoint of encoder + adapter only (e.g. after stage 1): the LLM comes from the
    openPangu dir (Hugging Face layout) and gets fresh LoRA (B = 0), i.e. the base LLM."""
    sd = load_file(reference_safetensors)
    peft = "llama_model.base_model.model."
    base = {
        k[len(peft) :].replace(".base_layer.", "."): v
        for k, v in sd.items()
        if k.startswith(peft) and ".lora_" not in k
    }
    llm_dir = tmp_path / "openpangu"
    llm_dir.mkdir()
    save_file(base, llm_dir / "model.safetensors")
    shutil.copy(reference_dir / "config.json", llm_dir / "config.json")
    rest = {
        k: v for k, v in sd.items() if not k.startswith(peft) and k not in ("embed_tokens.weight", "lm_head.weight")
    }
    save_file(rest, tmp_path / "stage1.safetensors")
    model = IOSUMPangu.from_pretrained(tmp_path / "stage1.safetensors", llm_dir, "reference-tiny")
    model.set_prompt_ids(**{k: fx[v].tolist() for k, v in PROMPTS.items()})
    want = load_reference(reference_dir, fx)
    for name, p in want.named_parameters():
        if ".lora_B." in name:
            p.zero_()
    batch = single_batch(fx)
    # the same weights through the same code (B = 0 adds exact zeros): bit-equal on any CPU
    close(model(batch)["logits"], want(batch)["logits"], atol=1e-6, rtol=0)
    # LoRA moves the logits by up to 0.187 (reference README), far past 1e-3
    assert not torch.allclose(want(batch)["logits"][0], fx["forward_logits"], atol=1e-3)


@pytest.mark.gpu
@torch.no_grad()
def test_reference_on_cuda(reference_dir, fx):
    """The model follows its weights' device: CPU batches in, the same numbers out."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model = load_reference(reference_dir, fx).cuda()
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # convolutions in full float32, as on the CPU
    try:
        out = model(single_batch(fx))
        # CUDA float32 (no TF32) sums in other orders, like another CPU: ~1e-6; 1e-4 as on the CPU
        close(out["logits"][0].cpu(), fx["forward_logits"], atol=1e-4)
        ids = model.generate_ids(single_batch(fx, False), max_new_tokens=16, eos_id=EOS_STANDIN)
        assert ids == [fx["generate_ids_reppen105"].tolist()]
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    model = model.bfloat16()
    # bf16 rounding, as in test_bf16_checkpoint_and_bf16_model
    close(model(single_batch(fx))["logits"][0].float().cpu(), fx["forward_logits"], atol=3e-2, rtol=0)


@pytest.mark.real7b
@torch.no_grad()
def test_real_release_writes_the_task_tag(samples_dir):
    """With the released weights: the model names the task it was asked for, first."""
    import os

    from whisper_enc import load_audio

    ckpt, llm_dir = os.environ.get("IOSUM_CHECKPOINT"), os.environ.get("IOSUM_LLM_DIR")
    if not ckpt or not llm_dir:
        pytest.skip("set IOSUM_CHECKPOINT (step_N.pt) and IOSUM_LLM_DIR (openPangu-Embedded-7B-V1.1)")
    model = IOSUMPangu.from_pretrained(ckpt, llm_dir)
    wav = next(samples_dir.rglob("*.wav"))
    texts, _ = model.generate(audio=[load_audio(wav)], instruction=["请转录这段音频。"], max_new_tokens=40)
    assert texts[0].startswith("<asr>"), texts


def test_safetensors_aliases_do_not_stay_resident(reference_dir, reference_safetensors, tmp_path):
    """The release's .safetensors holds the embedding and head twice (aliases). Checking
    them must not leave their pages resident beside the model: load in a fresh process and
    measure the file-backed resident memory."""
    import subprocess
    import sys

    sd = load_file(reference_safetensors)
    V, peft = 400_000, "llama_model.base_model.model."
    embed, head = torch.randn(V, 64), torch.randn(V, 64)  # 102 MB each
    sd |= {
        peft + "model.embed_tokens.weight": embed,
        "embed_tokens.weight": embed.clone(),
        peft + "lm_head.weight": head,
        "lm_head.weight": head.clone(),
    }
    save_file(sd, tmp_path / "big.safetensors")
    cfg = json.loads((reference_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, vocab_size=V)))
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from model import IOSUMPangu\n"
        "rss = lambda: int([l for l in open('/proc/self/status') if l.startswith('RssFile')][0].split()[1])\n"
        "before = rss(); IOSUMPangu.from_pretrained(sys.argv[2], sys.argv[3], 'reference-tiny')\n"
        "print((rss() - before) // 1024)"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", script, root, str(tmp_path / "big.safetensors"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    grown_mb = int(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 100, f"{grown_mb} MB of the file stayed resident (the aliases are 205 MB)"


def test_training_forward_on_target_positions_only(reference_dir, fx):
    """all_logits=False (train.py) runs the LM head on the positions that predict a target only:
    the same loss as the release's (and as the full forward), the same logits there, and the same
    gradients, on the single utterance and the padded batch of two."""
    model = load_reference(reference_dir, fx)
    for batch, loss in ((single_batch(fx), fx["forward_loss"][0]), (batch2(fx), fx["batch2_forward_loss"][0])):
        grads = []
        for all_logits in (True, False):
            model.zero_grad(set_to_none=True)
            out = model(batch, all_logits=all_logits)
            out["loss"].backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            if all_logits:
                full = out["logits"].detach()
        close(out["loss"], loss, atol=0, rtol=1e-5)  # as test_reference_single_utterance's loss
        labels = model.build_inputs(batch)["labels"][:, 1:]
        assert out["n_tokens"] == int((labels != -100).sum()) == out["logits"].shape[0]
        # the same rows through a GEMM of fewer rows: ~1e-6 apart (ATOL as the parity tests)
        close(out["logits"].detach(), full[:, :-1][labels != -100])
        assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
        # measured bit-equal here (the logits' gradient is zero off the targets either way)
        for n, g in grads[1].items():
            scale = grads[0][n].abs().max().item()  # float32 sum-order rounding elsewhere: ~1e-7 * scale
            close(g, grads[0][n], atol=1e-5 * scale, rtol=0)  # 100x that: holds on any IEEE CPU
