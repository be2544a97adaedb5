"""Word masking rules and the Mask Grounding head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from magnet.config import GroundingConfig, MagNetConfig
from magnet.losses import grounding_loss
from magnet.masking import focus_masking, focus_word_pieces, mask_tokens
from magnet.modeling.grounding import GroundingOutput, MaskGroundingHead, predict_masked_word

PAD, CLS, SEP, MASK = 0, 101, 102, 103
SPECIAL = {PAD, CLS, SEP}
VOCAB = 30522


def expressions(lengths: list[int], max_tokens: int, first_word: int = 2000) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] w1 .. wn [SEP] [PAD].. rows with n = each length; distinct word ids."""
    ids = torch.full((len(lengths), max_tokens), PAD)
    for row, n in enumerate(lengths):
        ids[row, : n + 2] = torch.tensor([CLS, *range(first_word, first_word + n), SEP])
    return ids, (ids != PAD).long()


def draw(ids: torch.Tensor, attention_mask: torch.Tensor, seed: int = 0, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_tokens(
        ids, attention_mask, SPECIAL, MASK, VOCAB, generator=torch.Generator().manual_seed(seed), **kwargs
    )


# ----------------------------------------------------------------------------- masking


def test_special_and_pad_tokens_are_never_masked():
    ids, attention_mask = expressions([1, 3, 8, 15] * 50, max_tokens=20)
    masked, labels = draw(ids, attention_mask, prob=0.9)
    special = torch.isin(ids, torch.tensor(sorted(SPECIAL)))
    assert (labels[special] == -100).all()
    assert torch.equal(masked[special], ids[special])


def test_masking_rate_and_80_10_10_split():
    ids, attention_mask = expressions([30] * 2000, max_tokens=32)
    masked, labels = draw(ids, attention_mask)
    chosen = labels != -100

    assert chosen.sum().item() / (30 * 2000) == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    to_mask = (masked[chosen] == MASK).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    assert to_mask == pytest.approx(0.8, abs=0.02)
    assert unchanged == pytest.approx(0.1, abs=0.02)
    assert 1 - to_mask - unchanged == pytest.approx(0.1, abs=0.02)  # random ids


def test_every_expression_with_words_gets_a_masked_word():
    ids, attention_mask = expressions([1, 2, 3] * 100 + [0], max_tokens=8)
    _, labels = draw(ids, attention_mask, prob=0.01)
    per_row = (labels != -100).sum(1)
    assert (per_row[:-1] >= 1).all()
    assert per_row[-1] == 0  # "[CLS] [SEP]" has nothing to mask
    assert (per_row[:-1] <= 3).all()


def test_masking_is_deterministic_by_seed():
    ids, attention_mask = expressions([6] * 64, max_tokens=10)
    first, second = draw(ids, attention_mask, seed=7), draw(ids, attention_mask, seed=7)
    other = draw(ids, attention_mask, seed=8)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], other[1])


def test_masking_rejects_bad_probabilities():
    ids, attention_mask = expressions([3], max_tokens=6)
    with pytest.raises(ValueError, match="prob"):
        draw(ids, attention_mask, prob=1.5)
    with pytest.raises(ValueError, match="sum <= 1"):
        draw(ids, attention_mask, mask_replace=0.8, random_replace=0.3)
    with pytest.raises(ValueError, match="prob"):
        draw(ids, attention_mask, prob=torch.full(ids.shape, -0.1))


def test_focus_words_are_masked_at_their_own_rate_with_all_their_pieces():
    ids, attention_mask = expressions([30] * 2000, max_tokens=32)
    focus = [(2003,), (2010, 2011, 2012)]  # the 4th word, and a word of three pieces (words 11-13)
    prob, tied = focus_masking(ids, focus, 0.1, 0.6)
    masked, labels = draw(ids, attention_mask, prob=prob, tied=tied)
    chosen = labels != -100
    assert chosen[:, 4].float().mean().item() == pytest.approx(0.6, abs=0.03)
    assert chosen[:, 11].float().mean().item() == pytest.approx(0.6, abs=0.03)
    assert torch.equal(chosen[:, 11], chosen[:, 12]) and torch.equal(chosen[:, 11], chosen[:, 13])
    assert torch.equal(masked[:, 11] == MASK, masked[:, 13] == MASK)  # the pieces are replaced alike
    others = torch.ones(32, dtype=torch.bool)
    others[[0, 4, 11, 12, 13, 31]] = False  # [CLS], the focus words, [SEP]
    assert chosen[:, others].float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert focus_masking(ids, [], 0.1, 0.6) == (0.1, None)


def test_focus_words_are_read_into_their_word_pieces():
    from magnet.data.tokenizer import ExpressionTokenizer
    from magnet.errors import ConfigError

    tokenizer = ExpressionTokenizer()
    pieces = focus_word_pieces(tokenizer, ["circle", "Red", "hexagon"])
    assert [[tokenizer.decode_token(i) for i in word] for word in pieces] == [
        ["circle"],
        ["red"],
        ["he", "##xa", "##gon"],
    ]
    with pytest.raises(ConfigError, match="'the circle' is not one word"):
        focus_word_pieces(tokenizer, ["the circle"])


# ----------------------------------------------------------------------------- head

TEXT_HIDDEN, VISUAL_DIM, SMALL_VOCAB = 24, 16, 50
CONFIG = MagNetConfig(
    text_hidden_size=TEXT_HIDDEN,
    head_dim=VISUAL_DIM,
    vocab_size=SMALL_VOCAB,
    grounding=GroundingConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, visual_grid=4),
)


def make_head(seed: int = 0) -> MaskGroundingHead:
    torch.manual_seed(seed)
    return MaskGroundingHead(CONFIG).eval()


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = torch.zeros(2, 1, 32, 32)
    target[0, :, 4:20, 8:24] = 1
    target[1, :, 16:, :] = 1
    return {
        "text_features": torch.randn(2, 7, TEXT_HIDDEN, generator=generator),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]]),
        "visual_features": torch.randn(2, VISUAL_DIM, 8, 8, generator=generator),
        "target_mask": target,
    }


def test_head_output_shapes_and_attention_maps_sum_to_one():
    output = make_head()(**inputs())
    assert isinstance(output, GroundingOutput)
    assert output.logits.shape == (2, 7, SMALL_VOCAB)
    assert output.attentions.shape == (2, 7, 4, 4)
    assert torch.allclose(output.attentions.sum((-2, -1)), torch.ones(2, 7), atol=1e-5)
    assert (output.attentions >= 0).all()


def test_pad_tokens_do_not_change_real_positions():
    head, batch = make_head(), inputs()
    changed = {**batch, "text_features": batch["text_features"].clone()}
    changed["text_features"][0, 4:] += 10.0  # the pads of the first expression
    a, b = head(**batch), head(**changed)
    assert torch.allclose(a.logits[0, :4], b.logits[0, :4], atol=1e-5)
    assert torch.allclose(a.logits[1], b.logits[1], atol=1e-5)


def test_mask_tokens_change_the_prediction():
    head, batch = make_head(), inputs()
    flipped = {**batch, "target_mask": 1 - batch["target_mask"]}
    assert not torch.allclose(head(**batch).logits, head(**flipped).logits, atol=1e-4)


def test_tied_decoder_shares_the_word_embedding_storage():
    head = make_head()
    embeddings = nn.Embedding(SMALL_VOCAB, TEXT_HIDDEN)
    head.tie_decoder(embeddings)
    assert head.decoder.weight is embeddings.weight
    assert head.decoder.weight.data_ptr() == embeddings.weight.data_ptr()

    before = head(**inputs()).logits
    with torch.no_grad():
        embeddings.weight[3] += torch.randn(TEXT_HIDDEN)
    after = head(**inputs()).logits
    assert not torch.allclose(before[..., 3], after[..., 3])
    assert torch.allclose(before[..., 4], after[..., 4])


def test_tying_to_mismatched_embeddings_raises():
    with pytest.raises(ValueError, match="vocab_size"):
        make_head().tie_decoder(nn.Embedding(SMALL_VOCAB + 1, TEXT_HIDDEN))


def test_predict_masked_word_returns_sorted_top_k():
    output = make_head()(**inputs())
    top = predict_masked_word(output, position=2, k=5, sample=1)
    probs = output.logits[1, 2].softmax(-1)
    assert len(top) == 5
    assert top[0][0] == probs.argmax().item()
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top[0][1] == pytest.approx(probs.max().item(), rel=1e-5)


def test_a_few_steps_lower_the_grounding_loss():
    head = make_head().train()
    batch = inputs()
    labels = torch.full((2, 7), -100)
    labels[0, 1], labels[0, 2], labels[1, 5] = 11, 23, 42
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)

    losses = []
    for _ in range(15):
        loss = grounding_loss(head(**batch).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
