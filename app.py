"""MagNet Studio: the web app. Builds the Gradio page and wires it to `magnet.app_logic`.

    python app.py [--checkpoint PATH|refcoco|refcoco+|refcocog] [--checkpoint-dir DIR] [--device cpu|cuda|mps]
                  [--no-cuda-graphs] [--host 127.0.0.1] [--port 7860] [--share]

Named API endpoints: /segment and /grounding (see API_DOC).
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.events import Dependency
from PIL import Image, UnidentifiedImageError

from magnet import app_logic as logic
from magnet.checkpoint import CheckpointError
from magnet.visualize import COLORMAPS, expression_colors, heatmap_grid, heatmap_overlay, probability_image

log = logging.getLogger("magnet.app")

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT_DIR = ROOT / "checkpoints"
EXAMPLES_FILE = ROOT / "assets" / "examples.json"
ACCURACY_FILE = ROOT / "assets" / "grounding" / "accuracy.json"  # written by `python -m magnet evaluate-grounding`
DEFAULT_COLORMAP = "inferno"  # perceptually uniform: brightness follows the value
STATE_TTL_S = 1800  # per-session results are dropped after 30 min without use
SEGMENT_OUTPUTS = 8  # render_segment's: JSON, mask files, zip, overlay, probabilities, tokens, notes, status
# A handler whose parameter defaults to a gr.Progress gets a fresh tracker per call; this one
# also shows the tqdm bars inside it (the hub's download).
DOWNLOAD_PROGRESS = gr.Progress(track_tqdm=True)
RENDER = {"api_visibility": "private", "concurrency_id": "render", "concurrency_limit": 4}  # model-free redraws

API_DOC = """
```python
from gradio_client import Client, handle_file

client = Client("http://127.0.0.1:7860/")
# /segment(image, expressions, threshold=0.5, opacity=0.5)
result, mask_pngs, masks_zip, *_ = client.predict(
    handle_file("photo.jpg"), "the man in the red shirt\\nthe dog", 0.5, api_name="/segment")
for entry, png in zip(result["expressions"], mask_pngs):
    print(entry["expression"], entry["score"], entry["found"], entry["tokens"], png)  # png: 0/255, photo size
# /grounding(image, expression, source, colormap="inferno", opacity=0.5)
summary, grid_png, token_png = client.predict(
    handle_file("photo.jpg"), "the dog", "word-drop", api_name="/grounding")
print(summary["source"], summary["reason"], summary["tokens"])  # [{"token": "dog", "peak_xy": [x, y]}, ...]
```
/segment returns (result JSON, mask PNG paths in expression order, zip of all masks, overlay,
probability maps, tokens, warnings, status); /grounding returns (JSON, grid of token heatmaps,
heatmap of the first word), maps at the photo's resolution. Sources: "word-drop", "gradient",
"mask-grounding" (checkpoints with the head) and "fusion-stage-1".."fusion-stage-4".
Errors (no image, empty expression, unreadable image) raise gradio_client.exceptions.AppError
with a readable message.
"""

CSS = """
#model-info p { margin: 0; }
.notes p { color: #b45309; font-weight: 600; }
"""


class PhotoInput(gr.Image):
    """gr.Image whose unreadable uploads raise a readable error instead of a PIL traceback."""

    is_template = True  # rendered by the frontend's Image component

    def preprocess(self, payload: Any) -> Any:
        try:
            return super().preprocess(payload)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            raise gr.Error(
                "The uploaded file is not an image that can be read (use JPEG, PNG, WebP, BMP or TIFF); "
                "it may be corrupt or truncated."
            ) from None


def readable_errors(fn: Callable) -> Callable:
    """Errors a user can cause become a gr.Error (a message in the page), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except logic.USER_ERRORS as exc:
            raise gr.Error(str(exc)) from None

    return wrapper


# ----------------------------------------------------------------------------- rendering
def token_highlights(run: logic.SegmentRun) -> list[tuple[str, str | None]]:
    """HighlightedText value: each expression's tokens, [UNK] and the cut point marked."""
    spans: list[tuple[str, str | None]] = []
    for i, result in enumerate(run.results):
        spans.append((f"{i + 1}.", "expression"))
        for token in result.tokens:
            spans += [(" ", None), (token, "unknown" if token == "[UNK]" else None)]
        if result.truncated:
            spans += [(" ", None), ("✂ rest cut", "cut")]
        spans.append(("\n", None))
    return spans


def segment_overlay(run: logic.SegmentRun, threshold: float, opacity: float) -> gr.AnnotatedImage:
    """The photo with each expression's mask in its colour, at an opacity (no files written)."""
    labels = run.labels()
    masks = [(m.astype(np.float32) * opacity, label) for m, label in zip(run.masks(threshold), labels)]
    return gr.AnnotatedImage(value=(run.image, masks), color_map=dict(zip(labels, expression_colors(len(labels)))))


def render_segment(
    run: logic.SegmentRun, threshold: float, opacity: float, outputs: logic.OutputDirs, notes: list[str]
) -> tuple:
    """The Segment tab's outputs for one run at a threshold and opacity (no model involved): the
    mask files are written afresh, since they depend on the threshold."""
    files, archive = logic.write_masks(
        run.masks(threshold), [r.expression for r in run.results], outputs.new(), scores=[r.score for r in run.results]
    )
    probabilities = [(probability_image(r.probability / 255.0), label) for r, label in zip(run.results, run.labels())]
    status = (
        f"{len(run.results)} expression(s) in **{run.seconds:.2f} s** on `{run.device}` · "
        f"checkpoint `{run.checkpoint}` · image {run.image.shape[1]}×{run.image.shape[0]}"
    )
    return (
        logic.run_summary(run, threshold, files),
        [str(f) for f in files],
        str(archive),
        segment_overlay(run, threshold, opacity),
        probabilities,
        token_highlights(run),
        "\n".join(f"⚠ {note}  " for note in notes),
        status,
    )


def render_grounding(run: logic.GroundingRun, token: int | None, cmap: str, opacity: float) -> tuple:
    """(grid of every token's map, larger view of one token)."""
    titles = [f"{i}: {t}" for i, t in enumerate(run.tokens)]
    grid = heatmap_grid(run.image, [run.heat(i) for i in range(len(run.tokens))], titles, cmap=cmap, opacity=opacity)
    return grid, render_token(run, token, cmap, opacity)


def render_token(run: logic.GroundingRun, token: int | None, cmap: str, opacity: float) -> np.ndarray:
    """One token's map over the photo at full size (default: the first word)."""
    index = int(token) if token is not None and 0 <= int(token) < len(run.tokens) else first_word(run.tokens)
    return heatmap_overlay(run.image, run.heat(index), cmap=cmap, opacity=opacity)


def first_word(tokens: list[str]) -> int:
    """Index of the first token that is not [CLS]/[SEP] (0 if none)."""
    return next((i for i, t in enumerate(tokens) if t not in logic.SPECIAL_TOKENS), 0)


def model_header(store: logic.ModelStore) -> str:
    info = store.info
    return info.describe() if info is not None else f"**No model loaded.** {store.unloaded_reason}"


def default_source(store: logic.ModelStore) -> str | None:
    """The loaded checkpoint's default grounding source (the best measured one it has)."""
    return store.info.grounding_sources[0] if store.info is not None else None


def default_source_note(store: logic.ModelStore, accuracy: dict[str, Any]) -> str:
    """What the Grounding tab shows first and why."""
    info = store.info
    if info is None:
        return ""
    return logic.source_note(info.grounding_sources[0], info.grounding_reason, accuracy)


# ----------------------------------------------------------------------------- event handlers
# Module-level functions; the page binds their first arguments (store, output folders, accuracy
# table) with functools.partial, so each event's inputs are the remaining parameters.
def show_model(store: logic.ModelStore, checkpoint_dir: Path) -> tuple:
    """Model picker (choices rescanned), header, details and no-model banner for the loaded model."""
    info = store.info
    choices, current = logic.checkpoint_choices(checkpoint_dir, info.path if info is not None else None)
    return (
        gr.Dropdown(choices=choices, value=current),
        model_header(store),
        info.details() if info is not None else None,
        gr.Markdown(visible=info is None),
    )


def switch_model(
    store: logic.ModelStore,
    checkpoint_dir: Path,
    choice: str | None,
    progress: gr.Progress = DOWNLOAD_PROGRESS,
) -> tuple:
    """Loads the chosen checkpoint (downloading a released one first, with a progress bar); on
    failure a warning says why and the previous model stays."""
    if choice:
        download = logic.pending_download(choice)
        if download is not None:
            progress(0, desc=f"Downloading {download}")
        try:
            store.load(choice)
        except CheckpointError as exc:
            name = logic.released_name(choice) or Path(choice).name
            gr.Warning(f"Could not load {name}: {exc}. Keeping the previous model.")
    return show_model(store, checkpoint_dir)


def source_defaults(store: logic.ModelStore, accuracy: dict[str, Any]) -> tuple:
    """The Grounding tab's source and its note for the loaded model."""
    return gr.Radio(value=default_source(store)), default_source_note(store, accuracy)


@readable_errors
def run_segment(
    store: logic.ModelStore,
    outputs: logic.OutputDirs,
    image: str | None,
    expressions: str | None,
    threshold: float = 0.5,
    opacity: float = 0.5,
) -> tuple:
    """/segment: the Segment tab's outputs and the run, kept in the session's state."""
    run = logic.segment(store, image, expressions, threshold)
    notes = logic.run_warnings(run, threshold)
    for note in notes:
        gr.Warning(note)
    return (*render_segment(run, threshold, opacity, outputs, notes), run)


def rethreshold(outputs: logic.OutputDirs, run: logic.SegmentRun | None, threshold: float, opacity: float) -> tuple:
    """Every Segment output at a new threshold, mask files included (the model does not run)."""
    if run is None:
        return tuple(gr.skip() for _ in range(SEGMENT_OUTPUTS))
    return render_segment(run, threshold, opacity, outputs, logic.run_warnings(run, threshold))


def recolour(run: logic.SegmentRun | None, threshold: float, opacity: float) -> Any:
    """Only the overlay, at a new opacity: the mask files stay as they are."""
    return segment_overlay(run, threshold, opacity) if run is not None else gr.skip()


def expressions_of(run: logic.SegmentRun | None) -> gr.Dropdown:
    """The Grounding tab's expression choices: those of the last segment run."""
    names = [r.expression for r in run.results] if run is not None else []
    return gr.Dropdown(choices=names, value=names[0] if names else None)


@readable_errors
def run_grounding(
    store: logic.ModelStore,
    image: str | None,
    expression: str | None,
    source: str | None = None,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = 0.5,
) -> tuple:
    """/grounding: (summary JSON, grid of token maps, the first word's map) and the run."""
    run = logic.token_maps(store, image, expression, source)
    grid, large = render_grounding(run, None, colormap, opacity)
    return run.summary(), grid, large, run


def token_pickers(accuracy: dict[str, Any], run: logic.GroundingRun | None) -> tuple:
    """Token-to-enlarge and word-to-mask choices, and the note on the source shown."""
    if run is None:
        return gr.skip(), gr.skip(), gr.skip()
    choices = [(f"{i}: {t}", i) for i, t in enumerate(run.tokens)]
    words = logic.maskable_tokens(run.tokens)
    return (
        gr.Dropdown(choices=choices, value=first_word(run.tokens)),
        gr.Dropdown(choices=words, value=words[0][1] if words else None),
        logic.source_note(run.source, run.reason, accuracy),
    )


def regrid(run: logic.GroundingRun | None, token: int | None, colormap: str, opacity: float) -> tuple:
    return render_grounding(run, token, colormap, opacity) if run is not None else (gr.skip(), gr.skip())


def enlarge(run: logic.GroundingRun | None, token: int | None, colormap: str, opacity: float) -> Any:
    return render_token(run, token, colormap, opacity) if run is not None else gr.skip()


@readable_errors
def run_mask_word(
    store: logic.ModelStore, image: str | None, run: logic.GroundingRun | None, position: int | None
) -> tuple:
    """The masked expression as the head read it, and its top-5 words."""
    if run is None or position is None:
        raise gr.Error("Show the token maps first, then pick the word to mask.")
    top = logic.mask_word(store, image, run.expression, int(position))
    masked = " ".join(
        "[MASK]" if i == int(position) else t for i, t in enumerate(run.tokens) if t not in logic.SPECIAL_TOKENS
    )
    return f"The head read: **{masked}**", dict(top)


@readable_errors
def run_word_importance(store: logic.ModelStore, image: str | None, expression: str | None, threshold: float) -> tuple:
    """(bar plot, table) of how much the mask changes without each word."""
    rows = logic.word_importance(store, image, expression, threshold)
    table = pd.DataFrame(rows, columns=["word", "iou_without", "importance"])
    return table, table


# ----------------------------------------------------------------------------- the page


@dataclass
class ModelPicker:
    """What other parts of the page need from the model picker."""

    outputs: list[gr.components.Component]  # what show_model / switch_model fill
    switched: Dependency  # the event after a model was chosen


def model_picker(store: logic.ModelStore, checkpoint_dir: Path) -> ModelPicker:
    """The no-model banner, the model list (local files and the released checkpoints), the header
    and its details; choosing a model loads it."""
    info = store.info
    banner = gr.Markdown(f"### ⚠ {store.unloaded_reason}", visible=info is None, elem_id="banner")
    choices, current = logic.checkpoint_choices(checkpoint_dir, info.path if info is not None else None)
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(
            choices,
            value=current,
            label="Model",
            scale=4,
            info=f"checkpoints in {checkpoint_dir}, and the authors' released weights (downloaded when chosen)",
            elem_id="model-pick",
        )
        rescan = gr.Button("Rescan checkpoints", scale=1)
    header = gr.Markdown(model_header(store), elem_id="model-info")
    with gr.Accordion("Model details", open=False, elem_id="model-details"):
        details = gr.JSON(info.details() if info is not None else None, show_label=False)
    outputs = [pick, header, details, banner]
    switched = pick.select(
        functools.partial(switch_model, store, checkpoint_dir), [pick], outputs, api_visibility="private"
    )
    rescan.click(functools.partial(show_model, store, checkpoint_dir), None, outputs, api_visibility="private")
    return ModelPicker(outputs, switched)


@dataclass
class SegmentTab:
    """What the Grounding tab uses from the Segment tab."""

    image: PhotoInput
    threshold: gr.Slider
    state: gr.State  # the session's last SegmentRun
    segmented: Dependency  # the /segment event


def segment_tab(store: logic.ModelStore, outputs: logic.OutputDirs, examples: list[list[str]]) -> SegmentTab:
    """Image and expressions in; overlay, probability maps, mask files, tokens and warnings out
    (the /segment endpoint). The sliders redraw without the model."""
    with gr.Tab("Segment", id="segment"):
        state = gr.State(None, time_to_live=STATE_TTL_S)
        with gr.Row():
            with gr.Column(scale=1):
                image = PhotoInput(
                    type="filepath",
                    image_mode=None,
                    label="Image",
                    sources=["upload", "clipboard", "webcam"],
                    elem_id="image-input",
                )
                expressions = gr.Textbox(
                    lines=3,
                    label="Expressions (one per line)",
                    elem_id="expressions",
                    placeholder="the man in the red shirt left of the dog",
                )
                with gr.Row():
                    threshold = gr.Slider(0.05, 0.95, value=0.5, step=0.01, label="Threshold")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity")
                run_button = gr.Button("Segment", variant="primary", elem_id="segment-button")
                if examples:
                    gr.Examples(examples, inputs=[image, expressions], label="Examples")
            with gr.Column(scale=1):
                overlay = gr.AnnotatedImage(label="Masks", elem_id="overlay")
                status = gr.Markdown(label="Status", elem_id="status")
                notes = gr.Markdown(label="Warnings", elem_classes="notes", elem_id="notes")
                tokens = gr.HighlightedText(
                    label="Tokens the model saw",
                    elem_id="tokens",
                    color_map={"unknown": "red", "cut": "orange", "expression": "gray"},
                )
        with gr.Row():
            probabilities = gr.Gallery(
                label="Probability maps", columns=4, height=260, object_fit="contain", elem_id="probs"
            )
            with gr.Column():
                mask_files = gr.File(label="Masks (PNG, 0/255)", file_count="multiple", elem_id="mask-files")
                masks_zip = gr.DownloadButton("Download all masks (.zip)", elem_id="masks-zip")
        result_json = gr.JSON(label="Result (as /segment returns it)", open=False, elem_id="segment-json")

    rendered = [result_json, mask_files, masks_zip, overlay, probabilities, tokens, notes, status]
    segmented = run_button.click(
        functools.partial(run_segment, store, outputs),
        [image, expressions, threshold, opacity],
        rendered + [state],
        api_name="segment",
        api_description="Segment what each expression (one per line) refers to.",
    )
    threshold.change(functools.partial(rethreshold, outputs), [state, threshold, opacity], rendered, **RENDER)
    opacity.change(recolour, [state, threshold, opacity], [overlay], **RENDER)
    return SegmentTab(image, threshold, state, segmented)


def grounding_tab(store: logic.ModelStore, accuracy: dict[str, Any], segment: SegmentTab, picker: ModelPicker) -> None:
    """Per-token maps of one expression about the Segment tab's image (the /grounding endpoint),
    "mask a word" and "which words matter"."""
    with gr.Tab("Grounding", id="grounding"):
        state = gr.State(None, time_to_live=STATE_TTL_S)
        gr.Markdown("Where each word of an expression grounds in the image of the Segment tab.")
        with gr.Row():
            with gr.Column(scale=1):
                expression = gr.Dropdown(
                    [],
                    label="Expression",
                    allow_custom_value=True,
                    info="from the last segment run, or type one",
                    elem_id="g-expr",
                )
                # Every source stays listed whatever the model: a checkpoint without the head
                # answers "this checkpoint has no Mask Grounding head" when it is chosen.
                measured = (
                    f"% pointing: how often the expression's map peaks inside the referred object "
                    f"(held-out synthetic scenes, {accuracy['checkpoint']})"
                    if accuracy.get("checkpoint")
                    else "accuracy not measured yet"
                )
                source = gr.Radio(
                    logic.source_choices(store.info.num_stages if store.info else 4, accuracy),
                    value=default_source(store),
                    label="Source",
                    info=measured,
                    elem_id="g-source",
                )
                cmap = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity")
                button = gr.Button("Show token maps", variant="primary", elem_id="grounding-button")
                token = gr.Dropdown([], label="Token to enlarge")
            with gr.Column(scale=2):
                note = gr.Markdown(default_source_note(store, accuracy), elem_id="g-note")
                gr.Markdown("**Per-token maps** (token index: token)")
                grid = gr.Image(label="Per-token maps", show_label=False, format="png", elem_id="token-grid")
                gr.Markdown("**Selected token**")
                large = gr.Image(label="Selected token", show_label=False, format="png", elem_id="token-large")
        summary = gr.JSON(label="Result (as /grounding returns it)", open=False)
        with gr.Row():
            with gr.Column():
                gr.Markdown(
                    "### Mask a word\nReplace one word by [MASK]; the Mask Grounding head guesses "
                    "it from the image and the object's mask."
                )
                mask_pick = gr.Dropdown([], label="Word to mask")
                mask_button = gr.Button("Predict the masked word")
                masked_text = gr.Markdown()
                top_words = gr.Label(num_top_classes=5, label="Top-5 words")
            with gr.Column():
                gr.Markdown(
                    "### Which words matter\nDrop each word in turn: a low IoU with the full "
                    "expression's mask means the word matters."
                )
                drop_button = gr.Button("Drop each word")
                plot = gr.BarPlot(
                    x="word",
                    y="importance",
                    y_lim=[0, 1],
                    sort=None,
                    title="1 − IoU without the word",
                    elem_id="word-plot",
                )
                table = gr.Dataframe(
                    headers=["word", "iou_without", "importance"], interactive=False, elem_id="word-table"
                )

    picker.switched.success(
        functools.partial(source_defaults, store, accuracy), None, [source, note], api_visibility="private"
    )
    segment.segmented.success(expressions_of, [segment.state], [expression], api_visibility="private")
    button.click(
        functools.partial(run_grounding, store),
        [segment.image, expression, source, cmap, opacity],
        [summary, grid, large, state],
        api_name="grounding",
        api_description="Per-token heatmaps of one expression from the chosen source.",
    ).success(functools.partial(token_pickers, accuracy), [state], [token, mask_pick, note], api_visibility="private")
    token.input(enlarge, [state, token, cmap, opacity], [large], **RENDER)
    gr.on([cmap.change, opacity.change], regrid, [state, token, cmap, opacity], [grid, large], **RENDER)
    mask_button.click(
        functools.partial(run_mask_word, store),
        [segment.image, state, mask_pick],
        [masked_text, top_words],
        api_visibility="private",
    )
    drop_button.click(
        functools.partial(run_word_importance, store),
        [segment.image, expression, segment.threshold],
        [plot, table],
        api_visibility="private",
    )


def build_demo(
    store: logic.ModelStore,
    checkpoint_dir: Path,
    outputs: logic.OutputDirs,
    examples_file: Path = EXAMPLES_FILE,
    accuracy_file: Path = ACCURACY_FILE,
) -> gr.Blocks:
    """The whole page: model picker, Segment tab, Grounding tab, and the /segment, /grounding endpoints."""
    with gr.Blocks(title="MagNet Studio", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# MagNet Studio\nReferring image segmentation: describe an object in a photo, get its mask.")
        picker = model_picker(store, checkpoint_dir)
        with gr.Tabs():
            segment = segment_tab(store, outputs, logic.load_examples(examples_file, ROOT))
            grounding_tab(store, logic.load_accuracy(accuracy_file), segment, picker)
        demo.load(functools.partial(show_model, store, checkpoint_dir), None, picker.outputs, api_visibility="private")
    return demo


# ----------------------------------------------------------------------------- entry point
def load_initial(store: logic.ModelStore, checkpoint: str | Path) -> None:
    """Loads the start-up checkpoint. A released one by name is downloaded first when it is not in
    the Hugging Face cache (a failed download raises CheckpointError); a missing or broken file
    leaves the app up with a message."""
    if logic.released_name(checkpoint) is not None:
        store.load(checkpoint)
        return
    checkpoint = Path(checkpoint)
    if not checkpoint.exists():
        store.unloaded_reason = logic.missing_checkpoint_message(checkpoint)
        log.warning(store.unloaded_reason)
        return
    try:
        store.load(checkpoint)
    except CheckpointError as exc:
        store.unloaded_reason = f"Could not load {checkpoint}: {exc}"
        log.error(store.unloaded_reason)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="MagNet Studio web app")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help=f"checkpoint file to start with (default: <checkpoint-dir>/{logic.DEFAULT_CHECKPOINT}), or refcoco, "
        "refcoco+ or refcocog: the authors' released weights, downloaded into the Hugging Face cache when not there",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=DEFAULT_CHECKPOINT_DIR,
        help="folder listed in the model picker (default: checkpoints/)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda", "mps"], default=None, help="default: cuda, then mps, then cpu"
    )
    parser.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="on CUDA, run every forward eagerly instead of replaying it as a CUDA graph",
    )
    parser.add_argument(
        "--flip-tta",
        action="store_true",
        help="segment each image as read and mirrored (left/right swapped in the text) and average: "
        "a little more accurate, twice the time",
    )
    parser.add_argument("--host", default="127.0.0.1", help="use 0.0.0.0 to serve the local network")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("magnet").setLevel(logging.INFO)

    store = logic.ModelStore(args.device, cuda_graphs=not args.no_cuda_graphs, flip_tta=args.flip_tta)
    try:
        load_initial(store, args.checkpoint or args.checkpoint_dir / logic.DEFAULT_CHECKPOINT)
    except CheckpointError as exc:
        parser.exit(2, f"error: {exc}\n")
    demo = build_demo(store, args.checkpoint_dir, logic.OutputDirs())
    # One inference at a time on CPU (it uses every core); two on CUDA overlap pre/post-processing.
    demo.queue(default_concurrency_limit=2 if store.device.type == "cuda" else 1, max_size=64)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        show_error=True,
        theme=gr.themes.Soft(),
        css=CSS,
        state_session_capacity=128,
        footer_links=["api", "gradio"],
    )


if __name__ == "__main__":
    main()
