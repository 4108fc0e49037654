"""Pictures of what a model does inside, for `lmforge inspect` and `lmforge embed --map`:

- attention: softmax(Q K^T / sqrt(d_k)) of every layer and head as a heat map over the tokens of a text
  (query tokens down, the keys they attend to across), captured from the reference kernel
  (`recording_attention`, lmforge/nn/attention.py): what the fused fast path computes but never shows.
- positions: the position encoding as a matrix of positions by dimensions: GPT-2's and BERT's learned
  table, Llama's rotary cos/sin angles (lmforge/nn/position.py), T5's relative-distance buckets; beside
  it, how alike two positions are, which for rotary depends on their distance alone.
- embeddings: sentence embeddings projected on their first two principal components (PCA by SVD), each
  point labelled with its text: texts that mean alike land near each other.

The pictures are drawn on lmforge/eval/plot.py's canvas (`drawing`); the numbers they show come from the
functions here, which return tensors so tests can check them.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.nn.attention import recording_attention
from lmforge.nn.position import RelativePositionBias, RotaryEmbedding, relative_position_bucket

# ---- attention --------------------------------------------------------------------------------------------


def attention_weights(model: nn.Module, tokenizer, text: str) -> tuple[list[str], torch.Tensor]:
    """The tokens of `text` and the attention weights (n_layers, n_heads, T, T) each layer's
    self-attention gives them (a T5 model: its encoder's); row t of a head sums to 1 over the keys."""
    base = getattr(model, "base", model)  # a task model (classifier, QA) attends with its network
    ids = tokenizer.encode(text)
    if not ids:
        raise LmforgeError("the text has no tokens; pass some text with --text")
    limit = getattr(base, "max_positions", base.config.max_seq_len)
    if len(ids) > limit:
        raise LmforgeError(f"the text is {len(ids)} tokens; the model reads at most {limit}: shorten it")
    input_ids = torch.tensor([ids], device=base.device)
    with recording_attention(base) as records, torch.inference_mode():
        if base.is_encoder_decoder:
            base.encode(input_ids)
        else:
            base.hidden(input_ids)
    probs = [calls[0][0] for calls in records.values() if calls]  # (n_heads, T, T) per layer
    return [token_label(tokenizer, i) for i in ids], torch.stack(probs).float().cpu()


def token_label(tokenizer, token_id: int) -> str:
    """How a token reads on an axis: its text, or its vocabulary entry when that is blank ([CLS], a space)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False).strip()
    return text or (tokenizer.id_to_token(token_id) or str(token_id))


def write_attention_png(
    weights: torch.Tensor, tokens: list[str], path, *, layer: int | None = None, head: int | None = None
) -> tuple[int, int]:
    """Draw the weights (n_layers, n_heads, T, T) as a grid of heat maps, a row per layer and a column per
    head, or those of one layer, one head, or both; returns the picture's (width, height) in pixels."""
    from lmforge.eval.plot import drawing

    n_layers, n_heads, T, _ = weights.shape
    layers = _pick(layer, n_layers, "--layer", "layers")
    heads = _pick(head, n_heads, "--head", "heads")
    shown = weights[layers][:, heads].numpy()  # (rows, cols, T, T)
    rows, cols = len(layers), len(heads)
    is_single = rows * cols == 1
    panel = 560 if is_single else min(max(1500 // max(rows, cols), 110), 300)  # pixels per heat map
    size = (cols * panel + 150, rows * panel + 170)
    labels = tokens if T * (12 if is_single else 8) <= panel else None  # when a label per token fits
    with drawing(path, *size) as fig:
        axes = fig.subplots(rows, cols, squeeze=False)
        for (r, c), ax in np.ndenumerate(axes):
            image = ax.imshow(shown[r, c], cmap="Blues", vmin=0, vmax=float(shown.max()))
            _label_tokens(ax, labels if r == rows - 1 else None, labels if c == 0 else None, is_single)
            if is_single:
                ax.set_title(f"layer {layers[r]}, head {heads[c]}")
                ax.set(xlabel="key: the token attended to", ylabel="query: the token attending")
            if r == 0 and not is_single:
                ax.set_title(f"head {heads[c]}", fontsize=9)
            if c == 0 and not is_single:
                ax.set_ylabel(f"layer {layers[r]}", fontsize=9)
        fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight (each row sums to 1)")
        fig.suptitle("attention: each query token (down) over the tokens it attends to (across)")
    return size


def _label_tokens(ax, x_labels: list[str] | None, y_labels: list[str] | None, is_large: bool) -> None:
    """Tokens on a heat map's axes where given (the bottom row and left column of a grid), else no ticks."""
    fontsize = 9 if is_large else 6
    ax.set_xticks(range(len(x_labels)) if x_labels else [])
    ax.set_yticks(range(len(y_labels)) if y_labels else [])
    if x_labels:
        ax.set_xticklabels(x_labels, rotation=90, fontsize=fontsize)
    if y_labels:
        ax.set_yticklabels(y_labels, fontsize=fontsize)


def _pick(index: int | None, count: int, flag: str, what: str) -> list[int]:
    if index is None:
        return list(range(count))
    if not 0 <= index < count:
        raise LmforgeError(f"{flag} {index} is out of range: the model has {count} {what} (0 to {count - 1})")
    return [index]


# ---- positions --------------------------------------------------------------------------------------------


class Panel(NamedTuple):
    """One heat map of a positions picture: its rows are positions 0 .. n-1."""

    title: str
    matrix: np.ndarray
    xlabel: str
    ylabel: str = "position"


def position_panels(model: nn.Module | None, config, n_positions: int) -> list[Panel]:
    """The matrices that show a model's position encoding, for positions 0 .. n-1. Without weights
    (`model` None: a preset's config) only what the config fixes is shown."""
    base = getattr(model, "base", model)
    kind = config.model_type
    n = min(n_positions, config.max_seq_len)
    if kind == "llama":
        rope = (
            base.pos_embed
            if base is not None
            else RotaryEmbedding(config.d_head, config.rope_theta, config.rope_scaling)
        )
        return _rotary_panels(rope, n)
    if kind == "t5":
        return _t5_panels(base.encoder.pos_embed if base is not None else None, config, n)
    if base is None:
        raise LmforgeError(
            f"a {kind} model learns its position embeddings: random until trained. Pass --model with a "
            "checkpoint (a preset only shows the rotary and T5 encodings, which its config fixes)"
        )
    offset = config.max_seq_len - getattr(base, "max_positions", config.max_seq_len)  # RoBERTa's
    table = base.pos_embed.weight[offset : offset + n].detach().float().cpu()  # (n, d_model)
    unit = nn.functional.normalize(table, dim=-1)
    return [
        Panel("learned position embeddings", table.numpy(), "dimension"),
        Panel("cosine similarity between positions", (unit @ unit.T).numpy(), "position"),
    ]


def _rotary_panels(rope: RotaryEmbedding, n: int) -> list[Panel]:
    cos, sin = rope(torch.arange(n)[None])  # (1, n, d_head): the angles twice over, a copy per half
    half = cos.shape[-1] // 2
    cos, sin = cos[0, :, :half], sin[0, :, :half]  # (n, d_head / 2): position p, frequency i
    # q.k after rotating q by p and k by q averages cos((p - q) theta_i): a function of p - q alone
    similarity = (cos @ cos.T + sin @ sin.T) / half
    return [
        Panel("rotary cos(position × θ_i)", cos.numpy(), "frequency i (slower to the right)"),
        Panel("rotary sin(position × θ_i)", sin.numpy(), "frequency i (slower to the right)"),
        Panel(
            "mean cos((p − q) θ_i): depends on p − q alone", similarity.numpy(), "position q", "position p"
        ),
    ]


def _t5_panels(bias: RelativePositionBias | None, config, n: int) -> list[Panel]:
    distance = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # (query, key): key - query
    panels = []
    for stack, is_bidirectional in (("encoder", True), ("decoder", False)):
        buckets = relative_position_bucket(
            distance,
            is_bidirectional=is_bidirectional,
            n_buckets=config.n_buckets,
            max_distance=config.max_distance,
        )
        title = f"{stack}: bucket of key − query distance"
        panels.append(Panel(title, buckets.float().numpy(), "key position", "query position"))
    if bias is not None:
        learned = bias(n, n)[0, 0].detach().float().cpu()  # (n, n): head 0's bias on the scores
        panels.append(
            Panel("encoder: learned bias of head 0", learned.numpy(), "key position", "query position")
        )
    return panels


def write_positions_png(panels: list[Panel], path, title: str) -> tuple[int, int]:
    """The panels side by side; returns the picture's (width, height) in pixels."""
    from lmforge.eval.plot import drawing

    size = (480 * len(panels) + 60, 560)
    with drawing(path, *size) as fig:
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), i + 1)
            if (panel.matrix < 0).any():  # signed: red and blue around a white 0
                # NOTE: the 99th percentile, not the maximum: one outlying dimension (trained tables have
                # some) would otherwise wash every other value out to white.
                peak = float(np.percentile(np.abs(panel.matrix), 99)) or 1.0
                cmap, low, high = "RdBu_r", -peak, peak
            else:
                cmap, low, high = "viridis", float(panel.matrix.min()), float(panel.matrix.max())
            image = ax.imshow(
                panel.matrix, cmap=cmap, vmin=low, vmax=high, aspect="auto", interpolation="nearest"
            )
            ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel)
            ax.set_title(panel.title, fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8, location="bottom")
        fig.suptitle(title)
    return size


# ---- a map of sentence embeddings -------------------------------------------------------------------------


def principal_components(vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The coordinates (N, 2) of N vectors on their first two principal components, and the share of the
    variance each explains (2,). Each component's sign puts its farthest point on the positive side."""
    if vectors.ndim != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise LmforgeError(f"a 2-D map needs at least 2 vectors of 2 dimensions, got {tuple(vectors.shape)}")
    centred = vectors.double() - vectors.double().mean(dim=0)  # PCA is the SVD of the centred data
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    coords = u[:, :2] * s[:2]  # (N, 2)
    farthest = coords[coords.abs().argmax(dim=0), [0, 1]]  # (2,): each component's farthest point
    coords = coords * torch.where(farthest < 0, -1.0, 1.0)  # the SVD's signs are arbitrary: fix them
    variance = s**2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else torch.zeros(2, dtype=torch.float64)
    return coords.float(), share.float()


def write_embedding_map_png(texts: list[str], vectors: torch.Tensor, path) -> tuple[int, int]:
    """The texts as points on the first two principal components of their embeddings, each labelled
    (truncated; only the first 100 texts are labelled); returns the picture's (width, height) in pixels."""
    from lmforge.eval.plot import drawing

    coords, share = principal_components(vectors)
    size = (1000, 760)
    with drawing(path, *size) as fig:
        ax = fig.add_subplot()
        ax.scatter(coords[:, 0], coords[:, 1], s=28, color="tab:blue", zorder=2)
        for i, text in enumerate(texts[:100]):
            label = text.strip() or "(empty line)"
            label = label if len(label) <= 40 else label[:39] + "…"
            ax.annotate(label, coords[i].tolist(), xytext=(5, 4), textcoords="offset points", fontsize=8)
        ax.set(
            title=f"{len(texts)} sentence embeddings ({vectors.shape[1]} dimensions) on a plane",
            xlabel=f"first principal component ({share[0]:.0%} of the variance)",
            ylabel=f"second principal component ({share[1]:.0%} of the variance)",
        )
        ax.margins(0.15)  # room for the labels of the outermost points
        ax.grid(alpha=0.3)
    return size
