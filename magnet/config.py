"""Model configuration: one dataclass with every hyperparameter, plus named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


def reject_unknown_fields(kind: type, data: dict[str, Any], what: str) -> None:
    """ValueError naming the keys of `data` that are not fields of dataclass `kind`."""
    fields = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; choose from {sorted(fields)}")


@dataclass
class GroundingConfig:
    """The Mask Grounding head: a small BERT-style transformer over language, visual and mask tokens."""

    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 8
    intermediate_size: int = 1024
    visual_grid: int = 12  # visual / mask features are pooled to grid x grid tokens


# The input and output pipeline's fields: no weight depends on them, so they may change on a trained model.
PIPELINE_FIELDS = ("image_size", "keep_aspect", "edge_refine_radius", "single_region")


@dataclass
class MagNetConfig:
    """Every size of a MagNet model. Defaults are the released `swin-b` checkpoints."""

    # Swin backbone
    embed_dim: int = 128
    # Channels of each Swin stage; empty: embed_dim doubling per stage (every released model).
    # A trained model widened in one stage (magnet/growth.py) records its widths here.
    stage_widths: tuple[int, ...] = ()
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    mlp_ratio: float = 4.0
    patch_size: int = 4
    # BERT text encoder (the fusion modules of the released code hard-wire width 768)
    text_hidden_size: int = 768
    text_layers: int = 12
    text_heads: int = 12
    text_intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # BERT layer count after which fusion runs, one per Swin stage (official name: pwam_idx)
    fusion_after_layer: tuple[int, ...] = (3, 6, 9, 12)
    fusion_heads: int = 1
    pyramid_sizes: tuple[int, ...] = (1, 2, 3, 6)
    # Mask2Former head with a single query
    head_dim: int = 256
    head_heads: int = 8
    pixel_encoder_layers: int = 4
    pixel_encoder_ffn: int = 1024
    deform_points: int = 4
    decoder_layers: int = 9
    decoder_ffn: int = 2048
    num_queries: int = 1
    num_classes: int = 1
    # Input pipeline
    image_size: int = 480
    # False: every image stretched to image_size x image_size (the official pipeline). True: the
    # aspect ratio kept, the shorter side at image_size (`magnet.data.transforms.input_shape`), for
    # a model whose shapes must not be distorted by a non-square photo.
    keep_aspect: bool = False
    # Output pipeline: > 0 snaps each mask's edges to the image's colour edges with a guided filter
    # of this radius in input pixels (`magnet.edge_refine`); 0 = the official pipeline's masks.
    edge_refine_radius: int = 0
    # Output pipeline: True cuts a mask that falls apart into regions to its most certain one
    # (`magnet.regions`: an expression names one object); False = the official pipeline's masks.
    single_region: bool = False
    max_tokens: int = 20
    # Optional Mask Grounding head (training, visualisation); None = not present
    grounding: GroundingConfig | None = None

    def __post_init__(self) -> None:
        self.depths = tuple(self.depths)
        self.stage_widths = tuple(self.stage_widths)
        self.num_heads = tuple(self.num_heads)
        self.fusion_after_layer = tuple(self.fusion_after_layer)
        self.pyramid_sizes = tuple(self.pyramid_sizes)
        if isinstance(self.grounding, dict):
            self.grounding = GroundingConfig(**self.grounding)
        if not (len(self.depths) == len(self.num_heads) == len(self.fusion_after_layer)):
            raise ConfigError("depths, num_heads and fusion_after_layer need one entry per stage")
        if self.stage_widths and (len(self.stage_widths) != len(self.depths) or self.stage_widths[0] != self.embed_dim):
            raise ConfigError(
                f"stage_widths {list(self.stage_widths)} needs one entry per stage, the first equal to "
                f"embed_dim ({self.embed_dim})"
            )
        if self.fusion_after_layer[-1] != self.text_layers:
            raise ConfigError(
                f"the last fusion must follow the last text layer ({self.text_layers}), "
                f"got fusion_after_layer={self.fusion_after_layer}"
            )
        if (
            isinstance(self.edge_refine_radius, bool)
            or not isinstance(self.edge_refine_radius, int)
            or self.edge_refine_radius < 0
        ):
            raise ConfigError(
                f"edge_refine_radius must be a whole number of pixels >= 0 (0: off), got {self.edge_refine_radius!r}"
            )
        if not isinstance(self.single_region, bool):
            raise ConfigError(f"single_region must be true or false, got {self.single_region!r}")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_dims(self) -> list[int]:
        if self.stage_widths:
            return list(self.stage_widths)
        return [self.embed_dim * 2**i for i in range(self.num_stages)]

    def with_pipeline(self, **settings: Any) -> MagNetConfig:
        """A copy with the given pipeline fields (`PIPELINE_FIELDS`) replaced, those given as None
        kept as this config says (a checkpoint's setting unless overridden); validated as any config."""
        unknown = sorted(set(settings) - set(PIPELINE_FIELDS))
        if unknown:
            raise ConfigError(f"{unknown} are not pipeline fields; these are: {list(PIPELINE_FIELDS)}")
        return dataclasses.replace(self, **{k: v for k, v in settings.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MagNetConfig:
        reject_unknown_fields(cls, data, "MagNet config fields")
        return cls(**data)


# A small model for the default demo checkpoint and fast training: a narrow Swin at 256 px and
# a 4-layer, 256-wide BERT over the bert-base-uncased vocabulary, sized so that the checkpoint
# stays under 40 MB in float16 (the vocabulary alone is 7.8 M of its parameters).
SMALL = MagNetConfig(
    embed_dim=24,
    depths=(2, 2, 2, 2),
    num_heads=(1, 2, 4, 8),
    window_size=8,
    text_hidden_size=256,
    text_layers=4,
    text_heads=4,
    text_intermediate_size=512,
    fusion_after_layer=(1, 2, 3, 4),
    head_dim=128,
    head_heads=4,
    pixel_encoder_layers=2,
    pixel_encoder_ffn=512,
    decoder_layers=3,
    decoder_ffn=512,
    image_size=256,
    grounding=GroundingConfig(hidden_size=256, num_layers=2, num_heads=8, intermediate_size=1024, visual_grid=8),
)

PRESETS: dict[str, MagNetConfig] = {
    # The authors' released checkpoints (Swin-B window 12 + bert-base-uncased).
    "swin-b": MagNetConfig(),
    "small": SMALL,
    # The default checkpoint's preset, chosen by learning curves on a 2-core CPU (README, "Choosing
    # the CPU preset"): `small`'s Swin and BERT at 96 px with a 96-wide head of one deformable
    # encoder layer and two decoder layers. A training step of 16 costs about 1 s on 2 cores
    # (`small` at 256 px: 4.5 s for 8), and it learns more per CPU minute than the wider heads.
    "synthetic-cpu": dataclasses.replace(
        SMALL,
        head_dim=96,
        pixel_encoder_layers=1,
        pixel_encoder_ffn=384,
        decoder_layers=2,
        decoder_ffn=384,
        image_size=96,
    ),
}


def get_config(name: str) -> MagNetConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
