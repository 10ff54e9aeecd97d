"""A network over whole tomograms, and what is read off its output.

- ``sliding_window``: one pass of windows, Gaussian blending (NumPy, or torch tensors
  where the network's logits are); ``probabilities``: the sigmoid of one pass, or of the
  8 flipped passes of test-time augmentation, with their variance; ``finishing``: what
  ``segment`` writes, made where the probabilities are and written behind the loop;
- ``predictor``: a checkpoint's network on its device, turned into the predict function
  of the sliding window; ``rescale``: windows at another pixel size;
- ``intensity``: the normalisation training and segmentation share;
- ``components``: connected membranes;
- ``box_scores``: how much a correction would teach in each box; ``box_choice``: the
  best boxes that do not overlap (``suggest``).

PyTorch is imported at the top only by ``predictor`` and ``rescale`` (``finishing`` and
``probabilities`` import it for the torch tensors they are given).
"""
