"""Depth Anything 3 in plain torch: network, checkpoints, pre- and post-processing."""

from engines.families.da3.checkpoint import load_da3, save_da3
from engines.families.da3.config import PRESETS, Da3Config
from engines.families.da3.network import Da3Network, Da3Output
from engines.families.da3.postprocess import apply_sky_rule, metric_depth_m
from engines.families.da3.preprocess import da3_input_size, preprocess_da3
from engines.families.da3.tiny import write_tiny_da3

__all__ = [
    "PRESETS",
    "Da3Config",
    "Da3Network",
    "Da3Output",
    "apply_sky_rule",
    "da3_input_size",
    "load_da3",
    "metric_depth_m",
    "preprocess_da3",
    "save_da3",
    "write_tiny_da3",
]
