"""Decode a JPEG at a reduced scale when only a small canvas is needed: libjpeg's DCT-domain downscaling.

A 12-megapixel street photo is resized to a canvas of a few hundred pixels (604 px for 224 px views, 224 px
for the global view alone). libjpeg can decode straight to 1/2, 1/4 or 1/8 of the size by scaling the inverse
DCT (PIL's ``Image.draft``), which skips most of the decoding work and the full-size pixel buffer. The decoded
image keeps both sides at least ``margin`` times the canvas side, so the canvas's own antialiased resize still
does the final filtering. The ``CANVAS_*_TOLERANCE`` constants state how far the canvas then lies from the one of
a full decode (``tests/test_input_pipeline.py`` checks them on real-resolution demo photos). Plain PIL, no torch:
serving can use it as well as training.
"""

from __future__ import annotations

import math

DRAFT_MARGIN = 2.0  # decoded sides >= this multiple of the canvas side
# How far the canvas of the fast path (drafted decode, antialiased resize of the 8-bit pixels, then floats in
# [0, 1]) may lie from the reference canvas (full decode, the same resize on floats, as the served ONNX graph
# computes it): the mean |difference|, its 99.9th percentile, and the largest single value (a pixel on a sharp
# edge). Measured on 1920x1080 and 4032x3024 demo photos at canvases 604 and 224: drafting alone gives
# <= 0.0021 / 0.015 / 0.054 (with margin 1 instead of 2: 0.006 / 0.046 / 0.098); the 8-bit resize alone
# <= 0.0011 / - / 0.0038.
CANVAS_MEAN_TOLERANCE = 1 / 255
CANVAS_P999_TOLERANCE = 0.025
CANVAS_MAX_TOLERANCE = 0.1


def draft_box(canvas_size: int | None, margin: float = DRAFT_MARGIN) -> tuple[int, int] | None:
    """The ``target_size`` hint for :func:`~stage1_core.common.images.decode_rgb` that decodes a JPEG at the
    smallest scale (1, 1/2, 1/4, 1/8) whose sides stay at least ``margin * canvas_size``; None for a full decode.

    The box is square, so it bounds the short side whichever way the photo is stored (the EXIF orientation
    applies after decoding). Other formats than JPEG ignore the hint.
    """
    if canvas_size is None:
        return None
    side = math.ceil(margin * canvas_size)
    return side, side
