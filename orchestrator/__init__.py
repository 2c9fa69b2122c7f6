"""orchestrator: train PyTorch models on Parquet data across Ray Train workers.

Importing the package is cheap: it pulls in neither torch nor ray. The driver
entry point is `orchestrator.driver.launch.run`; the command line is `orchestrator.cli`.
"""

__version__ = "0.1.0"
