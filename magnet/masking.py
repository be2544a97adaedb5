"""BERT-style word masking for the Mask Grounding task."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from .errors import ConfigError

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
    prob: float = 0.15,
    mask_replace: float = 0.8,
    random_replace: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask words of (B, L) expressions for the Mask Grounding head to predict.

    A position is maskable when it is a real token (attention_mask = 1) whose id is not in
    `special_ids` ([CLS], [SEP], [PAD]). Each maskable position is chosen with probability `prob`;
    an expression with maskable positions but none chosen gets one, drawn uniformly, so every
    sample trains the head. A chosen position becomes `mask_token_id` with probability
    `mask_replace`, a uniform random id with probability `random_replace`, and stays as it is
    otherwise.

    Returns (masked_ids (B, L), labels (B, L)): labels hold the original id at chosen positions and
    -100 elsewhere. The same `generator` state gives the same result.
    """
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"masking prob must lie in [0, 1], got {prob}")
    if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1.0:
        raise ConfigError(
            f"need mask_replace, random_replace >= 0 with sum <= 1, got {mask_replace} and {random_replace}"
        )
    device = input_ids.device
    special = torch.tensor(sorted(set(special_ids)), dtype=input_ids.dtype, device=device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, special)

    chosen = maskable & (_uniform(input_ids.shape, generator, device) < prob)
    # one uniformly drawn maskable position for the expressions that got none
    needs_one = maskable.any(1) & ~chosen.any(1)
    fallback = torch.where(maskable, _uniform(input_ids.shape, generator, device), -1.0).argmax(1)
    chosen[needs_one, fallback[needs_one]] = True

    action = _uniform(input_ids.shape, generator, device)
    to_mask = chosen & (action < mask_replace)
    to_random = chosen & (action >= mask_replace) & (action < mask_replace + random_replace)
    random_ids = _random_ids(vocab_size, input_ids.shape, generator, device)

    masked_ids = input_ids.clone()
    masked_ids[to_mask] = mask_token_id
    masked_ids[to_random] = random_ids[to_random].to(input_ids.dtype)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return masked_ids, labels
