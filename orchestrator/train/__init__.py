"""Everything that runs inside a Ray Train worker: the loop, where a group starts from (resume:
the checkpoint and the fitted preprocessing), models and their input encoder, losses and
metrics, optimizers, early stopping, the checkpoint policy and the checkpoint format.

Nothing here imports the driver, the CLI or the results code (tests/unit/test_layout.py).
"""
