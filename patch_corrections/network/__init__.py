"""The network and where it runs (PyTorch, imported by the modules below, not here).

- ``unet``: the residual 3D U-Net MemBrain-seg trains, and its presets;
- ``checkpoints``: ours and MemBrain-seg's, read, written, and ``load_network``;
- ``devices``: the device a user names, its precision, CPU copies of state;
- ``threads``: how many CPU threads PyTorch computes with;
- ``distributed``: torchrun's ranks and the few collective operations training needs.
"""
