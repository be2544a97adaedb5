"""One region per expression: a referring expression names one object, so a mask that falls apart
into several connected regions (the model torn between two candidates) is cut to the region it is
most sure of, the one of highest mean probability.

Opt-in per checkpoint (`MagNetConfig.single_region`; off for the authors' checkpoints, the
official pipeline) and per call (the predictor's and `evaluate`'s switches). An object split by an
occluder into visible parts is one case it gets wrong, so it suits data whose objects are whole;
measured on the default checkpoint in the README ("Evaluation")."""

from __future__ import annotations

import cv2
import numpy as np
import torch

# Regions below this share of the largest region's area are never chosen: a few stray pixels of
# high probability are not an object. (Synthetic objects are at least a seventh of each other.)
MIN_AREA_FRACTION = 0.05


def most_certain_region(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray | None:
    """(H, W) probabilities -> boolean mask of the 8-connected region of `prob > threshold` with
    the highest mean probability among those of at least MIN_AREA_FRACTION of the largest's area;
    None when the mask has fewer than two regions (nothing to choose)."""
    count, labels = cv2.connectedComponents((prob > threshold).astype(np.uint8), connectivity=8)
    if count <= 2:  # label 0 is the background
        return None
    inside = np.flatnonzero(labels)  # the mask's pixels only: on a photo, a small share of them
    label = labels.ravel()[inside]
    area = np.bincount(label, minlength=count).astype(np.float64)
    mean = np.bincount(label, weights=prob.ravel()[inside], minlength=count) / np.maximum(area, 1.0)
    mean[(area == 0) | (area < MIN_AREA_FRACTION * area.max())] = -1.0  # label 0 has no area here
    return labels == int(mean.argmax())


def keep_one_region(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Mask probabilities (B, 1, H, W) with every map zeroed outside its most certain region
    (`most_certain_region`), so that `> threshold` gives one connected mask; maps of one region or
    none come back unchanged. `prob` itself is never written to: it is returned as it is when no
    map needs a cut (most masks; copying a photo-sized map costs), else a cut copy."""
    out = prob
    for k in range(prob.shape[0]):
        region = most_certain_region(prob[k, 0].detach().float().cpu().numpy(), threshold)
        if region is not None:
            out = prob.clone() if out is prob else out
            out[k, 0].mul_(torch.from_numpy(region).to(out.device, out.dtype))
    return out
