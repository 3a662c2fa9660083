"""Export stage: model families to ONNX artifacts with a manifest, checked against torch."""
