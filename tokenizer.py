"""openPangu's tokenizer: sentencepiece plus the added-token table of its `tokenizer_config.json`.

Mirrors the slow `PanguTokenizer` of openPangu-Embedded-7B-V1.1 (`tokenization_openpangu.py`, a
`transformers` slow tokenizer), rule for rule, without `transformers`. tests/test_tokenizer.py checks it
against what that class returned on 43 + 15 recorded cases (tests/fixtures/reference/tokenizer).
"""

import json
import re
from collections.abc import Iterable
from pathlib import Path


class PanguTokenizer:
    """openPangu's slow tokenizer (sentencepiece + added tokens).

    The rules are pinned by tests/fixtures/reference/tokenizer/README.md: all added tokens are cut out
    of the text first and each fragment between them is encoded by its own sentencepiece call (so each
    gets its own dummy-prefix `▁`); decoding drops only <s>, [unused10], <unk> and [PAD], writes other
    added tokens literally and decodes each run between them with one sentencepiece call. The release
    adds `[PAD]` with id = vocab size (never embedded).
    """

    def __init__(self, model_file: str | Path, eos_piece: str = "[unused10]"):
        import sentencepiece as spm

        model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size = self.sp.get_piece_size()
        # The added tokens (the special and user-defined pieces): sentencepiece's Python API cannot
        # list user-defined pieces, so they come from the table the release keeps beside the model.
        config = model_file.parent / "tokenizer_config.json"
        if not config.exists():
            raise FileNotFoundError(
                f"{config} is missing: the added-token table (added_tokens_decoder) of {model_file}"
            )
        table = json.loads(config.read_text()).get("added_tokens_decoder")
        if not table:
            raise ValueError(f"{config}: no added_tokens_decoder table")
        self.added = {v["content"]: int(k) for k, v in table.items()}
        self.bos_id = self.sp.bos_id()
        self.unk_id = self.sp.unk_id()
        if eos_piece not in self.added:
            raise ValueError(f"{config}: no added token {eos_piece!r} (the eos)")
        self.eos_id = self.added[eos_piece]
        self.pad_id = self.vocab_size  # [PAD], added by the release after loading
        self.added["[PAD]"] = self.pad_id
        self.id_to_added = {i: s for s, i in self.added.items()}
        self.special_ids = {self.bos_id, self.eos_id, self.unk_id, self.pad_id}
        alternatives = sorted(self.added, key=len, reverse=True)  # longest match first
        self._split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """[BOS] + ids (bos=False: the data pipeline's tokenize + convert_tokens_to_ids)."""
        ids = [self.bos_id] if bos else []
        for i, fragment in enumerate(self._split.split(text)):
            if i % 2:  # an added token
                ids.append(self.added[fragment])
            elif fragment:
                ids.extend(self.sp.encode(fragment))
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        parts, run = [], []
        for i in ids + [None]:
            if i is None or i in self.id_to_added:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                if i is not None:
                    parts.append(self.id_to_added[i])
            else:
                run.append(i)
        return "".join(parts)
