"""Depth Anything: monocular depth per image from Depth Anything 3 and Depth Anything V2.

Depth Anything 3 checkpoints (any-view: relative depth, confidence and camera intrinsics; mono:
relative depth; metric: metres from the focal length) run on the project's own port of the
network (:mod:`.da3`); Depth Anything V2 checkpoints (relative inverse depth) run through
transformers (:mod:`.v2`). The checkpoint's ``config.json`` tells the two apart; one graph
``model`` maps pixel values to the depth map and whatever else the network predicts.
"""
