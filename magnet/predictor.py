"""The object users hold: an image and expressions in, masks at the photo's resolution out."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import pick_device
from .cuda_graphs import GraphedForward
from .data.tokenizer import EncodedExpression, ExpressionTokenizer, expression_words, token_tensors
from .data.transforms import preprocess_image
from .edge_refine import photo_tensor, to_image_size
from .errors import UserError
from .flip_tta import mirrored_tokens, probabilities
from .grounding_maps import Grounding, compute_grounding, masked_word, word_positions
from .imageio import ImageInput, load_image
from .metrics import mask_iou
from .modeling import MagNet
from .regions import keep_one_region


class ExpressionError(UserError):
    """An expression the model cannot use (empty or whitespace only)."""


@dataclass
class Prediction:
    """The result for one expression.

    mask (H, W) bool and probability (H, W) float32 are at the original image resolution (after
    EXIF orientation); tokens are the word pieces the model read. unseen_words are the words of
    the expression that were never in the checkpoint's training expressions (None when the
    checkpoint has no record of them, [] when all were seen). Word grounding maps come from
    `MagNetPredictor.ground`."""

    expression: str
    mask: np.ndarray
    probability: np.ndarray
    tokens: list[str]
    truncated: bool
    unknown_words: list[str]
    unseen_words: list[str] | None = None

    @property
    def score(self) -> float:
        """Highest pixel probability: below the threshold means nothing was found."""
        return float(self.probability.max()) if self.probability.size else 0.0

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())


def _image_key(image: ImageInput) -> tuple:
    """Identifies an input by content (a path by its size and modification time), so that the
    cache never returns another image's tensor."""
    if isinstance(image, (str, Path)):
        stat = Path(image).stat() if Path(image).is_file() else None
        return ("path", str(image), stat and (stat.st_size, stat.st_mtime_ns))
    if isinstance(image, Image.Image):
        return ("pil", image.mode, image.size, hashlib.blake2b(image.tobytes(), digest_size=16).digest())
    if isinstance(image, np.ndarray):
        return (
            "array",
            image.shape,
            str(image.dtype),
            hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest(),
        )
    return ("bytes", hashlib.blake2b(image, digest_size=16).digest())


# Expressions per forward when the caller does not say. On a GPU a batch of expressions amortises
# the kernel launches of one forward. On a CPU every stage after the first depends on the expression,
# so a batch shares nothing and, once one expression keeps the cores busy, only adds memory traffic:
# 4 expressions in one forward cost 4.6x one for `small` at 256 px and 4.6-6.7x for swin-b at 480,
# but 2.5x at 96 px (`python -m magnet.benchmarks.inference --batch 1,4`, 2-core CPU).
BATCH_SIZE = 8
CPU_BATCH_MAX_INPUT = 128  # input side (px) up to which CPU forwards are still overhead-bound


def default_max_batch(device: torch.device, image_size: int) -> int:
    """How many expressions of one image go through one forward by default: one at a time on a
    CPU for inputs above CPU_BATCH_MAX_INPUT pixels a side, BATCH_SIZE otherwise."""
    return 1 if device.type == "cpu" and image_size > CPU_BATCH_MAX_INPUT else BATCH_SIZE


def check_expressions(
    texts: Sequence[str] | None,
    none_given: str = "no expression given: type what to segment, e.g. 'the dog on the left'",
) -> list[str]:
    """The expressions, stripped. Raises ExpressionError (`none_given` when there is none) for no
    expression or an empty one."""
    if not texts:
        raise ExpressionError(none_given)
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ExpressionError(f"expression {i + 1} is empty: describe the object to segment")
    return [t.strip() for t in texts]


def trained_only_on_synthetic(provenance: dict) -> bool:
    """A checkpoint's provenance says its training data was synthetic scenes only."""
    return "synthetic" in str(provenance.get("data", "")).lower()


class MagNetPredictor:
    """Runs a MagNet on user images. N expressions about one image go through the model in chunks
    of `max_batch` (default from the device and input size: `default_max_batch`).
    The preprocessed image is cached, so asking new expressions about the same image skips
    decoding and resizing. On a CUDA device, `cuda_graphs=True` replays `predict`'s forwards as
    CUDA graphs (`magnet.cuda_graphs`), captured once per batch size. `flip_tta=True` also reads
    each image mirrored, left and right swapped in the expression, and averages the two masks
    (`magnet.flip_tta`: a little more accurate, twice the time). `edge_refine_radius` (None: the
    checkpoint's setting, 0: off) snaps each mask to the photo's colour edges (`magnet.edge_refine`);
    `single_region` (None: the checkpoint's setting) cuts each mask to its most certain connected
    region (`magnet.regions`)."""

    def __init__(
        self,
        model: MagNet,
        device: str | torch.device | None = None,
        threshold: float = 0.5,
        max_batch: int | None = None,
        tokenizer: ExpressionTokenizer | None = None,
        cuda_graphs: bool = False,
        flip_tta: bool = False,
        edge_refine_radius: int | None = None,
        single_region: bool | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        if cuda_graphs and self.device.type != "cuda":
            raise UserError(f"CUDA graphs need a CUDA device; this predictor runs on {self.device}")
        self._forward = GraphedForward(self.model) if cuda_graphs else self.model
        self.config = model.config
        self.threshold = threshold
        self.flip_tta = flip_tta
        pipeline = model.config.with_pipeline(edge_refine_radius=edge_refine_radius, single_region=single_region)
        self.edge_refine_radius, self.single_region = pipeline.edge_refine_radius, pipeline.single_region
        self.max_batch = max_batch if max_batch is not None else default_max_batch(self.device, self.config.image_size)
        self.tokenizer = tokenizer or ExpressionTokenizer.for_model(self.config)
        self._cache_key: object = None
        self._cache: tuple[torch.Tensor, tuple[int, int]] | None = None
        self._photo: Image.Image | None = None  # the cached image, for edge refinement at its size
        vocabulary = getattr(model, "provenance", {}).get("vocabulary")
        # The words of the training expressions, as `magnet.train.training_vocabulary` records them.
        self.training_vocabulary = frozenset(vocabulary) if vocabulary is not None else None

    def unseen_words(self, text: str) -> list[str] | None:
        """The words of `text` (as `expression_words` splits it) that the checkpoint never saw in
        training, each once, in order; None when the checkpoint has no record of its vocabulary."""
        if self.training_vocabulary is None:
            return None
        return list(dict.fromkeys(w for w in expression_words(text) if w not in self.training_vocabulary))

    def prepare_image(self, image: ImageInput) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image -> ((1, 3, h, w) normalised tensor on the device, original (H, W)); (h, w) is
        (S, S), or the image's aspect ratio kept for a `keep_aspect` checkpoint."""
        key = _image_key(image)
        if self._cache is not None and key == self._cache_key:
            return self._cache
        pil = load_image(image)
        tensor = preprocess_image(pil, self.config.image_size, self.config.keep_aspect)[None].to(self.device)
        self._cache_key, self._cache, self._photo = key, (tensor, (pil.height, pil.width)), pil
        return self._cache

    def probabilities_at_image_size(
        self, pixels: torch.Tensor, size: tuple[int, int], threshold: float
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """How this predictor brings mask probabilities (B, 1, h, w) at the input size of `pixels`
        (the cached image's) to the image's `size`: resized, or edge-refined against the photo,
        which is read as a tensor at the first call only (grounding sources without masks need none);
        then, for `single_region`, cut to the most certain region of `> threshold`."""
        radius, image, one_region = self.edge_refine_radius, self._photo, self.single_region
        photo = cache(lambda: photo_tensor(image, self.device) if radius else None)

        def at_image_size(prob: torch.Tensor) -> torch.Tensor:
            full = to_image_size(prob, pixels, size, radius, photo())
            return keep_one_region(full, threshold) if one_region else full

        return at_image_size

    def encode(self, expressions: str | list[str]) -> list[EncodedExpression]:
        texts = [expressions] if isinstance(expressions, str) else list(expressions)
        return [self.tokenizer.encode(t) for t in check_expressions(texts)]

    @torch.inference_mode()
    def predict(
        self,
        image: ImageInput,
        expressions: str | list[str],
        threshold: float | None = None,
        flip_tta: bool | None = None,
    ) -> list[Prediction]:
        """Segments what each expression refers to. Returns one Prediction per expression.
        `threshold` and `flip_tta` default to the predictor's."""
        encoded = self.encode(expressions)
        pixels, (h, w) = self.prepare_image(image)
        threshold = self.threshold if threshold is None else threshold
        flip_tta = self.flip_tta if flip_tta is None else flip_tta
        at_image_size = self.probabilities_at_image_size(pixels, (h, w), threshold)
        results: list[Prediction] = []
        for start in range(0, len(encoded), self.max_batch):
            chunk = encoded[start : start + self.max_batch]
            ids, mask = token_tensors(chunk, self.device)
            mirrored = mirrored_tokens(self.tokenizer, [e.text for e in chunk], self.device) if flip_tta else None
            prob = probabilities(self._forward, pixels.expand(len(chunk), -1, -1, -1), ids, mask, mirrored)
            for i, e in enumerate(chunk):  # one at a time: a refined photo-sized map is large
                full = at_image_size(prob[i : i + 1])[0, 0].cpu().numpy()
                results.append(
                    Prediction(
                        expression=e.text,
                        mask=full > threshold,
                        probability=full,
                        tokens=e.tokens,
                        truncated=e.truncated,
                        unknown_words=e.unknown_words,
                        unseen_words=self.unseen_words(e.text),
                    )
                )
        return results

    def ground(
        self,
        image: ImageInput,
        expression: str,
        source: str | None = None,
        combine_with_mask: bool = False,
        threshold: float | None = None,
    ) -> Grounding:
        """Where each token of `expression` grounds in the image: `Grounding.maps` is
        (len(tokens), H, W) float32 at the image's resolution. `source` is one of
        `Grounding.sources` (see `magnet.grounding_maps`); None takes the best-measured source this
        checkpoint has (`Grounding.reason` says which and why). `combine_with_mask` multiplies each
        map by the mask probability."""
        encoded = self.encode(expression)[0]
        pixels, size = self.prepare_image(image)
        threshold = self.threshold if threshold is None else threshold
        return compute_grounding(
            self.model,
            self.tokenizer,
            pixels,
            size,
            encoded,
            source,
            threshold,
            combine_with_mask,
            self.max_batch,
            self.probabilities_at_image_size(pixels, size, threshold),
        )

    def predict_masked_word(
        self, image: ImageInput, expression: str, position: int, k: int = 5, threshold: float | None = None
    ) -> list[tuple[str, float]]:
        """The Mask Grounding head's k most probable (word, probability), best first, for token
        `position` of `expression` (an index into `Prediction.tokens`, [CLS] = 0) replaced by
        [MASK], given the image and the model's mask of the full expression."""
        encoded = self.encode(expression)[0]
        if position not in word_positions(encoded.tokens):
            raise ExpressionError(
                f"token {position} of “{encoded.text}” is not a word that can be masked; "
                f"choose one of {word_positions(encoded.tokens)} ({encoded.tokens})"
            )
        pixels, _ = self.prepare_image(image)
        return masked_word(
            self.model, self.tokenizer, pixels, encoded, position, self.threshold if threshold is None else threshold, k
        )

    def word_importance(
        self, image: ImageInput, expression: str, threshold: float | None = None
    ) -> list[tuple[str, float]]:
        """(word, IoU of the mask without that word with the full expression's mask) for each
        whitespace-separated word, in order: a low IoU means the word matters."""
        words = self.encode(expression)[0].text.split()
        if len(words) < 2:
            raise ExpressionError("word importance needs an expression of at least two words")
        variants = [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
        full, *dropped = self.predict(image, [" ".join(words)] + variants, threshold)
        return [(word, mask_iou(p.mask, full.mask)) for word, p in zip(words, dropped)]
