"""Training: exact resume after a kill -9, DDP on CPU (gloo), non-finite losses, the optimizer
recipe, data order, a loss that goes down, and the command line."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import magnet.cli
import magnet.train
from magnet.config import MagNetConfig
from magnet.data.sources import DataSpec
from magnet.errors import ConfigError
from magnet.modeling import MagNet
from magnet.train import (
    TrainConfig,
    TrainingError,
    build_model,
    build_optimizer,
    config_from_args,
    epoch_batches,
    lr_factor,
    micro_batches,
    state_path,
    train,
)
from tests.helpers import TINY_GROUNDING, tiny_model, tiny_model_settings

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = tiny_model_settings()  # a training step takes ~0.1 s on one core


def run_settings(**overrides) -> dict:
    """TrainConfig fields (as YAML would give them) of a seconds-long run on synthetic scenes."""
    values = {
        "preset": "small",
        "model": TINY_MODEL,
        "data": {"path": "synthetic", "synthetic_scenes": 10, "synthetic_val_scenes": 0},  # no validation
        "batch_size": 2,
        "max_steps": 6,
        "lr": 1e-3,
        "warmup_steps": 2,
        "num_workers": 0,
        "device": "cpu",
        "save_every": 3,
        "eval_every": 1000,
        "log_every": 1,
        "max_val_samples": 2,
        "seed": 0,
    }
    values.update(overrides)
    return values


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on busy shared cores, two spinning threads are ~5x slower than one, and
    the in-process runs must match subprocesses started with OMP_NUM_THREADS=1 bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path):
    # 10 scenes / batch 2 = 5 steps per epoch: the resumed part crosses an epoch boundary.
    config = write_yaml(tmp_path / "run.yaml", run_settings(max_steps=8, save_every=3))
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"

    train(config_from_args(["--config", str(config), "--out-dir", str(whole)]))

    log_path = tmp_path / "interrupted.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "magnet", "train", "--config", str(config), "--out-dir", str(interrupted)],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    first_state = state_path(interrupted, 3)
    deadline = time.monotonic() + 240
    try:
        while not first_state.exists():
            assert process.poll() is None, f"training exited early:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no step-3 checkpoint:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (interrupted / "last.safetensors").exists(), "the run finished before the kill; nothing was tested"

    result = train(config_from_args(["--config", str(config), "--out-dir", str(interrupted), "--resume"]))

    assert result["step"] == 8
    expected, resumed = load_file(whole / "last.safetensors"), load_file(interrupted / "last.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name  # bit for bit, not just close
    whole_losses = {r["step"]: r["loss"] for r in read_metrics(whole) if "loss" in r}
    resumed_losses = {r["step"]: r["loss"] for r in read_metrics(interrupted) if "loss" in r}
    assert resumed_losses[8] == pytest.approx(whole_losses[8], abs=1e-6)


def test_a_schedule_trained_in_parts_equals_one_run(tmp_path):
    # stop_at_step ends a part mid-schedule (the lr keeps decaying to max_steps); --resume continues it.
    config = write_yaml(tmp_path / "run.yaml", run_settings(max_steps=6, save_every=100))
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(config_from_args(["--config", str(config), "--out-dir", str(whole)]))

    first = train(config_from_args(["--config", str(config), "--out-dir", str(parts), "--stop-at-step", "4"]))
    assert first["step"] == 4
    first_lr = {r["step"]: r["lr"] for r in read_metrics(parts) if "lr" in r}
    whole_lr = {r["step"]: r["lr"] for r in read_metrics(whole) if "lr" in r}
    assert list(first_lr) == [1, 2, 3, 4]
    assert first_lr[4] == whole_lr[4]  # not a shorter schedule
    assert load_file(parts / "last.safetensors").keys() == load_file(whole / "last.safetensors").keys()

    second = train(config_from_args(["--config", str(config), "--out-dir", str(parts), "--resume"]))
    assert second["step"] == 6
    assert [r["step"] for r in read_metrics(parts) if "lr" in r] == [1, 2, 3, 4, 5, 6]  # resumed, not restarted
    expected, joined = load_file(whole / "last.safetensors"), load_file(parts / "last.safetensors")
    for name in expected:
        assert torch.equal(joined[name], expected[name]), name


def test_stop_at_step_with_a_time_budget_is_refused():
    with pytest.raises(ConfigError, match="stop_at_step and time_budget_s"):
        TrainConfig(stop_at_step=100, time_budget_s=600)


# ----------------------------------------------------------------------------- DDP
DDP_LAUNCHER = """
import os, sys, torch
import magnet.train
models = []
build = magnet.train.build_model
magnet.train.build_model = lambda cfg: models.append(build(cfg)) or models[-1]
from magnet.cli import main
code = main(sys.argv[1:])
out = sys.argv[sys.argv.index("--out-dir") + 1]
torch.save(models[0].state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
sys.exit(code)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_train_and_stay_in_sync(tmp_path):
    """torchrun, 2 processes, gloo: the run ends cleanly, rank 0 alone writes the outputs, and
    both ranks hold the very same weights at the end (gradients were averaged every step)."""
    settings = run_settings(
        max_steps=3, save_every=3, data={"path": "synthetic", "synthetic_scenes": 8, "synthetic_val_scenes": 0}
    )
    config = write_yaml(tmp_path / "run.yaml", settings)
    out = tmp_path / "out"
    script = tmp_path / "launch.py"
    script.write_text(DDP_LAUNCHER)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(script),
        "train",
        "--config",
        str(config),
        "--out-dir",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]

    assert (out / "last.safetensors").exists() and state_path(out, 3).exists()
    records = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by rank 0
    assert all(math.isfinite(r["loss"]) for r in records)

    rank0, rank1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    saved = load_file(out / "last.safetensors")
    torch.manual_seed(0)
    initial = build_model(TrainConfig.from_dict(settings)).state_dict()
    assert rank0.keys() == rank1.keys() == initial.keys()
    for name, value in rank0.items():
        assert torch.equal(value, rank1[name]), f"ranks diverged at {name}"
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name
        if name in saved:
            assert torch.equal(value, saved[name])
    assert any(not torch.equal(rank0[k], initial[k]) for k in initial), "the weights never changed"


# ----------------------------------------------------------------------------- non-finite loss
@pytest.mark.parametrize("bad_call, value", [(4, float("nan")), (1, float("inf"))])
def test_non_finite_loss_stops_and_names_the_last_good_checkpoint(tmp_path, monkeypatch, bad_call, value):
    calls = []
    real_total_loss = magnet.train.total_loss

    def poisoned(*args, **kwargs):
        terms = real_total_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == bad_call:
            terms["loss"] = terms["loss"] * value
        return terms

    monkeypatch.setattr(magnet.train, "total_loss", poisoned)
    out = tmp_path / "run"
    cfg = TrainConfig.from_dict(run_settings(out_dir=str(out), max_steps=6, save_every=3))
    with pytest.raises(TrainingError) as error:
        train(cfg)

    message = str(error.value)
    assert str(value) in message and "learning rate" in message
    assert not (out / "last.safetensors").exists()
    if bad_call == 1:
        assert "none yet" in message
        return
    good = state_path(out, 3)
    assert str(good) in message and f"at step {bad_call - 1}" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [good.name]
    state = torch.load(good, map_location="cpu", weights_only=True)
    assert state["step"] == 3
    model = MagNet(MagNetConfig.from_dict(json.loads(state["config"])))
    model.load_state_dict(state["model"])  # strict: every weight is there
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


# ----------------------------------------------------------------------------- optimizer and schedule
def test_lr_factor_warms_up_linearly_then_decays_polynomially():
    cfg = TrainConfig(warmup_steps=4, max_steps=10, poly_power=0.9)
    assert [lr_factor(s, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, cfg) == pytest.approx(0.6**0.9)
    assert lr_factor(7, cfg) == pytest.approx(0.3**0.9)
    assert lr_factor(10, cfg) == 0.0 and lr_factor(12, cfg) == 0.0
    plain = TrainConfig(warmup_steps=0, max_steps=100, poly_power=1.0)
    assert lr_factor(0, plain) == 1.0 and lr_factor(25, plain) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def tiny_magnet():
    return tiny_model(shallow=True, grounding=TINY_GROUNDING)


def test_time_budget_refits_max_steps_down_and_back_up_to_the_configured_steps():
    cfg = TrainConfig(max_steps=6000, time_budget_s=1150.0)
    fit = magnet.train._fit_to_budget
    fit(cfg, step=100, elapsed=115.0, seconds_per_step=1.0, ceiling=6000)  # 1035 s left: 900 steps
    assert cfg.max_steps == 1000
    fit(cfg, step=500, elapsed=345.0, seconds_per_step=0.5, ceiling=6000)  # quieter: 805 s, 1400 steps
    assert cfg.max_steps == 1900
    fit(cfg, step=600, elapsed=365.0, seconds_per_step=0.1, ceiling=6000)  # never beyond what was asked
    assert cfg.max_steps == 6000
    fit(cfg, step=700, elapsed=1200.0, seconds_per_step=1.0, ceiling=6000)  # over budget: stop here
    assert cfg.max_steps == 700


def test_optimizer_exempts_norms_biases_and_position_tables_from_weight_decay(tiny_magnet):
    optimizer = build_optimizer(tiny_magnet, TrainConfig(weight_decay=0.05, lr=3e-4))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == no_decay["lr"] == 3e-4
    group_of = {id(p): "decay" for p in decay["params"]} | {id(p): "no_decay" for p in no_decay["params"]}
    named = dict(tiny_magnet.named_parameters())
    assert len(group_of) == len(decay["params"]) + len(no_decay["params"]) == len(named)  # each once
    for name, p in named.items():
        exempt = (
            p.ndim == 1
            or "norm" in name.lower()
            or "position" in name
            or "level_embed" in name
            or "query_embed" in name
            or "type_embed" in name
            or "token_type" in name
        )
        assert group_of[id(p)] == ("no_decay" if exempt else "decay"), name
    for name in (
        "vision.layers.0.blocks.0.attn.relative_position_bias_table",
        "grounding.position_embedding",
        "text.embeddings.position_embeddings.weight",
        "text.embeddings.LayerNorm.weight",
        "head.predictor.query_embed.weight",
    ):
        assert group_of[id(named[name])] == "no_decay", name
    for name in (
        "text.embeddings.word_embeddings.weight",
        "vision.layers.0.blocks.0.attn.qkv.weight",
        "text.encoder.layer.0.attention.self.query.weight",
        "head.predictor.class_embed.weight",
    ):
        assert group_of[id(named[name])] == "decay", name


def test_backbone_lr_scale_gives_the_swin_weights_alone_their_own_learning_rate(tiny_magnet):
    cfg = TrainConfig(weight_decay=0.05, lr=2e-4, backbone_lr_scale=3.0, warmup_steps=4, max_steps=20)
    optimizer = build_optimizer(tiny_magnet, cfg)
    lr_of = {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}
    named = dict(tiny_magnet.named_parameters())
    assert len(lr_of) == len(named)
    for name, p in named.items():
        swin = name.startswith("vision.patch_embed") or any(f".{part}." in name for part in ("blocks", "downsample"))
        assert lr_of[id(p)][0] == pytest.approx(6e-4 if swin else 2e-4), name
    assert lr_of[id(named["vision.layers.0.blocks.0.attn.qkv.weight"])][1] == 0.05
    assert lr_of[id(named["vision.layers.0.blocks.0.norm1.weight"])][1] == 0.0
    assert lr_of[id(named["vision.layers.0.fusion.vis_project.0.weight"])][0] == pytest.approx(2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    rates = {group["lr"] / group["initial_lr"] for group in optimizer.param_groups}
    assert len(rates) == 1  # one schedule for all
    with pytest.raises(ConfigError, match="freeze_backbone"):
        TrainConfig(backbone_lr_scale=0)


def test_freeze_options_freeze_the_pretrained_encoders_only():
    model = tiny_model(shallow=True)
    optimizer = build_optimizer(model, TrainConfig(freeze_backbone=True, freeze_text=True))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    swin = ("vision.patch_embed.", ".blocks.", ".downsample.")
    text = ("text.embeddings.", "text.encoder.")
    for name, p in model.named_parameters():
        frozen = (name.startswith("vision.") and any(k in name for k in swin)) or name.startswith(text)
        assert p.requires_grad != frozen, name
        assert (id(p) in in_optimizer) != frozen, name
    # the fusion modules are MagNet's own, randomly initialised: they must keep training
    assert model.vision.layers[0].fusion.image_lang_att.f_key[0].weight.requires_grad
    assert model.text.pwams[0].image_lang_att.f_key[0].weight.requires_grad
    assert all(p.requires_grad for p in model.head.parameters())

    fresh = tiny_model(shallow=True)
    build_optimizer(fresh, TrainConfig(freeze_text=True))
    assert all(p.requires_grad for p in fresh.vision.parameters())
    assert not any(p.requires_grad for p in fresh.text.encoder.parameters())


# ----------------------------------------------------------------------------- data order
def test_epoch_batches_are_deterministic_disjoint_across_ranks_and_cover_the_epoch():
    n, batch, world = 23, 2, 3
    shards = [epoch_batches(n, batch, epoch=1, seed=5, rank=r, world=world) for r in range(world)]
    assert shards == [epoch_batches(n, batch, 1, 5, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == n // (batch * world)  # same step count
    assert all(len(b) == batch for s in shards for b in s)
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen)) == (n // (batch * world)) * batch * world  # disjoint, tail < one global batch
    assert set(seen) <= set(range(n))

    full = epoch_batches(24, 2, epoch=0, seed=5, rank=0, world=1)
    assert sorted(i for b in full for i in b) == list(range(24))
    other_epoch = epoch_batches(24, 2, epoch=1, seed=5, rank=0, world=1)
    other_seed = epoch_batches(24, 2, epoch=0, seed=6, rank=0, world=1)
    assert full != other_epoch and full != other_seed
    with pytest.raises(ValueError, match="lower batch_size"):
        epoch_batches(5, 4, 0, 0, 0, world=2)


def test_epoch_batches_by_shape_hold_one_shape_each_in_the_epochs_order():
    shapes = [(64, 64) if i % 3 else (64, 128) for i in range(40)]  # 26 square, 14 wide
    world, batch = 2, 3
    shards = [epoch_batches(40, batch, 2, 5, r, world, shapes) for r in range(world)]
    assert len(shards[0]) == len(shards[1]) == 26 // 6 + 14 // 6
    for step in zip(*shards):  # one global batch: every rank's part has the same shape
        assert len({shapes[i] for part in step for i in part}) == 1 and all(len(p) == batch for p in step)
    seen = [i for s in shards for b in s for i in b]
    assert len(seen) == len(set(seen))
    assert shards[0] == epoch_batches(40, batch, 2, 5, 0, world, shapes)
    with pytest.raises(ValueError, match="of one input shape"):
        epoch_batches(4, 2, 0, 0, 0, 1, [(1, 1), (1, 2), (2, 1), (2, 2)])


class ShapedItems(torch.utils.data.Dataset):
    """Items of two input shapes that know them, as a keep_aspect ReferringDataset does."""

    def __init__(self, n: int) -> None:
        self.shapes = [(8, 8) if i % 4 else (8, 16) for i in range(n)]

    def input_shapes(self):
        return self.shapes

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.zeros(3, *self.shapes[index]), "index": index}


def test_micro_batches_by_shape_resume_at_any_step_across_epochs():
    cfg = TrainConfig(batch_size=2, seed=3, num_workers=0)
    dataset = ShapedItems(21)  # 6 wide items, 15 square: 3 + 7 batches per epoch, one item left over
    stream = micro_batches(dataset, cfg, rank=0, world=1, start=0, pin=False)
    first = [next(stream) for _ in range(30)]  # over three epochs
    assert all("input_size" not in batch for batch in first)  # one shape per batch: nothing padded
    assert (
        sorted(len({i for b in first[e * 10 : (e + 1) * 10] for i in b["index"].tolist()}) for e in range(3))
        == [20] * 3
    )
    for start in (7, 9, 10, 23):
        resumed = micro_batches(dataset, cfg, rank=0, world=1, start=start, pin=False)
        for expected in first[start:]:
            assert next(resumed)["index"].tolist() == expected["index"].tolist()


# ----------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_short_training_lowers_every_loss_term(tmp_path, monkeypatch):
    out = tmp_path / "run"
    scalars = []

    class Board:  # stands in for TensorBoard's SummaryWriter (not installed here)
        def add_scalar(self, tag, value, step):
            scalars.append((tag, step))

        def flush(self):
            pass

    monkeypatch.setattr("magnet.train._tensorboard", lambda out_dir: Board())
    cfg = TrainConfig.from_dict(
        run_settings(
            out_dir=str(out),
            max_steps=30,
            batch_size=4,
            lr=2e-3,
            warmup_steps=3,
            save_every=1000,
            eval_every=15,
            data={"path": "synthetic", "synthetic_scenes": 8, "synthetic_val_scenes": 2},
        )
    )
    result = train(cfg)
    validations = [r for r in read_metrics(out) if "val_overall_iou" in r]
    assert [r["step"] for r in validations] == [15, 30] and all(r["val_count"] == 2 for r in validations)
    assert result["best_val_overall_iou"] == max(r["val_overall_iou"] for r in validations)
    assert (out / "best.safetensors").exists() and (out / "curves.png").exists()
    from magnet.checkpoint import load_model
    from magnet.data.synthetic.grammar import vocabulary

    provenance = load_model(out / "last.safetensors", device="cpu").provenance
    assert provenance["vocabulary"] == sorted(vocabulary()) and provenance["steps"] == 30
    records = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 31))
    terms = [k for k in records[0] if k.startswith("loss")]
    assert set(terms) >= {
        "loss",
        "loss_mask",
        "loss_dice",
        "loss_class",
        "loss_grounding",
        "loss_align_p2p",
        "loss_align_p2t",
    }
    for term in terms:
        first = sum(r[term] for r in records[:3]) / 3
        last = sum(r[term] for r in records[-3:]) / 3
        assert last < first, f"{term}: {first:.3f} -> {last:.3f}"
    first = sum(r["loss"] for r in records[:3]) / 3
    assert sum(r["loss"] for r in records[-3:]) / 3 < 0.85 * first
    for r in records:  # the logged learning rate follows the schedule
        assert r["lr"] == pytest.approx(cfg.lr * lr_factor(r["step"], cfg), rel=1e-6, abs=1e-12)
    assert ("loss", 30) in scalars and ("val_overall_iou", 15) in scalars  # mirrored to TensorBoard


@pytest.mark.parametrize("masked_forward", [False, True])
def test_grounding_reads_the_masked_words_from_the_fusion_unless_it_reads_a_masked_forward(masked_forward, monkeypatch):
    # Two expressions that differ in one word, every word masked: the head's input text is the
    # same for both, so whatever differs in the visual features it reads came through the fusion.
    from magnet.data.tokenizer import ExpressionTokenizer
    from magnet.train import LossStep

    model = tiny_model(shallow=True, grounding=TINY_GROUNDING)
    tokenizer = ExpressionTokenizer.for_model(model.config)
    cfg = TrainConfig(mask_prob=1.0, mask_replace=1.0, random_replace=0.0, grounding_masked_forward=masked_forward)
    step = LossStep(model, cfg, tokenizer, torch.device("cpu"))
    seen = []
    ground = model.ground
    monkeypatch.setattr(
        model, "ground", lambda output, *args, **kw: seen.append(output.mask_features) or ground(output, *args, **kw)
    )
    torch.manual_seed(0)
    image, mask = torch.randn(1, 3, 64, 64), (torch.rand(1, 64, 64) > 0.5).float()
    for text in ("the red circle", "the blue circle"):
        torch.manual_seed(1)  # the same dropout draws
        ids, attention, _ = tokenizer.encode_batch([text])
        batch = {"image": image, "mask": mask, "input_ids": ids, "attention_mask": attention}
        terms = step(batch, torch.Generator().manual_seed(0))
        assert torch.isfinite(terms["loss_grounding"])
    assert torch.equal(seen[0], seen[1]) == masked_forward


def test_training_masks_the_focus_words_for_the_grounding_head(monkeypatch):
    from magnet.data.tokenizer import ExpressionTokenizer
    from magnet.train import LossStep

    model = tiny_model(shallow=True, grounding=TINY_GROUNDING)
    tokenizer = ExpressionTokenizer.for_model(model.config)
    cfg = TrainConfig(mask_prob=0.0, mask_focus_words=("hexagon", "star"), mask_focus_prob=1.0)
    step = LossStep(model, cfg, tokenizer, torch.device("cpu"))
    ids, attention, _ = tokenizer.encode_batch(["the red hexagon left of the star", "the big square"])
    masked_words = []
    ground = model.ground

    def recording(output, masked_ids, attention_mask, target_mask, positions):
        masked_words.append([tokenizer.decode_token(i) for i in ids[positions]])
        return ground(output, masked_ids, attention_mask, target_mask, positions=positions)

    monkeypatch.setattr(model, "ground", recording)
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "mask": torch.ones(2, 64, 64),
        "input_ids": ids,
        "attention_mask": attention,
    }
    step(batch, torch.Generator().manual_seed(0))
    # every piece of every focus word, and nothing else there
    assert masked_words[0][:4] == ["he", "##xa", "##gon", "star"]
    assert len(masked_words[0]) == 5  # the second expression has none: one word drawn for it


def test_compile_runs_every_training_forward_through_torch_compile_and_saves_the_same_model(tmp_path, monkeypatch):
    # Inductor's code generation takes minutes even for the tiny model, so torch.compile is replaced by
    # a pass-through that records what it compiled and how often the result runs; what is tested is
    # that --compile routes the training steps (not validation) through it and changes nothing else.
    compiled, calls = [], []

    def pass_through(fn, **options):
        compiled.append((fn, options))

        def counted(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return fn(*args, **kwargs)

        return counted

    monkeypatch.setattr(torch, "compile", pass_through)
    data = {"path": "synthetic", "synthetic_scenes": 8, "synthetic_val_scenes": 2}
    runs = {}
    for name, flag in (("eager", False), ("compiled", True)):
        settings = run_settings(out_dir=str(tmp_path / name), compile=flag, eval_every=3, data=data)
        runs[name] = (train(TrainConfig.from_dict(settings)), tmp_path / name)

    assert len(compiled) == 1 and compiled[0][1] == {"dynamic": False}
    assert compiled[0][0].__name__ == "forward" and isinstance(compiled[0][0].__self__, MagNet)
    assert calls == [True] * 6  # the six training steps; the two validations ran the eager model
    (eager, eager_dir), (with_compile, compiled_dir) = runs["eager"], runs["compiled"]
    assert {k: v for k, v in with_compile.items() if k != "time_s"} == {k: v for k, v in eager.items() if k != "time_s"}
    assert [r["loss"] for r in read_metrics(compiled_dir) if "loss" in r] == [
        r["loss"] for r in read_metrics(eager_dir) if "loss" in r
    ]
    saved, reference = load_file(compiled_dir / "last.safetensors"), load_file(eager_dir / "last.safetensors")
    assert saved.keys() == reference.keys() and all(torch.equal(saved[k], reference[k]) for k in saved)


def test_compile_on_cpu_without_a_compiler_names_the_fix(monkeypatch):
    monkeypatch.setattr(magnet.train.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="C\\+\\+ compiler .* or train without --compile"):
        magnet.train.compiled_forward(tiny_model(shallow=True), torch.device("cpu"))


# ----------------------------------------------------------------------------- command line
def test_train_help_exits_zero(capsys):
    # in-process: `python -m magnet` is `sys.exit(magnet.cli.main())`, run as a subprocess by the
    # resume and evaluate tests; one more interpreter start would cost ~10 s on busy cores.
    with pytest.raises(SystemExit) as exit_:
        magnet.cli.main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m magnet train")
    assert "--set KEY=VALUE" in out and "--max-steps" in out and "--resume" in out and "--freeze-backbone" in out


def test_yaml_config_and_overrides_land_in_the_right_fields(tmp_path):
    config = write_yaml(
        tmp_path / "run.yaml",
        {
            "preset": "small",
            "model": {"embed_dim": 16, "image_size": 64},
            "lr": "5e-5",
            "max_steps": 100,
            "data": {"path": "synthetic", "synthetic_scenes": 50},
            "loss": {"grounding_weight": 2.0, "align_p2t_weight": 0.5},
        },
    )
    cfg = config_from_args(
        [
            "--config",
            str(config),
            "--set",
            "loss.align_p2t_weight=0",
            "--set",
            "model.embed_dim=8",
            "--max-steps",
            "7",
            "--no-grounding",
            "--data",
            "mine.jsonl",
            "--mask-focus-words",
            "circle",
            "star",
            "--mask-focus-prob",
            "0.4",
        ]
    )
    assert cfg.mask_focus_words == ("circle", "star") and cfg.mask_focus_prob == 0.4
    assert cfg.loss.align_p2t_weight == 0
    assert cfg.loss.grounding_weight == 2.0  # the YAML's other loss fields stay
    assert cfg.loss.align_p2p_weight == 0.5  # and unset ones keep their defaults
    assert cfg.model == {"embed_dim": 8, "image_size": 64}
    assert cfg.max_steps == 7 and isinstance(cfg.max_steps, int)
    assert cfg.lr == 5e-5 and isinstance(cfg.lr, float)
    assert cfg.grounding is False
    assert cfg.data == DataSpec(path="mine.jsonl", synthetic_scenes=50)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
        (["--set", "bogus=1"], "unknown training options ['bogus']"),
        (["--set", "loss.bogus_weight=1"], "unknown loss options ['bogus_weight']"),
        (["--set", "model.embed_dims=8"], "unknown model options ['embed_dims']"),
        (["--max-steps", "many"], "max_steps must be a number"),
    ],
)
def test_bad_training_options_give_a_clear_error_without_traceback(argv, expected, capsys):
    try:
        code = magnet.cli.main(["train", *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and "Traceback" not in err


def test_the_object_class_loss_trains_the_swin_on_the_shapes_of_every_object():
    from magnet.data.augment import AugmentConfig
    from magnet.data.dataset import collate
    from magnet.data.synthetic import SHAPES, SyntheticStream
    from magnet.data.tokenizer import ExpressionTokenizer
    from magnet.losses import LossConfig
    from magnet.train import LossStep

    model = tiny_model(shallow=True, grounding=TINY_GROUNDING)
    tokenizer = ExpressionTokenizer.for_model(model.config)
    scenes = SyntheticStream("train", 8, 0, 64, tokenizer, 64, augment=AugmentConfig())
    batch = collate([scenes[i] for i in range(4)])
    on = TrainConfig(loss=LossConfig(object_class_weight=2.0))
    torch.manual_seed(1)  # the same dropout draws in both steps
    terms = LossStep(model, on, tokenizer, torch.device("cpu"), num_object_classes=len(SHAPES))(
        batch, torch.Generator().manual_seed(0)
    )
    torch.manual_seed(1)
    off = LossStep(model, TrainConfig(), tokenizer, torch.device("cpu"))(batch, torch.Generator().manual_seed(0))
    assert "loss_object_class" not in off
    assert 0.5 < terms["loss_object_class"].item() < 5  # about log 6 for an untrained backbone
    torch.testing.assert_close(terms["loss"], off["loss"] + 2.0 * terms["loss_object_class"])
    terms["loss_object_class"].backward()
    assert model.vision.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.head.parameters().__next__().grad is None  # the term reads the Swin stages only


def test_the_object_class_loss_refuses_data_without_object_classes(tmp_path):
    from magnet.data.synthetic import generate_synthetic

    generate_synthetic(tmp_path / "data", n_train=4, n_val=2, n_test=0, seed=0, image_size=64, n_shifted=0)
    cfg = TrainConfig.from_dict(
        run_settings(
            out_dir=str(tmp_path / "run"),
            data={"path": str(tmp_path / "data" / "dataset.jsonl")},
            loss={"object_class_weight": 1.0},
        )
    )
    with pytest.raises(ConfigError, match="object_class_weight needs training data"):
        train(cfg)
