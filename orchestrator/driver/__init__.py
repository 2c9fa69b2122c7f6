"""The driver: checks before any worker starts, Ray (embedded or joined), Ray Train's trainer,
the run folder's lifecycle, cluster introspection and the Jobs API.
"""
