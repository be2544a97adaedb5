"""MagNet modules, split by role: backbone (Swin), text (BERT), fusion, head, grounding."""

from .magnet import MagNet, MagNetOutput, postprocess_masks, resize_probabilities, upsample_mask_logits

__all__ = ["MagNet", "MagNetOutput", "postprocess_masks", "resize_probabilities", "upsample_mask_logits"]
