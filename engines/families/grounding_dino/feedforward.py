"""GroundingDINO's encoder feed-forward on CPU, in blocks of rows that stay in cache.

Each of the six encoder layers runs a 256 → 2048 → 256 feed-forward over every position of the
four feature levels (~20,000 at 800×1200). As transformers writes it, ``fc1`` writes an 80 MB
intermediate (its bias broadcast first, then the product on top), ReLU reads and writes it
again, and ``fc2`` reads it: 426 ms a layer on 2 cores, of which the products need ~280. Taken
1024 rows at a time, the intermediate of a block (8 MB) is still in cache when ReLU (in place)
and ``fc2`` read it: 282 ms (``benchmarks/bench_grounding_dino_msda.py`` measures the forward
with both CPU paths). Every row is the same products with the same weights, so the result is the
same up to the matrix library's blocking (tested to 1e-6).

The layer's ``fc1`` becomes :class:`BlockedFeedForward` (holding ``fc1``, the activation and
``fc2``); its ``activation_fn`` and ``fc2`` become identities, so the layer's own code runs
unchanged around it. Off CPU, with gradients, in a trace (the ONNX exporter's) or for another
activation than ReLU the module computes ``fc2(activation(fc1(x)))`` as the layer did.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCK_ROWS = 1024
# Where the blocked path is the measured, faster one.
DTYPES = (torch.float32, torch.float64)
# Encoder layers whose feed-forward runs over every image position.
LAYERS = ("GroundingDinoDeformableLayer", "MMGroundingDinoDeformableLayer")


class BlockedFeedForward(nn.Module):
    """``fc2(activation(fc1(x)))``, on CPU over blocks of :data:`BLOCK_ROWS` rows.

    Args:
        fc1: The first linear layer.
        activation: The activation between them.
        fc2: The second linear layer.
    """

    def __init__(self, fc1: nn.Linear, activation: nn.Module, fc2: nn.Linear) -> None:
        super().__init__()
        self.fc1, self.activation, self.fc2 = fc1, activation, fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) → (..., out)."""
        blocked = (
            x.device.type == "cpu"
            and x.dtype in DTYPES
            and isinstance(self.activation, nn.ReLU)
            and self.fc1.bias is not None
            and self.fc2.bias is not None
            and not torch.is_grad_enabled()  # serving runs in inference mode
            and not torch.jit.is_tracing()
        )
        if not blocked:
            return self.fc2(self.activation(self.fc1(x)))
        rows = x.reshape(-1, x.shape[-1])
        out = rows.new_empty(rows.shape[0], self.fc2.out_features)
        w1, w2 = self.fc1.weight.t(), self.fc2.weight.t()
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            block = rows[start : start + BLOCK_ROWS]
            hidden = torch.addmm(self.fc1.bias, block, w1)
            hidden.relu_()
            torch.addmm(self.fc2.bias, hidden, w2, out=out[start : start + BLOCK_ROWS])
        return out.view(*x.shape[:-1], self.fc2.out_features)


def use_blocked_feedforward(model: nn.Module) -> int:
    """Give every encoder layer of ``model`` a :class:`BlockedFeedForward`.

    Returns:
        How many layers were changed (6 in the Swin-T configurations).
    """
    changed = 0
    for layer in model.modules():
        if type(layer).__name__ not in LAYERS:
            continue
        fc1, activation, fc2 = layer.fc1, layer.activation_fn, layer.fc2
        if not (isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear)):
            continue  # already blocked, or not the layer this was measured on
        assert isinstance(activation, nn.Module)
        layer.fc1 = BlockedFeedForward(fc1, activation, fc2)
        layer.activation_fn = nn.Identity()
        layer.fc2 = nn.Identity()
        changed += 1
    return changed
