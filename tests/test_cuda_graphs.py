"""Forwards replayed as CUDA graphs give the eager forward's masks; without CUDA, a clear refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magnet import app_logic as logic
from magnet.benchmarks.inference import main as inference_main
from magnet.cuda_graphs import GraphedForward
from magnet.errors import UserError
from magnet.modeling import head
from magnet.predictor import MagNetPredictor
from tests.helpers import tiny_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def inputs(batch: int, size: int, length: int, seed: int, device: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    ids = torch.randint(1000, 2000, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[:, length // 2 :] = 0
    return tuple(t.to(device) for t in (images, ids, mask))


def test_cuda_graphs_are_refused_without_a_cuda_device():
    with pytest.raises(UserError, match="CUDA device"):
        MagNetPredictor(tiny_model(), device="cpu", cuda_graphs=True)
    with pytest.raises(SystemExit, match="--cuda-graphs needs a CUDA device"):
        inference_main(["--device", "cpu", "--cuda-graphs", "--preset", "small", "--size", "64"])


def test_app_store_on_a_cpu_runs_eagerly_even_when_graphs_are_asked_for(checkpoint_dir):
    store = logic.ModelStore("cpu", cuda_graphs=True)
    store.load(checkpoint_dir / "tiny-plain.safetensors")
    run = logic.segment(store, np.zeros((40, 50, 3), np.uint8), "the red block")
    assert not store.cuda_graphs and len(run.results) == 1
    with store.session() as predictor:
        assert not isinstance(predictor._forward, GraphedForward)


@needs_cuda
def test_replayed_forward_matches_the_eager_one_for_every_input_and_shape():
    model = tiny_model().cuda().eval()
    graphed = GraphedForward(model)
    size, length = model.config.image_size, model.config.max_tokens
    for batch, seed in ((2, 0), (2, 1), (3, 2)):
        batch_inputs = inputs(batch, size, length, seed, "cuda")
        with torch.inference_mode():
            expected = model(*batch_inputs).pred_masks.clone()
        replayed = graphed(*batch_inputs).pred_masks
        torch.testing.assert_close(replayed, expected, rtol=1e-4, atol=1e-4)
    assert graphed.captured_shapes == 2  # batch 2 replayed with new inputs, batch 3 captured anew


@needs_cuda
def test_chunked_encoder_on_the_gpu_matches_one_pass(monkeypatch):
    model = tiny_model().cuda().eval()
    batch_inputs = inputs(2, model.config.image_size, model.config.max_tokens, 0, "cuda")
    with torch.inference_mode():
        one_pass = model(*batch_inputs).pred_masks.clone()
        monkeypatch.setattr(head, "ACCELERATOR_CHUNK_POINTS", 2 * 2 * 2 * 3 * 4)  # a few queries per chunk
        chunked = model(*batch_inputs).pred_masks
    torch.testing.assert_close(chunked, one_pass, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_predictor_with_cuda_graphs_gives_the_eager_masks():
    model = tiny_model()
    image = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    texts = ["the red block", "the gradient on the right", "a thing"]
    eager = MagNetPredictor(model, device="cuda").predict(image, texts)
    graphed = MagNetPredictor(model, device="cuda", cuda_graphs=True)
    for _ in range(2):  # the second call replays the captured graph
        for e, g in zip(eager, graphed.predict(image, texts)):
            np.testing.assert_allclose(g.probability, e.probability, atol=1e-4)


@needs_cuda
def test_app_store_on_cuda_replays_graphs_and_gives_the_eager_masks(checkpoint_dir):
    image = (np.random.default_rng(1).random((60, 80, 3)) * 255).astype(np.uint8)
    runs = {}
    for graphs in (False, True):
        store = logic.ModelStore("cuda", cuda_graphs=graphs)
        store.load(checkpoint_dir / "tiny-plain.safetensors")
        with store.session() as predictor:
            assert isinstance(predictor._forward, GraphedForward) == graphs
        for _ in range(2):  # with graphs, the second run replays what the first captured
            runs[graphs] = logic.segment(store, image, "the red block\nthe thing on the left")
    for eager, graphed in zip(runs[False].results, runs[True].results):
        assert np.abs(eager.probability.astype(int) - graphed.probability.astype(int)).max() <= 1
