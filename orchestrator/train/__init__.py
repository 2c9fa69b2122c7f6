"""Everything that runs inside a Ray Train worker: the loop, models, losses, optimizers,
early stopping, the checkpoint policy and the checkpoint format.

Nothing here imports the driver, the CLI or the results code (tests/unit/test_layout.py).
"""
