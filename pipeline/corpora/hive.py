"""Hive-partitioned manifests: `source=laion/lang=en/part-0.parquet`, as Spark, DuckDB and pyarrow write them.

The `key=value` folders of a shard's path (relative to the manifest folder) become columns of its rows, as
pyarrow.dataset, Spark and DuckDB read them: values are URL-decoded (`%2F` -> `/`), `__HIVE_DEFAULT_PARTITION__` is a
null, and a key is typed int64 when every value it has in the whole listing is an integer, else string (one type per
key across all shards, so that every shard's rows have one schema).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pyarrow as pa

NULL = "__HIVE_DEFAULT_PARTITION__"
_INTEGER = re.compile(r"[+-]?\d{1,18}")

# A shard's partition values: ((key, value or None, "int64" | "string"), ...), in folder order. Plain tuples: they
# travel in JSON (the job's _manifest.json) and to Ray tasks.
Partitions = tuple[tuple[str, object, str], ...]


def raw_partitions(name: str) -> list[tuple[str, str | None]]:
    """The (key, decoded value) pairs of the `key=value` folders of a relative shard path; others are ignored."""
    pairs = []
    for segment in name.split("/")[:-1]:
        key, eq, value = segment.partition("=")
        if eq and key:
            pairs.append((unquote(key), None if value == NULL else unquote(value)))
    return pairs


def typed_partitions(names: list[str]) -> dict[str, Partitions]:
    """name -> its partitions, each key typed over every shard of the listing (see the module docstring)."""
    raw = {name: raw_partitions(name) for name in names}
    values: dict[str, list[str]] = {}
    for pairs in raw.values():
        for key, value in pairs:
            values.setdefault(key, []).extend([] if value is None else [value])
    types = {k: "int64" if vs and all(_INTEGER.fullmatch(v) for v in vs) else "string" for k, vs in values.items()}
    return {
        name: tuple((k, None if v is None else int(v) if types[k] == "int64" else v, types[k]) for k, v in pairs)
        for name, pairs in raw.items()
    }


def partition_fields(partitions: Partitions) -> list[pa.Field]:
    return [pa.field(key, pa.int64() if kind == "int64" else pa.string()) for key, _, kind in partitions]


def add_partition_columns(table: pa.Table, partitions: Partitions, columns: list[str] | None) -> pa.Table:
    """The table with a constant column per partition key (those in `columns`, or all of them)."""
    for (key, value, _), field in zip(partitions, partition_fields(partitions)):
        if columns is None or key in columns:
            table = table.append_column(field, pa.array([value] * table.num_rows, field.type))
    return table
