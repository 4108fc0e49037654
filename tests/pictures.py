"""How a test looks at a picture lmforge drew: it is a PNG (its signature, and the size its IHDR chunk
states), it reads back (matplotlib's reader) at that size, and it is not blank."""

import struct
from pathlib import Path

import numpy as np
from matplotlib import image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path) -> np.ndarray:
    """The picture at path as (height, width, channels) floats in [0, 1], checked to be a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path} does not start with its IHDR chunk"
    width, height = struct.unpack(">II", data[16:24])
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width)
    return pixels


def png_size(path) -> tuple[int, int]:
    """(width, height) of the PNG at path."""
    height, width = read_png(path).shape[:2]
    return width, height


def colours(pixels: np.ndarray) -> np.ndarray:
    """The distinct RGB colours of a picture, each as one integer 0xRRGGBB."""
    rgb = np.rint(pixels[..., :3] * 255).astype(np.uint32).reshape(-1, 3)
    return np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])


def assert_drawn(path, *, min_colours: int = 20) -> np.ndarray:
    """The picture at path has something in it: its pixels vary, in many colours. Returns the pixels."""
    pixels = read_png(path)
    assert pixels[..., :3].std() > 0.02, f"{path} is (nearly) one colour"
    assert len(colours(pixels)) > min_colours, f"{path} has only {len(colours(pixels))} colours"
    return pixels


def share_of(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 8) -> float:
    """The fraction of the picture's pixels within `tolerance` (per channel, 0-255) of the colour rgb."""
    close = np.abs(pixels[..., :3] * 255 - np.array(rgb)) <= tolerance
    return float(close.all(axis=-1).mean())
