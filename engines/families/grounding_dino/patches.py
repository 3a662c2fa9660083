"""GroundingDINO's exporter patches: stand-ins for code the legacy exporter cannot trace.

Each patch computes exactly what the code it replaces computes (tests compare them on random
inputs), except :func:`deformable_attention_by_level`, which sums the same terms in another
order (said there); it only uses operators the legacy TorchScript exporter and ONNX Runtime's
CPU provider support. Patches are applied with :func:`export_patches` for the duration of one
traced call, never while serving: :func:`patched` wraps a core graph function so that the
exporter's trace of it runs inside the patches and everything else (the parity reference, the
torch fallback) runs the model's own code. Serving code never imports this module.

GroundingDINO: ``generate_masks_with_special_tokens_and_transfer_map`` (the text self-attention
mask and position ids between ``[CLS]``/``[SEP]``/``.``/``?`` delimiters) uses ``torch.isin``,
``torch.cummax`` / ``torch.cummin`` (none of which the legacy exporter knows) and a boolean
``torch.eye`` (exported as a boolean ``EyeLike``, which ONNX Runtime does not implement). The
stand-in computes the same integers with comparisons, ``where`` and min/max reductions over an
(N, N) index grid (N = text tokens, at most 256).

GroundingDINO's Swin backbone (transformers' ``modeling_swin``) decides in Python, from the
traced input's size, whether to pad to a multiple of the patch size, of 2 (patch merging) or of
the window size, and whether to crop the padding off again; a trace keeps only the branch the
example took, so another size would be padded wrongly or not cropped. The stand-ins always pad
by ``(m - size % m) % m`` (zero when already a multiple) and always crop (a no-op without
padding): the same numbers for every size, with the sizes kept symbolic.

The deformable attention reads the feature maps' sizes from ``spatial_shapes``, a tensor the
model builds with ``torch.as_tensor`` from Python sizes, which a trace records as a constant;
the wrapper rebuilds it from the (traced) ``spatial_shapes_list`` so it follows the input.
Two more stand-ins exist for speed, not exportability: the sampling locations computed with
row-wide broadcasts and, while tracing, the weighted sum of the samples taken level by level
(ONNX Runtime's kernels for the model's shapes of those were the profile's worst; see each).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

_GROUNDING_DINO_MODULES = (
    "transformers.models.grounding_dino.modeling_grounding_dino",
    "transformers.models.mm_grounding_dino.modeling_mm_grounding_dino",
)


def special_token_masks(
    input_ids: torch.Tensor, special_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """GroundingDINO's text self-attention mask and position ids, in exportable operators.

    Same contract and results as transformers'
    ``generate_masks_with_special_tokens_and_transfer_map``: tokens attend to the tokens of
    their own delimiter-closed phrase (and themselves); positions restart after each delimiter.

    Args:
        input_ids: (B, N) token ids.
        special_tokens: (S,) delimiter ids.

    Returns:
        ``attention_mask`` (B, N, N) bool and ``position_ids`` (B, N) int64.
    """
    batch_size, seq_len = input_ids.shape
    device = input_ids.device
    # isin(input_ids, special_tokens) as a broadcast comparison.
    special = (input_ids.unsqueeze(-1) == special_tokens.to(input_ids.dtype)).any(-1)  # (B, N)
    index = torch.arange(seq_len, device=device)
    row, col = index.view(-1, 1), index.view(1, -1)  # row i (the token), col j (a candidate)
    special_j = special.unsqueeze(1)  # (B, 1, N)
    # prev_special[i] = the last delimiter strictly before i, or -1 (cummax of
    # where(special, index, -1), shifted right by one).
    none_before = torch.full((), -1, dtype=torch.long, device=device)
    prev_special = torch.where(special_j & (col < row), col, none_before).amax(-1)
    # next_special[i] = the first delimiter at or after i, or seq_len (reversed cummin).
    none_after = torch.full((), seq_len, dtype=torch.long, device=device)
    next_special = torch.where(special_j & (col >= row), col, none_after).amin(-1)

    valid_block = (next_special != 0) & (next_special != seq_len - 1) & (next_special != seq_len)
    same_block = next_special.unsqueeze(2) == next_special.unsqueeze(1)
    attention_mask = same_block & valid_block.unsqueeze(1)
    identity = (row == col).unsqueeze(0).expand(batch_size, -1, -1)  # eye without EyeLike(bool)
    attention_mask = identity | attention_mask

    indices = index.unsqueeze(0).expand(batch_size, -1)
    position_ids = indices - prev_special - 1
    position_ids = torch.where(valid_block, position_ids, torch.zeros_like(position_ids))
    position_ids = torch.clamp(position_ids, min=0).to(torch.long)
    return attention_mask, position_ids


def _patch_embeddings_maybe_pad(
    self: Any, pixel_values: torch.Tensor, height: Any, width: Any
) -> torch.Tensor:
    """``SwinPatchEmbeddings.maybe_pad`` without the branch: pad to a multiple of the patch."""
    patch_h, patch_w = self.patch_size
    pad_w = (patch_w - width % patch_w) % patch_w
    pad_h = (patch_h - height % patch_h) % patch_h
    return torch.nn.functional.pad(pixel_values, (0, pad_w, 0, pad_h))


def _patch_merging_maybe_pad(
    self: Any, input_feature: torch.Tensor, height: Any, width: Any
) -> torch.Tensor:
    """``SwinPatchMerging.maybe_pad`` without the branch: pad odd sizes by one."""
    return torch.nn.functional.pad(input_feature, (0, 0, 0, width % 2, 0, height % 2))


def _swin_layer_forward(
    self: Any,
    hidden_states: torch.Tensor,
    input_dimensions: tuple[Any, Any],
    always_partition: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """``SwinLayer.forward`` (transformers 5) cropping the window padding unconditionally."""
    from transformers.models.swin.modeling_swin import window_partition, window_reverse

    if not always_partition:
        self.set_shift_and_window_size(input_dimensions)
    height, width = input_dimensions
    batch_size, _, channels = hidden_states.size()
    shortcut = hidden_states

    hidden_states = self.layernorm_before(hidden_states)
    hidden_states = hidden_states.view(batch_size, height, width, channels)
    hidden_states, _ = self.maybe_pad(hidden_states, height, width)
    _, height_pad, width_pad, _ = hidden_states.shape

    windows = window_partition(self.cyclic_shift(hidden_states), self.window_size)
    windows = windows.view(-1, self.window_size * self.window_size, channels)
    attn_mask = self.get_attn_mask(
        height_pad, width_pad, dtype=hidden_states.dtype, device=windows.device
    )
    attention_output, attn_weights = self.attention(windows, attn_mask, **kwargs)
    attention_output = self.dropout(attention_output)

    attention_windows = attention_output.view(-1, self.window_size, self.window_size, channels)
    attention_windows = self.cyclic_shift(
        window_reverse(attention_windows, self.window_size, height_pad, width_pad), reverse=True
    )
    # The original crops only `if pad_values[3] > 0 or pad_values[5] > 0`.
    attention_windows = attention_windows[:, :height, :width, :].contiguous()

    attention_windows = attention_windows.view(batch_size, height * width, channels)
    hidden_states = shortcut + self.drop_path(attention_windows)

    residual = hidden_states
    hidden_states = self.layernorm_after(hidden_states)
    hidden_states = self.mlp(hidden_states)
    hidden_states = self.dropout(hidden_states) + residual
    return hidden_states, attn_weights


def _deformable_attention_module_forward(
    self: Any,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    position_embeddings: torch.Tensor | None = None,
    reference_points: torch.Tensor | None = None,
    spatial_shapes: torch.Tensor | None = None,
    spatial_shapes_list: list[tuple[Any, Any]] | None = None,
    level_start_index: torch.Tensor | None = None,
    output_attentions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``GroundingDinoMultiscaleDeformableAttention.forward`` with wide broadcasts.

    The model adds the reference points and divides the offsets by the level sizes with
    broadcasts whose innermost run is 2 values ([1, 1, 1, levels, 1, 2] against [B, queries,
    heads, levels, points, 2]); ONNX Runtime runs such a broadcast element pair by element
    pair: 20-30 ms per encoder layer for each of the two, ~300 ms of a 4.3 s forward. Here the
    normaliser and the reference points are laid out per (level, point, coordinate) first, so
    the broadcasts run over whole rows of levels·points·2 values. Same divisions and additions
    of the same numbers: bit-identical (the eager test compares them).
    """
    if position_embeddings is not None:
        hidden_states = hidden_states + position_embeddings
    assert encoder_hidden_states is not None and reference_points is not None
    assert spatial_shapes is not None
    batch, queries, _ = hidden_states.shape
    _, tokens, _ = encoder_hidden_states.shape
    heads, levels, points = self.n_heads, self.n_levels, self.n_points
    value = self.value_proj(encoder_hidden_states)
    if attention_mask is not None:
        value = value.masked_fill(~attention_mask[..., None], float(0))
    value = value.view(batch, tokens, heads, self.d_model // heads)
    sampling_offsets = self.sampling_offsets(hidden_states).view(
        batch, queries, heads, levels, points, 2
    )
    attention_weights = self.attention_weights(hidden_states).view(
        batch, queries, heads, levels * points
    )
    attention_weights = torch.nn.functional.softmax(attention_weights, -1).view(
        batch, queries, heads, levels, points
    )
    if reference_points.shape[-1] == 2:
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        normalizer = normalizer[:, None, :].expand(levels, points, 2).reshape(1, 1, 1, -1)
        reference = reference_points[:, :, :, None, :].expand(batch, queries, levels, points, 2)
        offsets = sampling_offsets.view(batch, queries, heads, levels * points * 2)
        sampling_locations = (
            reference.reshape(batch, queries, 1, levels * points * 2) + offsets / normalizer
        ).view(batch, queries, heads, levels, points, 2)
    elif reference_points.shape[-1] == 4:
        sampling_locations = (
            reference_points[:, :, None, :, None, :2]
            + sampling_offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5
        )
    else:
        raise ValueError(f"reference_points must end in 2 or 4, got {reference_points.shape}")
    output = self.attn(
        value,
        spatial_shapes,
        spatial_shapes_list,
        level_start_index,
        sampling_locations,
        attention_weights,
        self.im2col_step,
    )
    return self.output_proj(output), attention_weights


def _traced_spatial_shapes(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a deformable attention's ``forward`` to rebuild ``spatial_shapes`` from the list."""

    @functools.wraps(forward)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        shapes = kwargs.get("spatial_shapes_list")
        if shapes is not None and kwargs.get("spatial_shapes") is not None:
            kwargs["spatial_shapes"] = torch.stack(
                [torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in shapes]
            ).to(device=kwargs["spatial_shapes"].device, dtype=torch.long)
        return forward(self, *args, **kwargs)

    return run


def deformable_attention_by_level(
    value: torch.Tensor,
    value_spatial_shapes_list: list[tuple[Any, Any]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention with the weighted sum taken level by level.

    transformers' ``MultiScaleDeformableAttention`` stacks every level's bilinear samples into
    one [B·heads, dim, queries, levels·points] tensor, then weights and sums it. Exported, the
    stack is a ``Concat`` along an inner axis that ONNX Runtime copies in 16-byte pieces: ~290
    MB per encoder layer at 800×1066, 100-320 ms each on a 2-core CPU, 12 % of the whole
    forward. Here each level's samples are weighted and summed as they come and the levels
    added: the same sum in another order (float rounding differs, ~1e-7 relative).

    Args:
        value: [B, tokens, heads, dim], the levels' tokens one after the other.
        value_spatial_shapes_list: (height, width) of each level.
        sampling_locations: [B, queries, heads, levels, points, 2] in [0, 1].
        attention_weights: [B, queries, heads, levels, points].

    Returns:
        [B, queries, heads·dim].
    """
    batch, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([h * w for h, w in value_spatial_shapes_list], dim=1)
    grids = 2 * sampling_locations - 1
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels, points)
    output = None
    for level, (height, width) in enumerate(value_spatial_shapes_list):
        value_l = (
            values[level].flatten(2).transpose(1, 2).reshape(batch * heads, dim, height, width)
        )
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled = torch.nn.functional.grid_sample(
            value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        term = (sampled * weights[:, :, :, level]).sum(-1)  # [B·heads, dim, queries]
        output = term if output is None else output + term
    assert output is not None
    return output.view(batch, heads * dim, queries).transpose(1, 2).contiguous()


def _deformable_attention_forward(forward: Callable[..., Any]) -> Callable[..., Any]:
    """Trace ``MultiScaleDeformableAttention.forward`` as :func:`deformable_attention_by_level`.

    Outside a trace the model's own code runs (eager results stay bit-identical).
    """

    @functools.wraps(forward)
    def run(
        self: Any,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[Any, Any]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        if not torch.jit.is_tracing():
            return forward(
                self,
                value,
                value_spatial_shapes,
                value_spatial_shapes_list,
                level_start_index,
                sampling_locations,
                attention_weights,
                im2col_step,
            )
        return deformable_attention_by_level(
            value, value_spatial_shapes_list, sampling_locations, attention_weights
        )

    return run


def _replacements() -> dict[str, dict[str, Any]]:
    """Per module, attribute (``Class.method`` for methods) → replacement."""
    replacements: dict[str, dict[str, Any]] = {
        "transformers.models.swin.modeling_swin": {
            "SwinPatchEmbeddings.maybe_pad": _patch_embeddings_maybe_pad,
            "SwinPatchMerging.maybe_pad": _patch_merging_maybe_pad,
            "SwinLayer.forward": _swin_layer_forward,
        }
    }
    for module_name, prefix in zip(
        _GROUNDING_DINO_MODULES, ("GroundingDino", "MMGroundingDino"), strict=True
    ):
        entry: dict[str, Any] = {
            "generate_masks_with_special_tokens_and_transfer_map": special_token_masks
        }
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        attention = getattr(module, f"{prefix}MultiscaleDeformableAttention", None)
        if attention is not None:
            entry[f"{prefix}MultiscaleDeformableAttention.forward"] = _traced_spatial_shapes(
                _deformable_attention_module_forward
            )
        kernel = getattr(module, "MultiScaleDeformableAttention", None)
        if kernel is not None and "MultiScaleDeformableAttention" in vars(module):
            entry["MultiScaleDeformableAttention.forward"] = _deformable_attention_forward(
                kernel.forward
            )
        replacements[module_name] = entry
    return replacements


@contextlib.contextmanager
def export_patches(
    replacements: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[None]:
    """Swap in the exportable stand-ins for the duration of the block, then restore.

    Modules that cannot be imported (an older transformers without MM-GroundingDINO) and
    attributes a module does not have are skipped.
    """
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module_name, attributes in (replacements or _replacements()).items():
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for path, replacement in attributes.items():
                *owners, attribute = path.split(".")
                target: Any = module
                for owner in owners:
                    target = getattr(target, owner, None)
                if target is None or attribute not in vars(target):
                    continue
                saved.append((target, attribute, vars(target)[attribute]))
                setattr(target, attribute, replacement)
        yield
    finally:
        for target, attribute, original in reversed(saved):
            setattr(target, attribute, original)


def patched(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run inside :func:`export_patches` (for a graph function the exporter traces)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with export_patches():
            return fn(*args, **kwargs)

    run.__wrapped_for_export__ = True  # type: ignore[attr-defined]
    return run
