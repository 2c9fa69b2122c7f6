"""What a run tells the outside world: record kinds, the worker-side metric history, the
RunBoard, the run summary and the reading of a fit, run.json, the relay and exporters.

Knows no training math; imports nothing of the driver, the CLI or the worker loop.
"""
