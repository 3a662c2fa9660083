"""Depth Anything 3 in plain torch: network (images, scenes), checkpoints, pre- and post-processing.

Tiny random checkpoints for tests are written by :mod:`.tiny` (not imported here, so that
serving code does not load it).
"""

from engines.families.depth_anything.da3.checkpoint import load_da3, save_da3
from engines.families.depth_anything.da3.config import PRESETS, Da3Config
from engines.families.depth_anything.da3.network import Da3Network, Da3Output, SceneGraph
from engines.families.depth_anything.da3.postprocess import apply_sky_rule, metric_depth_m
from engines.families.depth_anything.da3.preprocess import da3_input_size, preprocess_da3
from engines.families.depth_anything.da3.views import REF_VIEW_STRATEGIES

__all__ = [
    "PRESETS",
    "REF_VIEW_STRATEGIES",
    "Da3Config",
    "Da3Network",
    "Da3Output",
    "SceneGraph",
    "apply_sky_rule",
    "da3_input_size",
    "load_da3",
    "metric_depth_m",
    "preprocess_da3",
    "save_da3",
]
