"""Schema checks shared by every table: required columns, their types, nulls, ids, and reserved column names."""

from __future__ import annotations

from collections.abc import Collection

import pyarrow as pa
import pyarrow.compute as pc

# Ids are keys in every output and object-store key sized: at most 1024 bytes of UTF-8, as an S3 key.
MAX_ID_BYTES = 1024


class SchemaError(ValueError):
    """A table does not match its schema. The message names the source (file), the column and the problem."""

    def __init__(self, source: str, column: str | None, problem: str) -> None:
        self.source, self.column, self.problem = source, column, problem
        where = f"column '{column}'" if column else "table"
        super().__init__(f"{source}: {where}: {problem}")

    def __reduce__(self):  # raised in Ray tasks: pickled with its own three arguments
        return type(self), (self.source, self.column, self.problem)


def is_string_like(t: pa.DataType) -> bool:
    """string, large_string, string_view, or a dictionary of one of them (pandas' categoricals): the same values to
    whoever reads them as Python or casts them to string."""
    if pa.types.is_dictionary(t):
        return is_string_like(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _same_kind(actual: pa.DataType, expected: pa.DataType) -> bool:
    """The string-like types (is_string_like), and the float and integer widths, are interchangeable on input."""
    if is_string_like(expected):
        return is_string_like(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    return actual.equals(expected)


def check_columns(table: pa.Table | pa.Schema, schema: pa.Schema, source: str) -> None:
    """Every field of `schema` is present with a compatible type; non-nullable fields hold no nulls.

    Columns the schema does not name are allowed (they are carried through).
    """
    actual = table if isinstance(table, pa.Schema) else table.schema
    for field in schema:
        if field.name not in actual.names:
            raise SchemaError(source, field.name, f"missing (expected {field.type})")
        got = actual.field(field.name).type
        if not _same_kind(got, field.type):
            raise SchemaError(source, field.name, f"has type {got}, expected {field.type}")
        if isinstance(table, pa.Table) and not field.nullable and table.column(field.name).null_count:
            raise SchemaError(source, field.name, f"{table.column(field.name).null_count} null value(s)")


def check_unique_ids(table: pa.Table, source: str, column: str = "id") -> None:
    counts = pc.value_counts(table.column(column))
    dupes = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dupes):
        sample = ", ".join(repr(v) for v in dupes.field("values").to_pylist()[:5])
        raise SchemaError(source, column, f"{len(dupes)} duplicate id(s), e.g. {sample}")


def check_ids(table: pa.Table, source: str, column: str = "id") -> None:
    """Ids are non-empty (not blank), at most MAX_ID_BYTES of UTF-8, and unique. Nulls are check_columns' job."""
    ids = table.column(column)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(ids)), 0), False)
    if pc.any(blank).as_py():
        rows = pc.indices_nonzero(blank).to_pylist()[:3]
        raise SchemaError(source, column, f"{pc.sum(blank).as_py()} empty or blank id(s), e.g. at rows {rows}")
    long = pc.fill_null(pc.greater(pc.binary_length(ids), MAX_ID_BYTES), False)
    if pc.any(long).as_py():
        sample = ids.filter(long)[0].as_py()
        raise SchemaError(
            source,
            column,
            f"{pc.sum(long).as_py()} id(s) longer than {MAX_ID_BYTES} bytes, e.g. {sample[:40]!r}... "
            f"({len(sample.encode())} bytes)",
        )
    check_unique_ids(table, source, column)


def check_reserved(schema: pa.Schema, reserved: Collection[str], source: str, why: str) -> None:
    """Refuse columns with reserved names (`why` says what would go wrong), before any row is read.

    Refused rather than renamed under a prefix: a renamed column would break whoever reads the data by its names.
    """
    clash = [name for name in schema.names if name in reserved]
    if clash:
        raise SchemaError(source, clash[0], f"column(s) {clash} {why}; rename them (reserved: {sorted(reserved)})")
