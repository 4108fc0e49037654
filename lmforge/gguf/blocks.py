"""GGUF's 4-bit blocks (Q4_0, Q4_1) read as the codes, scales and zero points of lmforge's int4 layers
(lmforge/nn/quant.py, `Int4Linear.from_codes`): a 4-bit file decodes in 4 bits, with no float round trip.

ggml stores each row as blocks of 32 consecutive values (ggml-common.h: block_q4_0, block_q4_1):
- Q4_0, 18 bytes: d (float16), then 16 bytes of codes q in [0, 15]; w = (q - 8) * d.
- Q4_1, 20 bytes: d and m (float16), then the codes; w = q * d + m.
Byte j of the codes holds element j in its low nibble and element j + 16 in its high nibble.
The int4 kernel's groups of 32 hold w = (q - 8) * scale + zero: the file's codes as they are, with
scale = d, and zero = 0 (Q4_0) or m + 8 d (Q4_1).

NOTE: the kernel keeps scale and zero in bfloat16 (8 significant bits, float16 has 11), so each is rounded
by up to 2^-8 of itself, and a weight moves from the file's value by up to 2^-8 (8 |d| + |zero|): a few
percent of the block's own step d, more where the block sits far from 0. Measured on SmolLM2-135M-
Instruct's 210 Q4_1 projections against the file's exact dequantization: 2.6e-4 on average, 0.021 at most
(a block with d = 0.57, zero = 3.55; weights reach 9.3 there), at most 4.6% of a block's d. Re-deriving
int4 from the dequantized floats (the round trip this replaces) is further off: 5.9e-4 average, 0.029 max.

Q8_0 (32 int8 codes and one float16 scale a block) has no kernel here: PyTorch's int8 kernel takes one
scale per output row, so a Q8_0 tensor is dequantized to float and requantized per channel, as are the
K-quants (super-blocks of 256 with 6-bit sub-block scales), whose groups the int4 kernel cannot take.
"""

from __future__ import annotations

import numpy as np
import torch

GROUP = 32  # values a block holds, and the int4 kernel's group size for them
BLOCK_BYTES = {"Q4_0": 2 + 16, "Q4_1": 2 + 2 + 16}  # float16 d (and m), then 16 bytes of nibbles


def is_int4_blocks(tensor) -> bool:
    """Whether a gguf.ReaderTensor holds Q4_0 or Q4_1 blocks of a matrix."""
    return tensor.tensor_type.name in BLOCK_BYTES and len(tensor.shape) == 2


def read_int4_blocks(tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (rows, cols) int32 in [0, 15] (what the int4 kernel packs), and scales and zero points
    (rows, cols / 32) float32, of a Q4_0 or Q4_1 tensor of PyTorch shape (rows, cols), such that its
    weight is exactly `(codes - 8) * scale + zero`. Only this one tensor's codes are unpacked, never
    its floats."""
    rows, cols = shape
    kind = tensor.tensor_type.name
    # (rows, blocks, bytes): a view of the memory map; a row's blocks run along its columns (GGUF lists
    # the dimensions fastest first, so its (cols, rows) is PyTorch's (rows, cols)).
    blocks = np.asarray(tensor.data).reshape(rows, cols // GROUP, BLOCK_BYTES[kind])
    d = _float16(blocks[..., 0:2])
    nibbles = blocks[..., -16:]
    codes = np.empty((rows, cols // GROUP, GROUP), dtype=np.int32)  # the only copy made of the codes
    np.bitwise_and(nibbles, 0x0F, out=codes[..., :16], casting="unsafe")  # elements 0..15
    np.right_shift(nibbles, 4, out=codes[..., 16:], casting="unsafe")  # elements 16..31
    codes = torch.from_numpy(codes.reshape(rows, cols))
    if kind == "Q4_0":
        return codes, d, torch.zeros_like(d)
    return codes, d, _float16(blocks[..., 2:4]) + 8 * d  # q d + m = (q - 8) d + (m + 8 d)


def _float16(pairs: np.ndarray) -> torch.Tensor:
    # (rows, blocks, 2) bytes -> (rows, blocks) float32; GGUF is little-endian.
    values = np.ascontiguousarray(pairs).view("<f2")[..., 0]
    return torch.from_numpy(values.astype(np.float32))
