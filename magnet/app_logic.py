"""What MagNet Studio does behind its page, without any UI: loading and switching checkpoints,
segmenting expressions, re-thresholding, writing mask files, grounding maps, masked-word
prediction and word ablation. `app.py` turns these into Gradio events; tests call them directly.

Per-request results are returned as values (the UI keeps them in per-session state); the only
shared object is `ModelStore`, whose lock serialises model switching and inference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (
    RELEASED,
    RELEASED_DOWNLOAD_SIZE,
    cached_released,
    count_parameters,
    download_released,
    load_model,
    pick_device,
)
from .config import PRESETS, MagNetConfig
from .errors import UserError
from .export import RESULTS_JSON, write_mask_pngs, write_results_json
from .grounding_maps import (
    PREFERENCE,
    SPECIAL_TOKENS,
    available_sources,
    default_source,
    fusion_source,
)
from .imageio import ImageError, ImageInput, load_image
from .predictor import ExpressionError, MagNetPredictor, trained_only_on_synthetic
from .visualize import expression_colors, normalize

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = "magnet-synthetic-cpu.safetensors"
MAX_EXPRESSIONS = 16  # per request: keeps one request from holding the model for minutes
SYNTHETIC_ONLY_NOTE = (
    "This checkpoint was trained only on synthetic scenes of coloured shapes: it knows their words and nothing "
    "of real photos. For photos, choose the authors' released weights (refcoco, refcoco+ or refcocog) in the "
    "Model list above."
)


class NoModelError(UserError):
    """No checkpoint is loaded; the message says how to get one."""


# Errors a user can cause; the page shows their message, never a traceback.
USER_ERRORS = (UserError,)


def missing_checkpoint_message(path: Path) -> str:
    return (
        f"No checkpoint found at `{path}`. Build the default one with `make checkpoint`, drop a checkpoint "
        "(`*.safetensors`, or the authors' `magnet_*.pth`) into `checkpoints/`, or start the app with "
        f"`python app.py --checkpoint PATH` (or `--checkpoint refcoco`: the authors' weights, a "
        f"{RELEASED_DOWNLOAD_SIZE} download)."
    )


def list_checkpoints(directory: Path) -> list[Path]:
    """Loadable-looking files in `directory`: our `*.safetensors` and the authors' `magnet_*.pth`."""
    if not directory.is_dir():
        return []
    found = list(directory.glob("*.safetensors")) + list(directory.glob("magnet_*.pth"))
    return sorted(absolute(p) for p in found if p.is_file())


def absolute(path: str | Path) -> Path:
    """An absolute, normalised path that keeps its file name: symbolic links are not followed
    (the Hugging Face cache links each file to a blob named by its hash)."""
    return Path(os.path.abspath(path))


# ----------------------------------------------------------------------------- released checkpoints
def released_name(choice: str | Path | None) -> str | None:
    """The released checkpoint that a picker value or `--checkpoint` argument names ("refcoco",
    "refcoco+", "refcocog"); None for anything else (an existing file of that name wins)."""
    text = str(choice) if choice is not None else ""
    return text if text in RELEASED and not Path(text).exists() else None


def released_dataset(name: str) -> str:
    """The dataset a released checkpoint was trained on: refcoco+ -> RefCOCO+."""
    return name.replace("refcoco", "RefCOCO")


def checkpoint_file(choice: str | Path) -> Path:
    """The file behind a picker value or `--checkpoint` argument: a released checkpoint comes from
    the Hugging Face cache, downloaded first when it is not there (a progress bar on stderr, which
    the page's gr.Progress(track_tqdm=True) shows). Raises CheckpointError when the download fails."""
    name = released_name(choice)
    if name is None:
        return absolute(choice)
    return absolute(cached_released(name) or download_released(name))


def pending_download(choice: str | Path | None) -> str | None:
    """What loading `choice` downloads first ("magnet_refcoco.pth (~1.2 GB)"), None when nothing."""
    name = released_name(choice)
    if name is None or cached_released(name) is not None:
        return None
    return f"{RELEASED[name]} ({RELEASED_DOWNLOAD_SIZE})"


def checkpoint_choices(directory: Path, loaded: Path | None) -> tuple[list[tuple[str, str]], str | None]:
    """The model picker's (label, value) pairs and the value of the loaded model. Files in
    `directory` first (the loaded file too when it lives elsewhere), then the authors' three
    released checkpoints, whose value is their name and whose label says whether choosing one
    downloads it."""
    paths = list_checkpoints(directory)
    cached = {name: cached_released(name) for name in RELEASED}
    current = str(loaded) if loaded is not None else None
    if loaded is not None and loaded not in paths:
        current = next((name for name, path in cached.items() if path and absolute(path) == loaded), None)
        if current is None:
            paths.insert(0, loaded)
            current = str(loaded)
    choices = [(p.name, str(p)) for p in paths]
    for name, path in cached.items():
        where = "downloaded" if path is not None else f"{RELEASED_DOWNLOAD_SIZE} download"
        choices.append((f"{name} · the authors' {released_dataset(name)} weights ({where})", name))
    return choices, current


def load_examples(path: Path, root: Path) -> list[list[str]]:
    """[[image path, expressions one per line], ...] from an examples.json (a list of
    {"image": path relative to `root`, "expressions": [...]}); [] when the file is absent.
    Malformed entries and missing images are skipped with a logged warning."""
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return []
    examples = []
    for entry in entries if isinstance(entries, list) else []:
        entry = entry if isinstance(entry, dict) else {}
        image = root / str(entry.get("image", ""))
        expressions = entry.get("expressions")
        if not image.is_file() or not isinstance(expressions, list) or not expressions:
            log.warning("ignoring example %r in %s: needs an existing image and a list of expressions", entry, path)
            continue
        examples.append([str(image), "\n".join(str(e) for e in expressions)])
    return examples


# ----------------------------------------------------------------------------- the shared model
@dataclass(frozen=True)
class ModelInfo:
    """What the page says about the loaded model."""

    path: Path
    device: str
    provenance: dict[str, Any]
    parameters: int
    has_grounding: bool
    num_stages: int
    max_tokens: int
    grounding_sources: tuple[str, ...]  # what this checkpoint offers, default first
    grounding_reason: str  # why the default source is the default
    preset: str  # the named configuration it matches, or "custom"

    @property
    def synthetic_only(self) -> bool:
        """Trained on synthetic scenes only (its provenance's training data says so)."""
        return trained_only_on_synthetic(self.provenance)

    def training_data(self) -> str:
        """What it was trained on, in a few words."""
        data = self.provenance.get("data")
        if data:
            return "trained on " + re.sub(r" \([^)]*\)", "", str(data))  # details in parentheses: see details()
        released = next((n for n, f in RELEASED.items() if f == self.provenance.get("source")), None)
        if self.provenance.get("format") == "official":
            return f"the authors' {released_dataset(released)} weights" if released else "the authors' weights"
        return "training data not recorded"

    def headline_metrics(self) -> list[str]:
        """The validation IoUs recorded at training time, rounded: ["val overall IoU 52.5", ...]."""
        metrics = self.provenance.get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}
        overall = metrics.get("overall_iou", metrics.get("best_val_overall_iou"))
        found = [("val overall IoU", overall), ("mean IoU", metrics.get("mean_iou"))]
        return [f"{label} {value:.1f}" for label, value in found if isinstance(value, (int, float))]

    def describe(self) -> str:
        """One Markdown line: name, preset, size, training data, headline metrics, head, device."""
        parts = [
            f"**`{self.path.name}`**",
            f"preset `{self.preset}`",
            f"{self.parameters / 1e6:.1f} M parameters",
            self.training_data(),
            *self.headline_metrics(),
            "Mask Grounding head" if self.has_grounding else "no Mask Grounding head",
            f"device `{self.device}`",
        ]
        return " · ".join(parts)

    def details(self) -> dict[str, Any]:
        """Everything recorded about the checkpoint (its training vocabulary as a word count)."""
        provenance = {k: v for k, v in self.provenance.items() if k != "path"}
        if isinstance(provenance.get("vocabulary"), list):
            provenance["vocabulary"] = f"{len(provenance['vocabulary'])} words"
        return {
            "file": str(self.path),
            "preset": self.preset,
            "parameters": self.parameters,
            "mask_grounding_head": self.has_grounding,
            "device": self.device,
            "provenance": provenance or "none recorded",
        }


def preset_of(config: MagNetConfig) -> str:
    """The name of the preset whose sizes `config` has (a Mask Grounding head aside), else "custom"."""
    sizes = dataclasses.replace(config, grounding=None)
    matches = (name for name, preset in PRESETS.items() if dataclasses.replace(preset, grounding=None) == sizes)
    return next(matches, "custom")


class ModelStore:
    """The one predictor every session shares. `session()` holds the lock for one inference;
    `load()` builds the new model outside the lock and swaps it in, keeping the old one on failure.
    On a CUDA device the predictor replays its forwards as CUDA graphs unless `cuda_graphs=False`:
    the lock makes each replay and the read of its output one exclusive step. `flip_tta` makes
    every segmentation average the mirrored reading too (`magnet.flip_tta`)."""

    def __init__(self, device: str | None = None, cuda_graphs: bool = True, flip_tta: bool = False) -> None:
        self.device = pick_device(device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.flip_tta = flip_tta
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._predictor: MagNetPredictor | None = None
        self._info: ModelInfo | None = None
        self.unloaded_reason = "no model is loaded: choose a checkpoint in the model list first"

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    def load(self, checkpoint: str | Path) -> ModelInfo:
        """Loads a checkpoint file, or a released checkpoint by name (downloaded first when it is
        not in the Hugging Face cache), and makes it the shared model. Raises CheckpointError
        (the previous model stays)."""
        path = checkpoint_file(checkpoint)
        with self._load_lock:
            if self._info is not None and self._info.path == path:
                return self._info
            model = load_model(path, device=self.device)
            predictor = MagNetPredictor(model, device=self.device, cuda_graphs=self.cuda_graphs, flip_tta=self.flip_tta)
            info = ModelInfo(
                path=path,
                device=str(self.device),
                provenance=dict(getattr(model, "provenance", {})),
                parameters=count_parameters(model),
                has_grounding=model.grounding is not None,
                num_stages=model.config.num_stages,
                max_tokens=model.config.max_tokens,
                grounding_sources=tuple(available_sources(model)),
                grounding_reason=default_source(model)[1],
                preset=preset_of(model.config),
            )
            with self._lock:
                self._predictor, self._info = predictor, info
        log.info("loaded %s on %s", path, self.device)
        return info

    @contextmanager
    def session(self) -> Iterator[MagNetPredictor]:
        """The predictor, held exclusively for the duration of the `with` block."""
        with self._lock:
            if self._predictor is None:
                raise NoModelError(self.unloaded_reason)
            yield self._predictor


# ----------------------------------------------------------------------------- inputs
def parse_expressions(text: str | None) -> list[str]:
    """One expression per non-empty line. Raises ExpressionError when there is none or too many."""
    expressions = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not expressions:
        raise ExpressionError("no expression given: type what to segment, e.g. 'the dog on the left' (one per line)")
    if len(expressions) > MAX_EXPRESSIONS:
        raise ExpressionError(f"{len(expressions)} expressions given; at most {MAX_EXPRESSIONS} per request")
    return expressions


def load_photo(source: ImageInput | None) -> np.ndarray:
    """The user's image as (H, W, 3) uint8, EXIF-oriented. Raises ImageError when missing or unreadable."""
    if source is None or (isinstance(source, str) and not source):
        raise ImageError("no image: upload a photo (or paste one, or pick an example) first")
    return np.asarray(load_image(source))


# ----------------------------------------------------------------------------- segmentation
@dataclass
class ExpressionResult:
    """One expression's outcome, kept per session so the page can re-threshold without the model."""

    expression: str
    probability: np.ndarray  # (H, W) uint8, probability * 255
    score: float  # highest pixel probability
    tokens: list[str]
    truncated: bool
    unknown_words: list[str]
    unseen_words: list[str] | None  # never in the training expressions; None: not recorded


@dataclass
class SegmentRun:
    """Everything one click on "Segment" produced."""

    image: np.ndarray  # (H, W, 3) uint8
    results: list[ExpressionResult]
    seconds: float  # model time
    device: str
    checkpoint: str
    max_tokens: int
    notes: list[str] = dataclasses.field(default_factory=list)  # how the model read the expressions

    def masks(self, threshold: float) -> list[np.ndarray]:
        """(H, W) bool masks: pixels whose probability exceeds the threshold."""
        return [r.probability > threshold * 255.0 for r in self.results]

    def labels(self) -> list[str]:
        """Legend labels, unique even when an expression is repeated."""
        return [f"{i + 1}. {r.expression}" for i, r in enumerate(self.results)]


def segment(store: ModelStore, image: ImageInput | None, text: str | None, threshold: float = 0.5) -> SegmentRun:
    """Runs the shared model on one image and one or more expressions (one per line)."""
    expressions = parse_expressions(text)
    photo = load_photo(image)
    with store.session() as predictor:
        start = time.perf_counter()
        predictions = predictor.predict(photo, expressions, threshold=threshold)
        seconds = time.perf_counter() - start
        info = store.info
    results = [
        ExpressionResult(
            expression=p.expression,
            probability=(p.probability * 255.0 + 0.5).astype(np.uint8),
            score=p.score,
            tokens=list(p.tokens),
            truncated=p.truncated,
            unknown_words=list(p.unknown_words),
            unseen_words=p.unseen_words,
        )
        for p in predictions
    ]
    notes = reading_notes(results, info.max_tokens, info.synthetic_only)
    return SegmentRun(photo, results, seconds, info.device, info.path.name, info.max_tokens, notes)


def reading_notes(results: list[ExpressionResult], max_tokens: int, synthetic_only: bool) -> list[str]:
    """How the model read each expression: cut at the token limit, words that became [UNK], words
    it never saw in training; then, when some were unseen and the checkpoint knows only synthetic
    scenes, one line saying so and pointing to the released weights."""
    notes = []
    for result in results:
        quoted = f"“{result.expression}”"
        if result.truncated:
            notes.append(
                f"{quoted} is longer than the model's {max_tokens}-token limit: it only read up to "
                f"“{result.tokens[-1]}”, the rest was cut."
            )
        if result.unknown_words:
            notes.append(f"{quoted}: the model does not know {', '.join(result.unknown_words)} (read as [UNK]).")
        if result.unseen_words:
            them = "it" if len(result.unseen_words) == 1 else "them"
            notes.append(
                f"{quoted}: the model never saw {', '.join(result.unseen_words)} in training and may ignore {them}."
            )
    if synthetic_only and any(r.unseen_words for r in results):
        notes.append(SYNTHETIC_ONLY_NOTE)
    return notes


def run_warnings(run: SegmentRun, threshold: float) -> list[str]:
    """Human-readable problems: the run's reading notes (cut expressions, unknown and unseen
    words), then the expressions with nothing above the threshold."""
    notes = list(run.notes)
    for result, found in zip(run.results, run.masks(threshold)):
        if not found.any():
            notes.append(
                f"Low confidence for “{result.expression}”: no pixel clears the threshold {threshold:.2f} (best "
                f"{result.score:.2f}). The object may not be there; rephrase it or lower the threshold."
            )
    return notes


def write_masks(
    masks: list[np.ndarray], expressions: list[str], directory: Path, scores: list[float] | None = None
) -> tuple[list[Path], Path]:
    """One PNG per mask (0 = background, 255 = object, the image's size) and a zip of them all,
    with `results.json` beside them: the masks as COCO-style results (RLE, as `predict --format
    coco` writes them; score null when `scores` is not given)."""
    paths = write_mask_pngs(masks, expressions, directory)
    results = write_results_json(masks, expressions, directory / RESULTS_JSON, scores=scores)
    archive = directory / "masks.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in paths + [results]:
            bundle.write(path, path.name)
    return paths, archive


def run_summary(run: SegmentRun, threshold: float, mask_files: list[Path]) -> dict[str, Any]:
    """The JSON a program gets from /segment."""
    height, width = run.image.shape[:2]
    colors = expression_colors(len(run.results))
    entries = []
    for result, mask, path, color in zip(run.results, run.masks(threshold), mask_files, colors):
        entries.append(
            {
                "expression": result.expression,
                "tokens": result.tokens,
                "truncated": result.truncated,
                "unknown_words": result.unknown_words,
                "unseen_words": result.unseen_words,
                "score": round(result.score, 4),
                "found": bool(mask.any()),
                "area": round(float(mask.mean()), 5),
                "color": color,
                "mask_png": path.name,
            }
        )
    return {
        "image_size": [width, height],
        "threshold": threshold,
        "seconds": round(run.seconds, 4),
        "device": run.device,
        "checkpoint": run.checkpoint,
        "expressions": entries,
    }


class OutputDirs:
    """Fresh folders for per-request files under one root; folders older than `max_age_s` are
    removed whenever a new one is made, so disk use stays bounded (Gradio copies what it serves)."""

    def __init__(self, root: Path | None = None, max_age_s: float = 900.0) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir()) / "magnet-studio"
        self.max_age_s = max_age_s

    def new(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.prune()
        return Path(tempfile.mkdtemp(prefix="run-", dir=self.root))

    def prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for folder in self.root.glob("run-*"):
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except FileNotFoundError:  # removed by a concurrent request
                pass


# ----------------------------------------------------------------------------- grounding
def load_accuracy(path: Path) -> dict[str, Any]:
    """The table `python -m magnet evaluate-grounding --write-table` wrote ({} when absent or unreadable)."""
    if not path.is_file():
        return {}
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}
    return table if isinstance(table, dict) and isinstance(table.get("sources"), dict) else {}


def pointing_accuracy(accuracy: dict[str, Any], source: str) -> float | None:
    """A source's measured expression pointing game (%), None when not measured."""
    value = accuracy.get("sources", {}).get(source, {}).get("expression")
    return float(value) if isinstance(value, (int, float)) and value == value else None


def source_choices(num_stages: int, accuracy: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, source) for every source name, best-ranked first; labels carry the measured accuracy."""
    names = list(PREFERENCE) + [
        fusion_source(k) for k in range(1, num_stages + 1) if fusion_source(k) not in PREFERENCE
    ]
    choices = []
    for source in names:
        value = pointing_accuracy(accuracy, source)
        choices.append((f"{source} · {value:.0f}% pointing" if value is not None else source, source))
    return choices


def source_note(source: str, reason: str, accuracy: dict[str, Any]) -> str:
    """One Markdown line: which source is shown, why, and how accurate it measured."""
    value = pointing_accuracy(accuracy, source)
    measured = (
        f" It points at the referred object in {value:.0f}% of held-out synthetic expressions "
        f"(measured with `{accuracy.get('checkpoint', '?')}`)."
        if value is not None
        else ""
    )
    return f"Showing **{source}**: {reason}.{measured}"


def maskable_tokens(tokens: list[str]) -> list[tuple[str, int]]:
    """(label, position) of every token that "Mask a word" can replace."""
    return [(f"{i}: {t}", i) for i, t in enumerate(tokens) if t not in SPECIAL_TOKENS]


@dataclass
class GroundingRun:
    """Token maps of one expression, kept per session for re-colouring."""

    image: np.ndarray  # (H, W, 3) uint8
    expression: str
    source: str
    reason: str  # why this source is shown
    tokens: list[str]
    maps: np.ndarray  # (T, H, W) uint8, each map scaled to 0..255

    def heat(self, token: int) -> np.ndarray:
        """(H, W) float32 in [0, 1]: one token's map."""
        return self.maps[token].astype(np.float32) / 255.0

    def summary(self) -> dict[str, Any]:
        """The JSON a program gets from /grounding: per token, where its map peaks (image pixels)."""
        height, width = self.image.shape[:2]
        peaks = []
        for token, heat in zip(self.tokens, self.maps):
            row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
            peaks.append({"token": token, "peak_xy": [int(col), int(row)]})
        return {
            "expression": self.expression,
            "source": self.source,
            "reason": self.reason,
            "image_size": [width, height],
            "tokens": peaks,
        }


def _scale_each(maps: np.ndarray) -> np.ndarray:
    """(T, H, W) -> each map scaled to 0..255 uint8 (constant maps become 0)."""
    return np.stack([(normalize(m) * 255.0 + 0.5).astype(np.uint8) for m in maps])


def token_maps(
    store: ModelStore,
    image: ImageInput | None,
    expression: str | None,
    source: str | None = None,
    threshold: float = 0.5,
) -> GroundingRun:
    """Each token's map from `source` (None: the checkpoint's default), at the image's resolution."""
    text = parse_expressions(expression)[0]
    photo = load_photo(image)
    with store.session() as predictor:
        grounding = predictor.ground(photo, text, source or None, threshold=threshold)
    return GroundingRun(photo, text, grounding.source, grounding.reason, grounding.tokens, _scale_each(grounding.maps))


def mask_word(
    store: ModelStore,
    image: ImageInput | None,
    expression: str | None,
    position: int,
    threshold: float = 0.5,
    k: int = 5,
) -> list[tuple[str, float]]:
    """The Mask Grounding head's top-k words for token `position` replaced by [MASK]."""
    text = parse_expressions(expression)[0]
    photo = load_photo(image)
    with store.session() as predictor:
        return predictor.predict_masked_word(photo, text, int(position), k=k, threshold=threshold)


def word_importance(
    store: ModelStore, image: ImageInput | None, expression: str | None, threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Drops each word in turn; the IoU of the resulting mask with the full expression's mask
    says how much the word matters (low IoU = important)."""
    text = parse_expressions(expression)[0]
    photo = load_photo(image)
    with store.session() as predictor:
        ious = predictor.word_importance(photo, text, threshold=threshold)
    return [
        {"word": f"{i + 1}. {word}", "iou_without": round(iou, 4), "importance": round(1.0 - iou, 4)}
        for i, (word, iou) in enumerate(ious)
    ]
