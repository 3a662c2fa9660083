"""DINOv3: image embeddings and patch features from the ViT and ConvNeXt checkpoints."""
