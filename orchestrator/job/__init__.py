"""The job file: typed, frozen dataclasses, their defaults, `--set` overrides and validation.

Imports neither torch nor Ray (tests/unit/test_layout.py holds it to that), so
`orchestrator validate` is instant.
"""
