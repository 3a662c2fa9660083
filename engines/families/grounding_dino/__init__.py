"""GroundingDINO and MM-GroundingDINO: open-vocabulary detection from text prompts.

The request's prompts are joined into one caption (:mod:`.text`), each image is resized and
normalised as the reference processor does (:mod:`.images`), one graph ``model`` maps pixels and
caption to per-query text logits and boxes (:mod:`.pipeline`), and post-processing names every
kept box after a whole prompt (:mod:`.detections`). :mod:`.family` loads the IDEA-Research and
OpenMMLab checkpoints through transformers or from an ONNX export; :mod:`.export` (with the
tracing stand-ins of :mod:`.patches`) and :mod:`.tiny` serve the export stage and the tests only.
"""
