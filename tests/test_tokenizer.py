"""PanguTokenizer against what openPangu's own tokenizer class returned (reference/tokenizer),
and on a small sentencepiece model trained here with the toy study's special pieces."""

import io
import json
import shutil

import pytest
import sentencepiece as spm

from tokenizer import PanguTokenizer

TOY_SPECIAL = ["<|User|>:", "<|Bot|>:"] + [f"[unused{i}]" for i in range(34)]


@pytest.fixture
def ref(reference_dir):
    d = reference_dir / "tokenizer"
    return PanguTokenizer(d / "tokenizer.model"), json.loads((d / "cases.json").read_text())


def test_special_ids(ref):
    tok, c = ref
    s = c["special"]
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (
        s["bos_token_id"],
        s["eos_token_id"],
        s["unk_token_id"],
        s["pad_token_id"],
    )
    assert tok.vocab_size == s["vocab_size"]
    assert tok.added == s["added_tokens"]
    assert tok.special_ids == set(s["all_special_ids"])


def test_added_table_comes_from_tokenizer_config(ref, reference_dir, tmp_path):
    # a bare tokenizer.model cannot list its user-defined pieces: the error names the missing table
    tok, c = ref
    (tmp_path / "tokenizer.model").write_bytes(tok.sp.serialized_model_proto())
    with pytest.raises(FileNotFoundError, match=r"tokenizer_config\.json is missing.*added_tokens_decoder"):
        PanguTokenizer(tmp_path / "tokenizer.model")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(ValueError, match="no added_tokens_decoder"):
        PanguTokenizer(tmp_path / "tokenizer.model")
    shutil.copyfile(reference_dir / "tokenizer" / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    copied = PanguTokenizer(tmp_path / "tokenizer.model")
    assert copied.added == c["special"]["added_tokens"]
    assert (copied.bos_id, copied.eos_id, copied.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_cases_encode(ref):
    tok, c = ref
    for case in c["cases"]:
        assert tok.encode(case["text"]) == case["input_ids"], case["name"]
        assert tok.encode(case["text"], bos=False) == case["tokenize_ids"], case["name"]


def test_cases_decode(ref):
    tok, c = ref
    for case in c["cases"]:
        ids = case["input_ids"]
        assert tok.decode(ids) == case["decode_skip_special"], case["name"]
        assert tok.decode(ids, skip_special=False) == case["decode_keep_special"], case["name"]
        got = tok.decode(case["tokenize_ids"], skip_special=False)
        assert got == case["decode_tokenize_ids"], case["name"]
    for case in c["decode_cases"]:
        assert tok.decode(case["ids"]) == case["decode_skip_special"], case["name"]
        got = tok.decode(case["ids"], skip_special=False)
        assert got == case["decode_keep_special"], case["name"]


# ------------------------------------------------------------------ a model trained here

TEXTS = [
    "hello world, this is a small test of the tokenizer.",
    "今天天气很好。我们去公园散步吧！",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "  two leading spaces and   runs   of spaces  ",
    "numbers 12345 and 3.1415, emoji 🙂 and tabs\tend",
]


@pytest.fixture(scope="module")
def toy_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    corpus = (TEXTS * 3) + [f"line {i}: the quick brown fox jumps over {i * 7} lazy dogs" for i in range(200)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=TOY_SPECIAL,
        character_coverage=1.0,
        minloglevel=2,
    )
    (d / "tokenizer.model").write_bytes(model.getvalue())
    # the added-token table the release keeps beside its model: here <unk>, <s>, </s> and the toy pieces
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    added = ["<unk>", "<s>", "</s>", *TOY_SPECIAL]
    table = {str(sp.piece_to_id(p)): {"content": p, "special": True} for p in added}
    (d / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": table}))
    return PanguTokenizer(d / "tokenizer.model")


def test_toy_special_ids(toy_tok):
    sp = toy_tok.sp
    assert (toy_tok.unk_id, toy_tok.bos_id) == (0, 1)
    assert toy_tok.eos_id == sp.piece_to_id("[unused10]") == 15  # the toy pieces take ids 3..38
    assert toy_tok.pad_id == toy_tok.vocab_size == sp.get_piece_size()
    assert set(toy_tok.added) == {"<unk>", "<s>", "</s>", "[PAD]", *TOY_SPECIAL}


def test_toy_bos_rules(toy_tok):
    sp = toy_tok.sp
    for text in TEXTS:
        assert toy_tok.encode(text) == [1] + sp.encode(text)  # no added token inside
        assert toy_tok.encode(text, bos=False) == sp.encode(text)
    assert toy_tok.encode("") == [1] and toy_tok.encode("", bos=False) == []
    assert toy_tok.encode("<s>hi")[:2] == [1, 1]  # a written <s> is one more BOS id
    assert 2 not in toy_tok.encode("hi") and toy_tok.eos_id not in toy_tok.encode("hi")


def test_toy_fragments_and_roundtrip(toy_tok):
    sp = toy_tok.sp
    text = "hello [unused9] world<|User|>:你好[unused10]"
    want = (
        sp.encode("hello ")
        + [sp.piece_to_id("[unused9]")]
        + sp.encode(" world")
        + [sp.piece_to_id("<|User|>:")]
        + sp.encode("你好")
        + [15]
    )
    assert toy_tok.encode(text, bos=False) == want
    for t in TEXTS + [
        "[unused9]系统：你好\n[unused9] 用户：🙂",
        "a\nb\n\nc",
        "[unused99] [unused1]0",
    ]:
        assert toy_tok.decode(toy_tok.encode(t)) == t
        assert toy_tok.decode(toy_tok.encode(t), skip_special=False) == "<s>" + t
    # the eos at the end of a target is dropped when decoding
    assert toy_tok.decode(toy_tok.encode("你好", bos=False) + [toy_tok.eos_id]) == "你好"
