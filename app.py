"""MagNet Studio: the web app. Builds the Gradio page and wires it to `magnet.app_logic`.

    python app.py [--checkpoint PATH] [--device cpu|cuda|mps] [--host 127.0.0.1] [--port 7860] [--share]

Named API endpoints: /segment and /grounding (see API_DOC).
"""

from __future__ import annotations

import argparse
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
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


def render_segment(run: logic.SegmentRun, threshold: float, opacity: float, outputs: logic.OutputDirs) -> tuple:
    """The Segment tab's outputs for one run at a threshold and opacity (no model involved)."""
    masks = run.masks(threshold)
    labels = run.labels()
    colors = expression_colors(len(labels))
    files, archive = logic.write_masks(
        masks, [r.expression for r in run.results], outputs.new(), scores=[r.score for r in run.results]
    )
    overlay = gr.AnnotatedImage(
        value=(run.image, [(m.astype(np.float32) * opacity, label) for m, label in zip(masks, labels)]),
        color_map=dict(zip(labels, colors)),
    )
    probabilities = [(probability_image(r.probability / 255.0), label) for r, label in zip(run.results, labels)]
    notes = "\n".join(f"⚠ {note}  " for note in logic.run_warnings(run, threshold))
    status = (
        f"{len(run.results)} expression(s) in **{run.seconds:.2f} s** on `{run.device}` · "
        f"checkpoint `{run.checkpoint}` · image {run.image.shape[1]}×{run.image.shape[0]}"
    )
    summary = logic.run_summary(run, threshold, files)
    return summary, [str(f) for f in files], str(archive), overlay, probabilities, token_highlights(run), notes, status


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


# ----------------------------------------------------------------------------- the page
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


def build_demo(
    store: logic.ModelStore,
    checkpoint_dir: Path,
    outputs: logic.OutputDirs,
    examples_file: Path = EXAMPLES_FILE,
    accuracy_file: Path = ACCURACY_FILE,
) -> gr.Blocks:
    """The whole page: model picker, Segment tab, Grounding tab, and the /segment, /grounding endpoints."""

    def checkpoint_choices() -> list[tuple[str, str]]:
        paths = logic.list_checkpoints(checkpoint_dir)
        if store.info is not None and store.info.path not in paths:
            paths.insert(0, store.info.path)
        return [(p.name, str(p)) for p in paths]

    current_path = str(store.info.path) if store.info is not None else None
    accuracy = logic.load_accuracy(accuracy_file)

    with gr.Blocks(title="MagNet Studio", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# MagNet Studio\nReferring image segmentation: describe an object in a photo, get its mask.")
        banner = gr.Markdown(f"### ⚠ {store.unloaded_reason}", visible=store.info is None, elem_id="banner")
        with gr.Row(equal_height=True):
            model_pick = gr.Dropdown(
                checkpoint_choices(),
                value=current_path,
                label="Model",
                scale=4,
                info=f"checkpoints in {checkpoint_dir}",
                elem_id="model-pick",
            )
            rescan = gr.Button("Rescan checkpoints", scale=1)
        model_info = gr.Markdown(model_header(store), elem_id="model-info")

        segment_state = gr.State(None, time_to_live=STATE_TTL_S)
        grounding_state = gr.State(None, time_to_live=STATE_TTL_S)

        with gr.Tabs():
            with gr.Tab("Segment", id="segment"):
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
                        examples = logic.load_examples(examples_file, ROOT)
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
                        mask_files = gr.File(label="Masks (PNG, 0/255)", file_count="multiple")
                        masks_zip = gr.DownloadButton("Download all masks (.zip)")
                result_json = gr.JSON(label="Result (as /segment returns it)", open=False, elem_id="segment-json")

            with gr.Tab("Grounding", id="grounding"):
                gr.Markdown("Where each word of an expression grounds in the image of the Segment tab.")
                with gr.Row():
                    with gr.Column(scale=1):
                        g_expression = gr.Dropdown(
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
                        g_source = gr.Radio(
                            logic.source_choices(store.info.num_stages if store.info else 4, accuracy),
                            value=default_source(store),
                            label="Source",
                            info=measured,
                            elem_id="g-source",
                        )
                        g_cmap = gr.Dropdown(list(COLORMAPS), value=DEFAULT_COLORMAP, label="Colormap")
                        g_opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity")
                        g_button = gr.Button("Show token maps", variant="primary", elem_id="grounding-button")
                        g_token = gr.Dropdown([], label="Token to enlarge")
                    with gr.Column(scale=2):
                        g_note = gr.Markdown(default_source_note(store, accuracy), elem_id="g-note")
                        gr.Markdown("**Per-token maps** (token index: token)")
                        g_grid = gr.Image(label="Per-token maps", show_label=False, format="png", elem_id="token-grid")
                        gr.Markdown("**Selected token**")
                        g_large = gr.Image(
                            label="Selected token", show_label=False, format="png", elem_id="token-large"
                        )
                g_json = gr.JSON(label="Result (as /grounding returns it)", open=False)
                with gr.Row():
                    with gr.Column():
                        gr.Markdown(
                            "### Mask a word\nReplace one word by [MASK]; the Mask Grounding head guesses "
                            "it from the image and the object's mask."
                        )
                        mw_word = gr.Dropdown([], label="Word to mask")
                        mw_button = gr.Button("Predict the masked word")
                        mw_text = gr.Markdown()
                        mw_top = gr.Label(num_top_classes=5, label="Top-5 words")
                    with gr.Column():
                        gr.Markdown(
                            "### Which words matter\nDrop each word in turn: a low IoU with the full "
                            "expression's mask means the word matters."
                        )
                        wm_button = gr.Button("Drop each word")
                        wm_plot = gr.BarPlot(
                            x="word",
                            y="importance",
                            y_lim=[0, 1],
                            sort=None,
                            title="1 − IoU without the word",
                            elem_id="word-plot",
                        )
                        wm_table = gr.Dataframe(headers=["word", "iou_without", "importance"], interactive=False)

        # ------------------------------------------------------------------ model switching
        def switch_model(path: str | None) -> tuple:
            if path:
                try:
                    store.load(path)
                except CheckpointError as exc:
                    gr.Warning(f"Could not load {Path(path).name}: {exc}. Keeping the previous model.")
            current = str(store.info.path) if store.info is not None else None
            return (
                gr.Dropdown(choices=checkpoint_choices(), value=current),
                model_header(store),
                gr.Markdown(visible=store.info is None),
            )

        model_outputs = [model_pick, model_info, banner]
        model_pick.select(switch_model, [model_pick], model_outputs, api_visibility="private").success(
            lambda: (gr.Radio(value=default_source(store)), default_source_note(store, accuracy)),
            None,
            [g_source, g_note],
            api_visibility="private",
        )
        rescan.click(lambda: switch_model(None), None, model_outputs, api_visibility="private")
        demo.load(lambda: switch_model(None), None, model_outputs, api_visibility="private")

        # ------------------------------------------------------------------ segment
        segment_outputs = [result_json, mask_files, masks_zip, overlay, probabilities, tokens, notes, status]

        @readable_errors
        def run_segment(
            image: str | None, expressions: str | None, threshold: float = 0.5, opacity: float = 0.5
        ) -> tuple:
            run = logic.segment(store, image, expressions, threshold)
            for note in logic.run_warnings(run, threshold):
                gr.Warning(note)
            return (*render_segment(run, threshold, opacity, outputs), run)

        def rerender(run: logic.SegmentRun | None, threshold: float, opacity: float) -> tuple:
            if run is None:
                return tuple(gr.skip() for _ in segment_outputs)
            return render_segment(run, threshold, opacity, outputs)

        def expressions_of(run: logic.SegmentRun | None) -> gr.Dropdown:
            names = [r.expression for r in run.results] if run is not None else []
            return gr.Dropdown(choices=names, value=names[0] if names else None)

        run_button.click(
            run_segment,
            [image, expressions, threshold, opacity],
            segment_outputs + [segment_state],
            api_name="segment",
            api_description="Segment what each expression (one per line) refers to.",
        ).success(expressions_of, [segment_state], [g_expression], api_visibility="private")
        gr.on(
            [threshold.change, opacity.change],
            rerender,
            [segment_state, threshold, opacity],
            segment_outputs,
            api_visibility="private",
            concurrency_id="render",
            concurrency_limit=4,
        )

        # ------------------------------------------------------------------ grounding
        @readable_errors
        def run_grounding(
            image: str | None,
            expression: str | None,
            source: str | None = None,
            colormap: str = DEFAULT_COLORMAP,
            opacity: float = 0.5,
        ) -> tuple:
            run = logic.token_maps(store, image, expression, source)
            grid, large = render_grounding(run, None, colormap, opacity)
            return run.summary(), grid, large, run

        def token_pickers(run: logic.GroundingRun | None) -> tuple:
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

        g_button.click(
            run_grounding,
            [image, g_expression, g_source, g_cmap, g_opacity],
            [g_json, g_grid, g_large, grounding_state],
            api_name="grounding",
            api_description="Per-token heatmaps of one expression from the chosen source.",
        ).success(token_pickers, [grounding_state], [g_token, mw_word, g_note], api_visibility="private")
        g_token.input(
            enlarge,
            [grounding_state, g_token, g_cmap, g_opacity],
            [g_large],
            api_visibility="private",
            concurrency_id="render",
            concurrency_limit=4,
        )
        gr.on(
            [g_cmap.change, g_opacity.change],
            regrid,
            [grounding_state, g_token, g_cmap, g_opacity],
            [g_grid, g_large],
            api_visibility="private",
            concurrency_id="render",
            concurrency_limit=4,
        )

        @readable_errors
        def run_mask_word(image: str | None, run: logic.GroundingRun | None, position: int | None) -> tuple:
            if run is None or position is None:
                raise gr.Error("Show the token maps first, then pick the word to mask.")
            top = logic.mask_word(store, image, run.expression, int(position))
            masked = " ".join(
                "[MASK]" if i == int(position) else t for i, t in enumerate(run.tokens) if t not in logic.SPECIAL_TOKENS
            )
            return f"The head read: **{masked}**", dict(top)

        mw_button.click(run_mask_word, [image, grounding_state, mw_word], [mw_text, mw_top], api_visibility="private")

        @readable_errors
        def run_word_importance(image: str | None, expression: str | None, threshold: float) -> tuple:
            rows = logic.word_importance(store, image, expression, threshold)
            table = pd.DataFrame(rows, columns=["word", "iou_without", "importance"])
            return table, table

        wm_button.click(
            run_word_importance, [image, g_expression, threshold], [wm_plot, wm_table], api_visibility="private"
        )
    return demo


# ----------------------------------------------------------------------------- entry point
def load_initial(store: logic.ModelStore, checkpoint: Path) -> None:
    """Loads the start-up checkpoint; a missing or broken one leaves the app up with a message."""
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
        type=Path,
        default=None,
        help=f"checkpoint to start with (default: <checkpoint-dir>/{logic.DEFAULT_CHECKPOINT})",
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
    parser.add_argument("--host", default="127.0.0.1", help="use 0.0.0.0 to serve the local network")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("magnet").setLevel(logging.INFO)

    store = logic.ModelStore(args.device)
    load_initial(store, args.checkpoint or args.checkpoint_dir / logic.DEFAULT_CHECKPOINT)
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
