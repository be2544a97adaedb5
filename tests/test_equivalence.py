"""Our MagNet reproduces the authors' code: every recorded tensor of the official mini
checkpoint, the official preprocessing and tokenisation, at 480 and at padded sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magnet.checkpoint import load_model
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.data.transforms import preprocess_image
from magnet.modeling.backbone import SwinBlock, shifted_window_mask
from tests.helpers import REFERENCE, requires_reference

PROB_TOLERANCE = 1e-4
# The tests that run the official mini checkpoint (seconds per forward at 384-480 px on CPU) are marked slow.


@pytest.fixture(scope="module")
def official_model():
    torch.manual_seed(0)
    return load_model(REFERENCE / "mini" / "checkpoint.pth", device="cpu")


@pytest.fixture(scope="module")
def cases():
    return torch.load(REFERENCE / "mini" / "cases.pt", weights_only=True)


@pytest.mark.slow
@requires_reference
@pytest.mark.parametrize("case", range(5))
def test_every_recorded_tensor_matches_official(official_model, cases, case):
    c = cases[case]
    with torch.inference_mode():
        out = official_model(c["image"], c["input_ids"], c["attention_mask"], output_intermediates=True)
    worst = {}
    for name, expected in c["outputs"].items():
        got = out.intermediates[name]
        assert got.shape == expected.shape, name
        worst[name] = (got - expected).abs().max().item()
    print(
        f"case {case}: max |diff| prob {worst['prob']:.2e}, worst tensor "
        f"{max(worst, key=worst.get)} {max(worst.values()):.2e}"
    )
    assert worst["prob"] <= PROB_TOLERANCE
    assert max(worst.values()) <= 1e-4, worst


@pytest.mark.slow
@requires_reference
def test_batch_equals_single_calls(official_model, cases):
    c = cases[4]  # a batch of two expressions
    with torch.inference_mode():
        batched = official_model(c["image"], c["input_ids"], c["attention_mask"]).pred_masks
        for i in range(2):
            single = official_model(c["image"][i : i + 1], c["input_ids"][i : i + 1], c["attention_mask"][i : i + 1])
            assert (single.pred_masks[0] - batched[i]).abs().max() < 1e-4


@pytest.mark.slow
@requires_reference
@pytest.mark.parametrize("size", [448, 384])
def test_other_sizes_batch_equals_single(official_model, cases, size):
    """448 pads every stage's windows (112, 56, 28, 14 vs window 12); 384 shifts a map exactly one
    window wide. Batching three expressions must equal three single calls there too."""
    c = cases[4]
    image = F.interpolate(c["image"][:1], size=(size, size), mode="bilinear", align_corners=False)
    ids = torch.cat([c["input_ids"], cases[0]["input_ids"]])
    mask = torch.cat([c["attention_mask"], cases[0]["attention_mask"]])
    with torch.inference_mode():
        batched = official_model(image.expand(3, -1, -1, -1), ids, mask)
        assert batched.pred_masks.shape[-2:] == (size // 4, size // 4)
        assert torch.isfinite(batched.pred_masks).all()
        for i in range(3):
            single = official_model(image, ids[i : i + 1], mask[i : i + 1])
            assert (single.pred_masks[0] - batched.pred_masks[i]).abs().max() < 1e-4


def naive_shifted_window_block(block: SwinBlock, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The original Swin segmentation block written plainly (pad, roll, explicit loops over windows,
    region labels compared pixel by pixel): an independent check of the padding paths."""
    ws, s = block.window_size, block.shift_size
    c = x.shape[-1]
    attn = block.attn
    heads = attn.num_heads
    y = block.norm1(x).view(h, w, c)
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    y = F.pad(y, (0, 0, 0, wp - w, 0, hp - h))
    labels = torch.zeros(hp, wp)
    if s:
        y = torch.roll(y, (-s, -s), (0, 1))
        bands = lambda n: [(0, n - ws), (n - ws, n - s), (n - s, n)]  # noqa: E731
        k = 0
        for a, b in bands(hp):
            for cc, d in bands(wp):
                labels[a:b, cc:d] = k
                k += 1
    out = torch.zeros_like(y)
    bias = attn.relative_position_bias_table[attn.relative_position_index.view(-1)].view(ws * ws, ws * ws, heads)
    for i in range(0, hp, ws):
        for j in range(0, wp, ws):
            tokens = y[i : i + ws, j : j + ws].reshape(-1, c)
            lab = labels[i : i + ws, j : j + ws].reshape(-1)
            region = torch.where(lab[:, None] == lab[None, :], 0.0, -100.0)
            q, k_, v = attn.qkv(tokens).view(-1, 3, heads, c // heads).permute(1, 2, 0, 3)
            scores = (q * (c // heads) ** -0.5) @ k_.transpose(1, 2) + bias.permute(2, 0, 1) + region
            o = (scores.softmax(-1) @ v).transpose(0, 1).reshape(-1, c)
            out[i : i + ws, j : j + ws] = attn.proj(o).view(ws, ws, c)
    if s:
        out = torch.roll(out, (s, s), (0, 1))
    x = x + out[:h, :w].reshape(1, h * w, c)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("size", [(15, 15), (14, 14), (12, 12), (7, 10), (28, 28)])
def test_swin_block_padding_paths_match_plain_implementation(size):
    torch.manual_seed(0)
    h, w = size
    for shifted in (False, True):
        block = SwinBlock(dim=16, num_heads=2, window_size=12, shifted=shifted, mlp_ratio=4.0).eval()
        with torch.no_grad():
            block.attn.relative_position_bias_table.normal_(0, 1)
        x = torch.randn(1, h * w, 16)
        hp, wp = math.ceil(h / 12) * 12, math.ceil(w / 12) * 12
        mask = shifted_window_mask((hp, wp), 12, 6, x.device)
        with torch.no_grad():
            assert (block(x, (h, w), mask) - naive_shifted_window_block(block, x, h, w)).abs().max() < 1e-5


@requires_reference
def test_tokenisation_identical_to_official():
    sentences = torch.load(REFERENCE / "pipeline" / "pipeline.pt", weights_only=True)["sentences"]
    tokenizer = ExpressionTokenizer(max_tokens=20)
    for s in sentences:
        e = tokenizer.encode(s["text"])
        assert e.input_ids == s["input_ids"][0].tolist(), s["text"]
        assert e.attention_mask == s["attention_mask"][0].tolist(), s["text"]
        assert e.tokens == s["tokens"], s["text"]
        assert e.truncated == (len(tokenizer.tokenizer.encode(s["text"])) > 20)


@requires_reference
def test_image_preprocessing_matches_official():
    images = torch.load(REFERENCE / "pipeline" / "pipeline.pt", weights_only=True)["images"]
    for name, expected in images.items():
        got = preprocess_image(Image.open(REFERENCE / "pipeline" / name), 480)[None]
        diff = (got - expected).abs().max().item()
        print(f"{name}: max |diff| {diff:.2e}")
        assert diff <= 1e-5


@pytest.mark.slow
@requires_reference
def test_language_side_attention_carries_no_spatial_information(official_model, cases):
    """As in the released model, real tokens' language-side queries are zero (multiplied by the
    additive mask), so their attention over pixels is uniform; the vision-side weights are the
    grounding maps (they vary over pixels)."""
    c = cases[0]
    model = official_model
    n = int(c["attention_mask"].sum())
    with torch.inference_mode():
        out = model(c["image"], c["input_ids"], c["attention_mask"], output_attentions=True)
        text = out.text_features  # any language features: the query is zeroed by the mask anyway
        att = model.text.pwams[0].image_lang_att
        additive = (1.0 - c["attention_mask"][:, None, :].float()) * -10000.0
        query = att.f_query(text.transpose(1, 2)) * additive
    assert torch.all(query[0, :, :n] == 0)
    for maps in out.vision_attentions:
        per_token = maps[0, :n].flatten(1)
        assert (per_token.std(1) / per_token.mean(1)).min() > 0.05


@pytest.mark.parametrize("chunk_bytes", [None, 2000])
def test_deformable_sampling_kernels_agree(chunk_bytes, monkeypatch):
    """The CPU (embedding_bag) and GPU (grid_sample) kernels compute the same sampling, including
    points outside the map (zero padding), values and gradients; also when the CPU backward walks
    the bags in several chunks."""
    from magnet.modeling.head import ValueMaps, _sampling_grid_sample, _WeightedBagSum

    if chunk_bytes is not None:
        monkeypatch.setattr(_WeightedBagSum, "CHUNK_BYTES", chunk_bytes)  # 2 bags per chunk here
    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    value = torch.randn(2, 5 * 7 + 3 * 4, 2, 8, requires_grad=True)
    locations = (torch.rand(2, 6, 2, 2, 3, 2) * 1.4 - 0.2).requires_grad_()
    weights = torch.rand(2, 6, 2, 2, 3).requires_grad_()
    outputs, grads = [], []

    def embedding_bag_kernel(value, shapes, locations, weights):  # what ValueMaps runs on a CPU
        return ValueMaps(value, shapes).sample(locations, weights)

    for kernel in (embedding_bag_kernel, _sampling_grid_sample):
        out = kernel(value, shapes, locations, weights)
        outputs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), (value, locations, weights)))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-4


def test_deformable_encoder_layer_in_query_chunks_equals_one_pass(monkeypatch):
    """Without autograd an encoder layer takes its queries in chunks (to keep per-query
    temporaries small): the result equals one pass over all queries, and with autograd (training)
    it is one pass."""
    from magnet.modeling import head

    torch.manual_seed(0)
    shapes = [(5, 7), (3, 4)]
    layer = head.DeformableEncoderLayer(dim=32, ffn=64, levels=2, heads=2, points=3).eval()
    src, pos = torch.randn(2, 5 * 7 + 3 * 4, 32), torch.randn(2, 5 * 7 + 3 * 4, 32)
    reference = torch.rand(2, src.shape[1], 2)
    calls = []
    real = layer._queries
    monkeypatch.setattr(layer, "_queries", lambda *args: calls.append(1) or real(*args))
    monkeypatch.setattr(head, "QUERY_CHUNK_POINTS", 2 * 2 * 2 * 3 * 4)  # 4 queries per chunk
    whole = layer(src, pos, reference, shapes).detach()
    assert len(calls) == 1
    with torch.no_grad():
        chunked = layer(src, pos, reference, shapes)
    assert len(calls) == 1 + 12  # 47 queries in chunks of 4
    assert (chunked - whole).abs().max() < 1e-6
