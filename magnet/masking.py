"""BERT-style word masking for the Mask Grounding task."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import ConfigError

if TYPE_CHECKING:
    from .data.tokenizer import ExpressionTokenizer

IGNORE_INDEX = -100  # label of positions that were not masked (skipped by the cross-entropy)


def _uniform(shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) draws made on the generator's device (a seed gives the same draws whatever `device`
    is), moved to `device`."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def _random_ids(vocab_size: int, shape: torch.Size, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform ids in [0, vocab_size), drawn like `_uniform`."""
    source = generator.device if generator is not None else device
    return torch.randint(vocab_size, shape, generator=generator, device=source).to(device)


def mask_tokens(
    input_ids: Tensor,
    attention_mask: Tensor,
    special_ids: Iterable[int],
    mask_token_id: int,
    vocab_size: int,
    prob: float | Tensor = 0.15,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
    generator: torch.Generator | None = None,
    tied: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask words of (B, L) expressions for the Mask Grounding head to predict.

    A position is maskable when it is a real token (attention_mask = 1) whose id is not in
    `special_ids` ([CLS], [SEP], [PAD]). Each maskable position is chosen with probability `prob`
    (one for all, or (B, L) per position; see `focus_masking`), and `tied` (B, L), when given, is
    the position whose draws each position follows, so that the pieces of a word go together; an
    expression with maskable positions but none chosen gets one, drawn uniformly, so every
    sample trains the head. A chosen position becomes `mask_token_id` with probability
    `mask_replace`, a uniform random id with probability `random_replace`, and stays as it is
    otherwise.

    Returns (masked_ids (B, L), labels (B, L)): labels hold the original id at chosen positions and
    -100 elsewhere. The same `generator` state gives the same result.
    """
    low, high = (float(prob.min()), float(prob.max())) if isinstance(prob, Tensor) else (prob, prob)
    if not 0.0 <= low <= high <= 1.0:
        raise ConfigError(f"masking probabilities must lie in [0, 1], got {low} to {high}")
    if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1.0:
        raise ConfigError(
            f"need mask_replace, random_replace >= 0 with sum <= 1, got {mask_replace} and {random_replace}"
        )
    device = input_ids.device
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special)

    if isinstance(prob, Tensor):
        prob = prob.to(device)
    if tied is not None:
        tied = tied.to(device)

    def draw() -> Tensor:
        values = _uniform(input_ids.shape, generator, device)
        return values if tied is None else values.gather(1, tied)

    chosen = maskable & (draw() < prob)
    # one uniformly drawn maskable position for the expressions that got none
    needs_one = maskable.any(1) & ~chosen.any(1)
    # (a word's pieces share their draw, and argmax takes the first of equal values: its first piece)
    fallback = torch.where(maskable, draw(), -1.0).argmax(1)
    chosen[needs_one, fallback[needs_one]] = True
    if tied is not None:
        chosen = chosen.gather(1, tied)

    action = draw()
    to_mask = chosen & (action < mask_replace)
    to_random = chosen & (action >= mask_replace) & (action < mask_replace + random_replace)
    random_ids = _random_ids(vocab_size, input_ids.shape, generator, device)

    masked_ids = input_ids.clone()
    masked_ids[to_mask] = mask_token_id
    masked_ids[to_random] = random_ids[to_random].to(input_ids.dtype)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked_ids, labels


def focus_word_pieces(tokenizer: ExpressionTokenizer, words: Iterable[str]) -> list[tuple[int, ...]]:
    """The word-piece ids of each of `words` (e.g. "hexagon": he ##xa ##gon); ConfigError for a
    word the vocabulary cannot spell."""
    pieces = []
    for word in words:
        ids = tokenizer.word_pieces(word)
        if tokenizer.unk_token_id in ids or len(word.split()) != 1:
            raise ConfigError(
                f"mask_focus_words: {word!r} is not one word of the vocabulary (it reads as "
                f"{[tokenizer.decode_token(i) for i in ids]}); list single words the tokenizer knows, e.g. circle, red"
            )
        pieces.append(ids)
    return pieces


def focus_masking(
    input_ids: Tensor, focus_words: list[tuple[int, ...]], prob: float, focus_prob: float
) -> tuple[Tensor | float, Tensor | None]:
    """Where (B, L) expressions hold one of `focus_words` (word-piece ids), the `prob` and `tied`
    arguments of `mask_tokens` that mask those words with `focus_prob` (all pieces of a word
    together) and every other word with `prob`; (prob, None) when there are no focus words."""
    if not focus_words:
        return prob, None
    probabilities = torch.full(input_ids.shape, float(prob))
    tied = torch.arange(input_ids.shape[1]).expand_as(input_ids).clone()
    for pieces in focus_words:
        n = len(pieces)
        if n > input_ids.shape[1]:
            continue
        # (B, starts) where the word begins: every window of n ids compared with its pieces at once
        for row, start in (input_ids.unfold(1, n, 1) == input_ids.new_tensor(pieces)).all(-1).nonzero().tolist():
            probabilities[row, start : start + n] = focus_prob
            tied[row, start : start + n] = start
    return probabilities, tied
