"""A network over whole tomograms, and what is read off its output.

- ``sliding_window``: windows, Gaussian blending, test-time augmentation (NumPy, or
  torch tensors where the network's logits are);
- ``predictor``: a checkpoint's network on its device, turned into the predict function
  of the sliding window; ``rescale``: windows at another pixel size;
- ``intensity``: the normalisation training and segmentation share;
- ``components``: connected membranes;
- ``box_scores``: how much a correction would teach in each box; ``box_choice``: the
  best boxes that do not overlap (``suggest``).

PyTorch is imported only by ``predictor`` and ``rescale``.
"""
