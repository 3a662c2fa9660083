"""SAM3: text-prompted instance segmentation (``facebook/sam3`` through transformers).

Each image is encoded once and every prompt of a request is decoded against that encoding:
the core has three graphs, ``vision`` (pixels → FPN levels), ``text`` (token ids → projected
text features) and ``decoder`` (image levels + text features → masks, boxes, scores), so extra
prompts cost only the decoder. Instances of all prompts are merged and sorted by score; masks
are returned dense, as COCO RLE, as polygons or as PNG.
"""
