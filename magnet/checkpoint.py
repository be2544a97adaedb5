"""Loading and saving MagNet weights.

Three formats load through `load_model`:
- the authors' released `magnet_*.pth` files: `{"model": state_dict}` (fp32 or fp16), converted by
  `convert_official_state_dict` and sized by `infer_official_config`;
- ours: one `.safetensors` file whose metadata holds the JSON config and provenance;
- the resumable training states that `train` writes (`checkpoints/step-*.pt`: weights, JSON config,
  optimizer), for looking at or averaging a run's intermediate steps.

Loading never unpickles arbitrary objects: `.pth` files go through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model as save_safetensors_model
from torch import nn

from .config import GroundingConfig, MagNetConfig
from .errors import ConfigError, UserError
from .modeling import MagNet

log = logging.getLogger(__name__)

FORMAT_TAG = "magnet-studio"
HUB_REPO = "yxchng/magnet_weights"
RELEASED = {  # name -> file in the authors' hub repository
    "refcoco": "magnet_refcoco.pth",
    "refcoco+": "magnet_refcoco+.pth",
    "refcocog": "magnet_refcocog.pth",
}
# What `load_model` reads, for the --checkpoint option of every command.
CHECKPOINT_HELP = "our .safetensors, an official magnet_*.pth, or a training state (runs/*/checkpoints/step-*.pt)"
RELEASED_DOWNLOAD_SIZE = "~1.2 GB"  # each released file: 297 M float32 parameters
OFFICIAL_PREFIXES = {"image_model.": "vision.", "language_model.": "text.", "classifier.": "head."}
# Present in the released files, never used by their forward: dropped on conversion.
# `relative_position_index` buffers are recomputed from the window size.
OFFICIAL_UNUSED = re.compile(r"^image_model\.norm\d+\.|\.relative_position_index$")


class CheckpointError(UserError):
    """A file that is not a loadable MagNet checkpoint; the message says what is wrong."""


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA, then MPS, then CPU. Raises ConfigError for a device
    name torch does not know or a device this machine does not have."""
    if device is not None:
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
        if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {device!r} asked for, but MPS is not available here; use --device cpu")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ----------------------------------------------------------------------------- official format
def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released state dict -> ours: renames the three top-level prefixes, drops the unused
    keys, casts floating tensors to float32. Pure function; unknown keys are kept as they are so
    that loading reports them."""
    converted = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if OFFICIAL_UNUSED.search(key):
            continue
        for old, new in OFFICIAL_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        converted[key] = value.float() if value.is_floating_point() else value
    return converted


def _count(state_dict: dict[str, Any], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in state_dict if (m := regex.match(k))})


def infer_official_config(state_dict: dict[str, torch.Tensor]) -> MagNetConfig:
    """Sizes a MagNet from a released (unconverted) state dict.

    Not recoverable from shapes, and set by convention: BERT heads = hidden / 64; fusion after
    every text_layers / 4 BERT layers (pwam_idx, 3-6-9-12 in the released models); 8 head
    attention heads; 1 fusion head."""
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    required = [
        "image_model.patch_embed.proj.weight",
        "language_model.embeddings.word_embeddings.weight",
        "classifier.pixel_decoder.input_proj.0.0.weight",
    ]
    missing = [k for k in required if k not in sd]
    if missing:
        raise CheckpointError(f"not a MagNet checkpoint: missing {', '.join(missing)}")
    stages = _count(sd, r"image_model\.layers\.(\d+)\.")
    depths = tuple(_count(sd, rf"image_model\.layers\.{i}\.blocks\.(\d+)\.") for i in range(stages))
    heads = tuple(
        sd[f"image_model.layers.{i}.blocks.0.attn.relative_position_bias_table"].shape[1] for i in range(stages)
    )
    window = (math.isqrt(sd["image_model.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2
    words = sd["language_model.embeddings.word_embeddings.weight"]
    text_layers = _count(sd, r"language_model\.encoder\.layer\.(\d+)\.")
    head_dim = sd["classifier.pixel_decoder.input_proj.0.0.weight"].shape[0]
    head_heads = 8
    levels = _count(sd, r"classifier\.pixel_decoder\.input_proj\.(\d+)\.")
    offsets = sd["classifier.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape[0]
    return MagNetConfig(
        embed_dim=sd["image_model.patch_embed.proj.weight"].shape[0],
        depths=depths,
        num_heads=heads,
        window_size=window,
        patch_size=sd["image_model.patch_embed.proj.weight"].shape[-1],
        text_hidden_size=words.shape[1],
        text_layers=text_layers,
        text_heads=max(1, words.shape[1] // 64),
        text_intermediate_size=sd["language_model.encoder.layer.0.intermediate.dense.weight"].shape[0],
        vocab_size=words.shape[0],
        max_position_embeddings=sd["language_model.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=sd["language_model.embeddings.token_type_embeddings.weight"].shape[0],
        fusion_after_layer=tuple(text_layers * (i + 1) // stages for i in range(stages)),
        pyramid_sizes=(1, 2, 3, 6)[: _count(sd, r"image_model\.layers\.0\.pyramids\.(\d+)\.")],
        head_dim=head_dim,
        head_heads=head_heads,
        pixel_encoder_layers=_count(sd, r"classifier\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\."),
        pixel_encoder_ffn=sd["classifier.pixel_decoder.transformer.encoder.layers.0.linear1.weight"].shape[0],
        deform_points=offsets // (2 * head_heads * levels),
        decoder_layers=_count(sd, r"classifier\.predictor\.transformer_ffn_layers\.(\d+)\."),
        decoder_ffn=sd["classifier.predictor.transformer_ffn_layers.0.linear1.weight"].shape[0],
        num_queries=sd["classifier.predictor.query_feat.weight"].shape[0],
        num_classes=sd["classifier.predictor.class_embed.weight"].shape[0] - 1,
    )


def read_pth(path: Path) -> Any:
    """The contents of a `.pth` file, read without arbitrary unpickling."""
    try:
        # argparse.Namespace: training scripts of this family store their args beside the weights.
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt / unsafe files
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "is the file complete? Download it again, or convert it with `python -m magnet convert`"
        ) from None
    return data


def is_training_state(data: Any) -> bool:
    """Whether `read_pth` read one of the resumable states `train` writes."""
    return isinstance(data, dict) and isinstance(data.get("config"), str) and isinstance(data.get("model"), dict)


def read_official_checkpoint(path: Path, data: Any = None) -> dict[str, torch.Tensor]:
    """The state dict of a released `.pth` file (`data`: its contents when already read)."""
    data = read_pth(path) if data is None else data
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (expected a dict with key 'model' of tensors)")
    return state


# ----------------------------------------------------------------------------- our format
def save_checkpoint(
    model: MagNet, path: str | Path, provenance: dict[str, Any] | None = None, half: bool = False
) -> Path:
    """Writes weights + config (+ provenance) as one safetensors file, atomically. `half` stores
    float16 weights (half the size; they load back into a float32 model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format": FORMAT_TAG,
        "config": model.config.to_json(),
        "provenance": json.dumps(provenance or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    if half:
        model = copy.deepcopy(model).half()
    save_safetensors_model(model, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Config and provenance stored in one of our safetensors files."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors ({exc}); the file may be truncated") from None
    if meta.get("format") != FORMAT_TAG or "config" not in meta:
        raise CheckpointError(
            f"{path} is a safetensors file but not a MagNet Studio checkpoint (no MagNet config in its metadata)"
        )
    return {"config": json.loads(meta["config"]), "provenance": json.loads(meta.get("provenance", "{}"))}


# ----------------------------------------------------------------------------- entry points
def load_model(
    path: str | Path,
    device: str | torch.device | None = None,
    grounding: GroundingConfig | None = None,
) -> MagNet:
    """Loads a MagNet from one of the authors' `magnet_*.pth` files or our `.safetensors` files.

    The model comes back in eval mode on `device` (default: cuda, then mps, then cpu), with
    `model.provenance` describing where it came from. `grounding` adds a fresh Mask Grounding
    head to a checkpoint that has none (its decoder starts from the word embeddings)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        config = MagNetConfig.from_dict(meta["config"])
        provenance = {"format": "magnet-studio", **meta["provenance"]}
        read_state = lambda: read_safetensors_state(path)  # noqa: E731
    elif is_training_state(data := read_pth(path)):
        config = MagNetConfig.from_dict(json.loads(data["config"]))
        provenance = {"format": "magnet-studio training state", "step": data.get("step")}
        read_state = lambda: data["model"]  # noqa: E731
    else:
        official = read_official_checkpoint(path, data)
        config = infer_official_config(official)
        config.grounding = None
        provenance = {"format": "official", "source": path.name}
        read_state = lambda: convert_official_state_dict(official)  # noqa: E731
    fresh_head = grounding is not None and config.grounding is None
    if fresh_head:
        config.grounding = grounding
    model = _model_with_weights(config, read_state, path, fresh_head)
    model.provenance = {"path": str(path), **provenance}
    return model.to(pick_device(device)).eval()


def read_safetensors_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one of our safetensors files, float16 ones (`--half`) as float32, read one
    at a time so that at most one tensor exists in both precisions."""
    state = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor = f.get_tensor(key)
                state[key] = tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors ({exc}); the file may be truncated") from None
    return state


def _model_with_weights(
    config: MagNetConfig, read_state: Callable[[], dict[str, torch.Tensor]], path: Path, fresh_head: bool
) -> MagNet:
    """A MagNet holding the file's weights. The model is built with its parameters on the meta
    device and the file's tensors become its parameters (no random initialisation, no second copy
    of the weights: for swin-b that is 1.2 GB and several seconds less). Only a Mask Grounding head
    added to a checkpoint without one (`fresh_head`) needs a normally initialised model."""
    if fresh_head:
        model = MagNet(config)
    else:
        with _parameters_on_meta():
            model = MagNet(config)
    state = read_state()
    for names in _tied_parameter_names(model):  # a file stores a tied weight under one of its names
        stored = next((state[n] for n in names if n in state), None)
        if stored is not None:
            state.update({n: stored for n in names})
    try:
        result = model.load_state_dict(state, strict=False, assign=not fresh_head)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its config ({str(exc)[:300]})") from None
    del state
    model.tie_weights()
    missing = [k for k in result.missing_keys if not (fresh_head and k.startswith("grounding."))]
    _check_keys(path, missing, result.unexpected_keys)
    return model


def _tied_parameter_names(model: nn.Module) -> list[list[str]]:
    """Groups of names under which one parameter appears more than once in `model`."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device (no memory, initialisers do
    nothing) and their buffers as usual, so that buffers a file does not hold (e.g. Swin's
    relative position index) are still real."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _check_keys(path: Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} weights: {show(unexpected)}")
        raise CheckpointError(f"{path} does not match the MagNet architecture: " + "; ".join(parts))


def download_released(name: str, cache_dir: str | Path | None = None) -> Path:
    """Downloads one of the authors' released checkpoints from the Hugging Face hub (only when
    called; nothing in this package downloads on its own) and returns its path in the hub's cache.
    A file already in the cache is not downloaded again. Raises CheckpointError for an unknown
    name or a failed download (offline, hub unreachable), saying what to do."""
    if name not in RELEASED:
        raise CheckpointError(f"unknown released checkpoint {name!r}; choose one of {sorted(RELEASED)}")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=HUB_REPO, filename=RELEASED[name], cache_dir=cache_dir))
    except Exception as exc:  # the hub raises network, HTTP and cache errors of many types
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(
            f"could not download {RELEASED[name]} ({RELEASED_DOWNLOAD_SIZE}) from the Hugging Face hub "
            f"({HUB_REPO}): {reason[:300].rstrip('.')}. Check the network connection, or download the file on another machine "
            "and put it in checkpoints/"
        ) from None


def cached_released(name: str, cache_dir: str | Path | None = None) -> Path | None:
    """The path of a released checkpoint in the Hugging Face cache, None when it is not there
    (checks the disk only, never the network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id=HUB_REPO, filename=RELEASED[name], cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def convert_checkpoint(
    source: str | Path,
    target: str | Path,
    half: bool = False,
    keep_aspect: bool | None = None,
    edge_refine_radius: int | None = None,
    single_region: bool | None = None,
) -> Path:
    """Converts any loadable checkpoint (e.g. a released `.pth`) to our safetensors format;
    `keep_aspect` sets how the written model reads non-square images (`MagNetConfig.keep_aspect`),
    `edge_refine_radius` how its masks are refined (`MagNetConfig.edge_refine_radius`) and
    `single_region` whether they are cut to one region (`MagNetConfig.single_region`); None: as
    the source says."""
    model = load_model(source, device="cpu")
    model.config = model.config.with_pipeline(
        keep_aspect=keep_aspect, edge_refine_radius=edge_refine_radius, single_region=single_region
    )
    provenance = {**model.provenance, "converted_from": Path(source).name}
    provenance.pop("path", None)
    return save_checkpoint(model, target, provenance=provenance, half=half)


def average_checkpoints(sources: list[str | Path], target: str | Path, half: bool = False) -> Path:
    """Writes the uniform average of the weights of several checkpoints of one architecture (the
    states of one run's last steps: stochastic weight averaging; or fine-tunes of one start)."""
    if len(sources) < 2:
        raise CheckpointError(f"averaging needs at least two checkpoints, got {len(sources)}")
    model = load_model(sources[0], device="cpu")
    sums = {k: v.double() for k, v in model.state_dict().items() if v.is_floating_point()}
    for source in sources[1:]:
        other = load_model(source, device="cpu")
        if other.config != model.config:
            raise CheckpointError(
                f"{source} is another architecture than {sources[0]}: average checkpoints of one model"
            )
        for key, value in other.state_dict().items():
            if key in sums:
                sums[key] += value.double()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key in sums:
                value.copy_(sums[key] / len(sources))
    provenance = {**model.provenance, "averaged_from": [Path(s).name for s in sources]}
    provenance.pop("path", None)
    return save_checkpoint(model, target, provenance=provenance, half=half)


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters())
