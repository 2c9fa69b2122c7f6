"""Parquet data: the index types (index), discovery and footers (source), shard arithmetic
(plan, pure), Parquet → tensors (reader) and synthetic datasets with a known answer (synthetic).
"""
