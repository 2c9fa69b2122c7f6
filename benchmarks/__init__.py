"""Side-by-side benchmarks of orchestrator against the limit and its peers (see run.py)."""
