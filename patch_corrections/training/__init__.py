"""Fine-tuning the network (PyTorch, imported by the modules below, not here).

- ``loop``: the training loop, readable top to bottom; ``config``: what decides a run,
  the learning-rate schedule and the optimiser; ``validation``: whole-patch predictions
  and validation scores;
- ``data``: training patches in memory and the crops of a step; ``datasets``: training
  folders read, normalised and split;
- ``augment``, ``losses`` (ignore voxels left out entirely);
- ``relabel_rounds``: the staged SMILE-style run; ``runs``: what a run leaves beside its
  checkpoints (metrics, report of rounds) and the rules of resuming.
"""
