"""Training sees exactly what serving sees: every path that reads an image yields the same pixels.

The paths: ingest (the facts it records: size, perceptual hash, orange/red share), training and evaluation
(``load_rgb``, the datasets), the export's parity images and the promotion gate (``load_uint8_images``), and the
predictor with the miner (``decode_image``). Each file below is one of the modes where Pillow's plain
``convert("RGB")`` and a careful decoder disagree.
"""

from __future__ import annotations

import io
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stage1_core.common.images import decode_rgb, rgb_array
from stage1_core.data.images import ManifestImageDataset, canvas_transform, load_rgb, load_uint8_images
from stage1_core.data.sources.base import describe_image, orange_red_fraction
from stage1_core.serving.predictor import PredictorConfig, decode_image

ORANGE = (255, 110, 0)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _scene(width: int = 96, height: int = 64) -> Image.Image:
    """A grey gradient with an orange cone-like block: structure for the hash, colour for the orange share."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    image.paste(ORANGE, (10, 10, 40, 50))
    return image


def _transparent_over_orange() -> Image.Image:
    """RGBA whose right half is fully transparent but hides orange pixels (the colour a plain convert shows)."""
    rgba = np.asarray(_scene().convert("RGBA")).copy()
    rgba[:, 48:, :3] = ORANGE
    rgba[:, 48:, 3] = 0
    return Image.fromarray(rgba, "RGBA")


def _palette_with_transparency() -> bytes:
    palette = _scene().quantize(colors=16)
    index = palette.getpixel((60, 30))
    return _encode(palette, "PNG", transparency=index)


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: upright it is 64 wide, 96 high
    return _encode(_scene(), "JPEG", quality=95, exif=exif)


CASES: dict[str, bytes] = {
    "rgba.png": _encode(_transparent_over_orange(), "PNG"),
    "la.png": _encode(_transparent_over_orange().convert("LA"), "PNG"),
    "palette_transparent.png": _palette_with_transparency(),
    "cmyk.jpg": _encode(_scene().convert("CMYK"), "JPEG", quality=95),
    "sixteen_bit.png": _encode(
        Image.fromarray((np.asarray(_scene().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)), "PNG"
    ),
    "exif_rotated.jpg": _exif_rotated(),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("modes")
    for name, data in CASES.items():
        (root / name).write_bytes(data)
    return {name: root / name for name in CASES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_path_yields_the_same_array(name: str, files: dict[str, Path]) -> None:
    path = files[name]
    reference = rgb_array(decode_rgb(path.read_bytes(), source=name))
    manifest = pd.DataFrame({"uri": [str(path)], "label": [1]})
    paths = {
        "training / evaluation (load_rgb)": rgb_array(load_rgb(str(path))),
        "export parity and promotion gate (load_uint8_images)": load_uint8_images(manifest)[0].numpy(),
        "predictor and miner (decode_image)": decode_image(path.read_bytes(), source=name, config=PredictorConfig()),
        "miner (fitted to bounds)": decode_image(
            path.read_bytes(), source=name, config=PredictorConfig(), fit_to_bounds=True
        ),
    }
    for where, array in paths.items():
        assert array.dtype == np.uint8 and array.shape == reference.shape, where
        np.testing.assert_array_equal(array, reference, err_msg=where)
    transform = canvas_transform(32, None)
    tensor, _ = ManifestImageDataset(manifest, transform)[0]
    expected = transform(decode_rgb(path.read_bytes(), source=name))
    np.testing.assert_array_equal(tensor.numpy(), expected.numpy(), err_msg="the training dataset's canvas")


@pytest.mark.parametrize("name", sorted(CASES))
def test_ingest_facts_describe_the_decoded_pixels(name: str, files: dict[str, Path]) -> None:
    data = files[name].read_bytes()
    decoded = decode_rgb(data, source=name)
    facts = describe_image(data)
    assert facts.decode_error == ""
    assert (facts.width, facts.height) == decoded.size, "size upright, as the model sees it"
    thumbnail = decoded.copy()
    thumbnail.thumbnail((128, 128))
    if not name.endswith(".jpg"):  # a JPEG's thumbnail is decoded at a reduced DCT scale: pixels differ slightly
        assert facts.phash == str(imagehash.phash(thumbnail))
    assert facts.orange_red_fraction == pytest.approx(orange_red_fraction(thumbnail), abs=0.02)


def test_transparent_pixels_are_white_everywhere_and_never_show_the_hidden_colour(files: dict[str, Path]) -> None:
    """The skew this file guards against: training read transparency as the hidden colour, serving as white."""
    for name in ("rgba.png", "la.png"):
        trained = rgb_array(load_rgb(str(files[name])))
        assert (trained[:, :, 48:] == 255).all(), name
    facts = describe_image(files["rgba.png"].read_bytes())
    visible_orange = 30 * 40 / (96 * 64)  # the opaque block only
    assert facts.orange_red_fraction == pytest.approx(visible_orange, abs=0.03)


def test_sixteen_bit_is_scaled_not_clipped_and_exif_is_applied(files: dict[str, Path]) -> None:
    deep = rgb_array(load_rgb(str(files["sixteen_bit.png"])))
    expected = np.asarray(_scene().convert("L"))
    np.testing.assert_array_equal(deep[0], expected)
    assert rgb_array(load_rgb(str(files["exif_rotated.jpg"]))).shape == (3, 96, 64)
