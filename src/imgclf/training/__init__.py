"""Training: the pipeline as named steps (``pipeline``), the loop and what it uses (state, schedule,
device, augmentation, optimizer, determinism), checkpoints, interrupts, resume checks and the run folder.

Nothing outside ``training`` and ``cli`` imports this package: the predict path never loads it.

Usage::

    from imgclf.training.pipeline import train
    result = train("dataset", "model.imgclf")
"""
