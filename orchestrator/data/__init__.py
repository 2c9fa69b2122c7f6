"""Parquet data: discovery and footers (source), shard arithmetic (plan), reading (reader)."""
