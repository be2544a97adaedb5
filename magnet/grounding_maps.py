"""Word grounding maps: where in the image each token of an expression grounds.

Every source returns one non-negative map per token the model read, (T, H, W) at the image's own
resolution (special tokens get all-zero maps where a source has nothing to say about them):

- "mask-grounding": the Mask Grounding head. Each word in turn is replaced by [MASK] and the head,
  fed the model's own mask of the full expression, must recover it; the map is the masked word's
  last-layer attention over the head's visual grid (G x G). Needs a checkpoint with the head.
- "fusion-stage-1" .. "fusion-stage-N": the vision-side pixel-to-word attention of each fusion
  stage (`model(..., output_attentions=True).vision_attentions`), stride 4 .. 32.
- "word-drop": how much the mask probability falls, pixel by pixel, when the token is removed from
  the expression (full resolution; one extra forward per word).
- "gradient": gradient x attention. With A_k the pixel-to-word attention of fusion stage k (the
  maps of "fusion-stage-k") and L the probability-weighted mean of the mask logits, token t's
  relevance at pixel x is sum_k relu(A_k[t, x] * dL/dA_k[t, x]), each stage upsampled to stride 4
  (one forward and one backward).
- "phrase": the model's own mask of the phrase each word belongs to. The expression is cut at
  link words ("in", "left", "above", ...; `LINK_WORDS`); the referent's phrase and the link words
  get the mask of the whole expression, each later phrase ("the red triangle" in "the circle left
  of the red triangle", the landmark) the mask of that phrase segmented alone (full resolution;
  one extra forward per later phrase).

`combine_with_mask=True` multiplies each map by the predicted mask probability; it is never done
unless asked, and `Grounding.combined_with_mask` says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from .data.tokenizer import EncodedExpression, ExpressionTokenizer, token_tensors
from .errors import UserError
from .modeling import MagNet, MagNetOutput, resize_probabilities
from .modeling.grounding import predict_masked_word

# Mask probabilities (B, 1, h, w) at the model's input size -> (B, 1, H, W) at the image's size.
ToSize = Callable[[torch.Tensor], torch.Tensor]

HEAD_SOURCE = "mask-grounding"
WORD_DROP_SOURCE = "word-drop"
GRADIENT_SOURCE = "gradient"
PHRASE_SOURCE = "phrase"
SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]")
ARTICLES = ("the", "a", "an")
# Words that link the noun phrases of a referring expression ("the man in the red shirt left of
# the dog"): prepositions, spatial relations and location nouns. "of" is not one: "the smaller of
# the two stars" is one phrase; a phrase's leading "of" is dropped before it is segmented.
LINK_WORDS = frozenset(
    {
        "in",
        "on",
        "at",
        "from",
        "to",
        "near",
        "behind",
        "beside",
        "besides",
        "under",
        "over",
        "with",
        "next",
        "between",
        "above",
        "below",
        "beneath",
        "underneath",
        "inside",
        "outside",
        "across",
        "by",
        "against",
        "around",
        "along",
        "left",
        "right",
        "top",
        "bottom",
        "front",
        "back",
        "middle",
        "center",
        "centre",
        "side",
        "corner",
        "holding",
        "wearing",
        "carrying",
        "riding",
        "sitting",
        "standing",
    }
)

# Every source, best first, as ranked by `python -m magnet evaluate-grounding` (pointing game on
# held-out synthetic scenes, assets/grounding/accuracy.json). The default is the first one a
# checkpoint has; re-rank here when a new checkpoint's table says otherwise.
PREFERENCE = (
    PHRASE_SOURCE,
    WORD_DROP_SOURCE,
    GRADIENT_SOURCE,
    "fusion-stage-2",
    HEAD_SOURCE,
    "fusion-stage-1",
    "fusion-stage-4",
    "fusion-stage-3",
)


class GroundingSourceError(UserError):
    """A grounding source the loaded model does not have."""


class NoGroundingHeadError(GroundingSourceError):
    """The loaded checkpoint has no Mask Grounding head."""


@dataclass
class Grounding:
    """Per-token grounding maps of one expression.

    tokens: the word pieces the model read ([CLS] ... [SEP]); maps: (len(tokens), H, W) float32,
    non-negative, at the image's resolution; source: where they come from; sources: every source
    the loaded checkpoint offers, default first; reason: why this source was used."""

    tokens: list[str]
    maps: np.ndarray = field(repr=False)
    source: str
    sources: list[str]
    reason: str = ""
    combined_with_mask: bool = False


def fusion_source(stage: int) -> str:
    """Name of a fusion stage's source (1-based)."""
    return f"fusion-stage-{stage}"


def available_sources(model: MagNet) -> list[str]:
    """The sources this model offers, in PREFERENCE order (the default first)."""
    offered = {fusion_source(k) for k in range(1, model.config.num_stages + 1)}
    offered |= {WORD_DROP_SOURCE, GRADIENT_SOURCE, PHRASE_SOURCE}
    if model.grounding is not None:
        offered.add(HEAD_SOURCE)
    ranked = [s for s in PREFERENCE if s in offered]
    return ranked + sorted(offered - set(ranked))


def default_source(model: MagNet) -> tuple[str, str]:
    """(source, why): the best-ranked source (PREFERENCE) this model has."""
    source = available_sources(model)[0]
    missing = [s for s in PREFERENCE[: PREFERENCE.index(source)]] if source in PREFERENCE else []
    if not missing:
        return source, "the most accurate source in the grounding benchmark"
    return source, (
        f"the most accurate source this checkpoint has; {', '.join(missing)} measured better but needs "
        "a Mask Grounding head, which this checkpoint does not have"
    )


def check_source(model: MagNet, source: str) -> None:
    """Raises GroundingSourceError (NoGroundingHeadError for the head) if the model lacks `source`."""
    if source == HEAD_SOURCE and model.grounding is None:
        raise NoGroundingHeadError(
            "this checkpoint has no Mask Grounding head; choose another grounding source, "
            f"e.g. {default_source(model)[0]}"
        )
    if source not in available_sources(model):
        raise GroundingSourceError(f"unknown grounding source {source!r}; choose one of {available_sources(model)}")


def word_positions(tokens: list[str]) -> list[int]:
    """Indices of the tokens that are words (not [CLS], [SEP] or [PAD])."""
    return [i for i, t in enumerate(tokens) if t not in SPECIAL_TOKENS]


def _to_image(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, h, w) -> (T, H, W), resized as mask probabilities are (`resize_probabilities`)."""
    return resize_probabilities(maps[:, None].float(), size)[:, 0]


# ----------------------------------------------------------------------------- sources
def fusion_maps(output: MagNetOutput, stage: int, length: int) -> torch.Tensor:
    """(T, h_k, w_k) pixel-to-word attention of fusion stage `stage` (1-based) for the first T tokens."""
    return output.vision_attentions[stage - 1][0, :length]


def head_forward(
    model: MagNet,
    output: MagNetOutput,
    encoded: EncodedExpression,
    positions: list[int],
    target_mask: torch.Tensor,
    mask_token_id: int,
):
    """The Mask Grounding head on one copy of the expression per position, that position's token
    replaced by [MASK]; target_mask (1, 1, S, S). Returns the head's GroundingOutput (B = len(positions))."""
    ids, attention_mask = token_tensors([encoded], target_mask.device)
    count = len(positions)
    masked = ids.repeat(count, 1)
    masked[torch.arange(count), torch.tensor(positions)] = mask_token_id
    expanded = dataclasses.replace(output, mask_features=output.mask_features.expand(count, -1, -1, -1))
    return model.ground(expanded, masked, attention_mask.repeat(count, 1), target_mask.expand(count, -1, -1, -1))


def head_maps(
    model: MagNet, output: MagNetOutput, encoded: EncodedExpression, target_mask: torch.Tensor, mask_token_id: int
) -> torch.Tensor:
    """(T, G, G): each word's attention over the head's visual grid when that word is masked."""
    length = len(encoded.tokens)
    positions = word_positions(encoded.tokens)
    grid = model.grounding.grid
    maps = target_mask.new_zeros(length, grid, grid)
    if positions:
        attentions = head_forward(model, output, encoded, positions, target_mask, mask_token_id).attentions
        maps[positions] = attentions[torch.arange(len(positions)), torch.tensor(positions)].float()
    return maps


def word_drop_maps(
    model: MagNet,
    pixels: torch.Tensor,
    encoded: EncodedExpression,
    full: torch.Tensor,
    max_batch: int,
    to_size: ToSize,
) -> torch.Tensor:
    """(T, H, W): relu(p_full - p_without_token) for each word; full is the (H, W) probability,
    and each dropped variant's is brought to the image's size as full was (`to_size`)."""
    positions = word_positions(encoded.tokens)
    maps = full.new_zeros(len(encoded.tokens), *full.shape)
    variants = [without_token(encoded, t) for t in positions]
    for start in range(0, len(variants), max_batch):
        chunk = variants[start : start + max_batch]
        out = model(pixels.expand(len(chunk), -1, -1, -1), *token_tensors(chunk, pixels.device))
        dropped = to_size(out.probabilities(tuple(pixels.shape[-2:])))[:, 0]
        maps[positions[start : start + len(chunk)]] = (full[None] - dropped).clamp_min(0)
    return maps


def without_token(encoded: EncodedExpression, position: int) -> EncodedExpression:
    """`encoded` with the token at `position` removed and one more pad at the end."""
    length, total = len(encoded.tokens), len(encoded.input_ids)
    kept = encoded.input_ids[:position] + encoded.input_ids[position + 1 : length]
    return dataclasses.replace(
        encoded,
        input_ids=kept + [0] * (total - len(kept)),
        attention_mask=[1] * len(kept) + [0] * (total - len(kept)),
        tokens=encoded.tokens[:position] + encoded.tokens[position + 1 :],
    )


@contextmanager
def _recorded_attentions(model: MagNet) -> Iterator[list[torch.Tensor]]:
    """Collects the (B, heads, N, T) pixel-word attention weights of each fusion stage during a
    forward (forward hooks, removed on exit): the gradient needs the very tensors the forward used,
    while `output_attentions` returns their head average, a copy outside the graph."""
    weights: list[torch.Tensor] = []
    hooks = [
        stage.fusion.image_lang_att.register_forward_hook(lambda _m, _inputs, outputs: weights.append(outputs[1]))
        for stage in model.vision.layers
    ]
    try:
        yield weights
    finally:
        for hook in hooks:
            hook.remove()


def phrases(tokens: list[str]) -> list[tuple[list[int], str]]:
    """(token positions, text) of each phrase after the expression's first link word, e.g.
    ([5, 6, 7], "the red triangle") in "the circle left of the red triangle"; phrases without a
    content word ("the" in "in the top left") are left out."""
    words: list[tuple[list[int], str]] = []  # word pieces joined into words
    for i in word_positions(tokens):
        if tokens[i].startswith("##") and words:
            words[-1] = (words[-1][0] + [i], words[-1][1] + tokens[i][2:])
        else:
            words.append(([i], tokens[i]))
    found: list[tuple[list[int], str]] = []
    current: list[tuple[list[int], str]] = []
    linked = False
    for positions, word in words + [([], "")]:  # the empty sentinel closes the last phrase
        if positions and word not in LINK_WORDS:
            if linked:
                current.append((positions, word))
            continue
        if current and current[0][1] == "of":
            current = current[1:]
        if any(w not in ARTICLES for _, w in current):
            found.append(([i for p, _ in current for i in p], " ".join(w for _, w in current)))
        current, linked = [], True
    return found


def phrase_maps(
    model: MagNet,
    pixels: torch.Tensor,
    encoded: EncodedExpression,
    full: torch.Tensor,
    tokenizer: ExpressionTokenizer,
    to_size: ToSize,
) -> torch.Tensor:
    """(T, H, W): the mask probability of each word's phrase (`phrases`); the referent's phrase and
    the link words get `full`, the (H, W) probability of the whole expression, and each later
    phrase its own mask brought to the image's size as full was (`to_size`)."""
    maps = full[None].repeat(len(encoded.tokens), 1, 1)
    for positions, text in phrases(encoded.tokens):
        out = model(pixels, *token_tensors([tokenizer.encode(text)], pixels.device))
        maps[positions] = to_size(out.probabilities(tuple(pixels.shape[-2:])))[:, 0][0]
    for t in set(range(len(encoded.tokens))) - set(word_positions(encoded.tokens)):
        maps[t] = 0
    return maps


def gradient_maps(model: MagNet, pixels: torch.Tensor, encoded: EncodedExpression) -> torch.Tensor:
    """(T, h/4, w/4) gradient x attention relevance of each token for the predicted mask."""
    ids, attention_mask = token_tensors([encoded], pixels.device)
    length = len(encoded.tokens)
    pixels = pixels.clone()  # the cached image may come from an inference-mode call, unusable in a graph
    with torch.enable_grad(), _recorded_attentions(model) as weights:
        out = model(pixels, ids, attention_mask)
        logits = out.pred_masks[0, 0]
        weight = logits.detach().sigmoid()
        objective = (logits * weight).sum() / weight.sum().clamp_min(1e-6)
        grads = torch.autograd.grad(objective, weights)
    size = tuple(logits.shape)
    relevance = logits.new_zeros(length, *size)
    for attention, grad in zip(weights, grads):
        # the stage map has the logits' aspect ratio: N = h * w with h / w = H / W
        height = int(round((attention.shape[2] * size[0] / size[1]) ** 0.5))
        term = (attention * grad).sum(1)[0, :, :length].clamp_min(0)  # (N, T)
        term = term.transpose(0, 1).reshape(length, height, attention.shape[2] // height)
        relevance += _to_image(term, size)
    return relevance.detach()


def compute_maps(
    model: MagNet,
    tokenizer: ExpressionTokenizer,
    pixels: torch.Tensor,
    size: tuple[int, int],
    encoded: EncodedExpression,
    sources: list[str],
    threshold: float = 0.5,
    combine_with_mask: bool = False,
    max_batch: int = 8,
    to_size: ToSize | None = None,
) -> dict[str, np.ndarray]:
    """{source: (T, H, W) float32 maps} of one expression for pixels (1, 3, S, S) of an image of
    size (H, W); the sources share one forward. `to_size` brings mask probabilities at the input
    size to the image's, as the predictor's masks are (default: resized, the official way); the
    mask-based sources (word-drop, phrase, and `combine_with_mask`) use it. Raises
    GroundingSourceError for a source the model lacks."""
    to_size = to_size or partial(resize_probabilities, size=size)
    for source in sources:
        check_source(model, source)
    input_size = tuple(pixels.shape[-2:])
    length = len(encoded.tokens)
    results: dict[str, np.ndarray] = {}
    with torch.no_grad():
        ids, attention_mask = token_tensors([encoded], pixels.device)
        out = model(pixels, ids, attention_mask, output_attentions=True)
        # the whole expression's mask at the image's size, for the sources made of masks only
        # (refining it at a photo's size is the costly part of a small model's maps)
        needs_mask = combine_with_mask or any(s in (WORD_DROP_SOURCE, PHRASE_SOURCE) for s in sources)
        full = to_size(out.probabilities(input_size))[:, 0][0] if needs_mask else None
        for source in sources:
            if source == HEAD_SOURCE:
                target = (out.probabilities(input_size) > threshold).float()
                maps = _to_image(head_maps(model, out, encoded, target, tokenizer.mask_token_id), size)
            elif source == WORD_DROP_SOURCE:
                maps = word_drop_maps(model, pixels, encoded, full, max_batch, to_size)
            elif source == GRADIENT_SOURCE:
                maps = _to_image(gradient_maps(model, pixels, encoded), size)
            elif source == PHRASE_SOURCE:
                maps = phrase_maps(model, pixels, encoded, full, tokenizer, to_size)
            else:
                maps = _to_image(fusion_maps(out, int(source.rsplit("-", 1)[1]), length), size)
            if combine_with_mask:
                maps = maps * full[None]
            results[source] = maps.clamp_min(0).float().cpu().numpy()
    return results


def compute_grounding(
    model: MagNet,
    tokenizer: ExpressionTokenizer,
    pixels: torch.Tensor,
    size: tuple[int, int],
    encoded: EncodedExpression,
    source: str | None,
    threshold: float = 0.5,
    combine_with_mask: bool = False,
    max_batch: int = 8,
    to_size: ToSize | None = None,
) -> Grounding:
    """Token maps of one expression from `source` (None: the default source, `default_source`);
    `to_size` as in `compute_maps`."""
    if source is None:
        source, reason = default_source(model)
    else:
        reason = "the source asked for"
    maps = compute_maps(
        model, tokenizer, pixels, size, encoded, [source], threshold, combine_with_mask, max_batch, to_size
    )[source]
    return Grounding(
        tokens=list(encoded.tokens),
        maps=maps,
        source=source,
        sources=available_sources(model),
        reason=reason,
        combined_with_mask=combine_with_mask,
    )


def masked_word(
    model: MagNet,
    tokenizer: ExpressionTokenizer,
    pixels: torch.Tensor,
    encoded: EncodedExpression,
    position: int,
    threshold: float = 0.5,
    k: int = 5,
) -> list[tuple[str, float]]:
    """The head's k most probable (word, probability) for the token at `position` replaced by
    [MASK], given the image and the model's mask of the full expression."""
    if model.grounding is None:
        raise NoGroundingHeadError("this checkpoint has no Mask Grounding head, so it cannot predict masked words")
    input_size = tuple(pixels.shape[-2:])
    with torch.no_grad():
        out = model(pixels, *token_tensors([encoded], pixels.device))
        target = (out.probabilities(input_size) > threshold).float()
        grounded = head_forward(model, out, encoded, [position], target, tokenizer.mask_token_id)
    return [(tokenizer.decode_token(i), p) for i, p in predict_masked_word(grounded, position, k)]
