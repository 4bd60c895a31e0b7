"""What the tests add to fakesnow (a Snowflake emulated on DuckDB) where it lacks something the project uses on
Snowflake: each addition is the emulator's, never a change to the project's SQL."""

from __future__ import annotations

import atexit
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import fakesnow
import fakesnow.transforms.stage
import pyarrow as pa
import pytest
from sqlglot import exp

# `fakesnow.server()` imports its module `fakesnow.server`, which then hides the function: kept from before that
_start_server = fakesnow.server
# fakesnow makes its stages' folder when imported, and leaves it behind
atexit.register(shutil.rmtree, fakesnow.transforms.stage.LOCAL_BUCKET_PATH, ignore_errors=True)

# Snowflake's functions of arrays that fakesnow hands to DuckDB's list functions as they are
LIST_FUNCTIONS = (exp.Transform, exp.ArrayDistinct, exp.SortArray)


def over_json_list(expression: exp.Expr) -> exp.Expr:
    """Snowflake's TRANSFORM, ARRAY_DISTINCT and ARRAY_SORT over a semi-structured ARRAY: fakesnow keeps such an
    array as DuckDB JSON, which DuckDB's list functions cannot take; as a JSON[] list they can, and the result goes
    back to JSON, minified as fakesnow writes it (so that arrays compare as Snowflake compares them)."""
    if isinstance(expression, LIST_FUNCTIONS) and not expression.meta.get("over_json_list"):
        as_list = expression.copy()
        as_list.set("this", exp.cast(expression.this, exp.DataType.build("JSON[]", dialect="duckdb")))
        as_list.meta["over_json_list"] = True
        return exp.Anonymous(this="json", expressions=[exp.cast(as_list, "JSON")])  # minified, as fakesnow keeps JSON
    return expression


def element_as_text(expression: exp.Expr) -> exp.Expr:
    """`array[index]::varchar` of a semi-structured array: Snowflake gives a string element without its JSON quotes;
    fakesnow's cast of the JSON element keeps them, its text (`->> '$'`) does not."""
    if (
        isinstance(expression, exp.Cast)
        and isinstance(expression.this, exp.Bracket)
        and expression.to.is_type("text", "varchar")
    ):
        root = exp.JSONPath(expressions=[exp.JSONPathRoot()])
        expression.set("this", exp.JSONExtractScalar(this=expression.this.copy(), expression=root))
    return expression


def qualified_temporary_table(expression: exp.Expr) -> exp.Expr:
    """Snowflake's temporary table named with its database and schema (dbt-snowflake's `__dbt_tmp` relation of an
    incremental build): DuckDB keeps temporary tables in a catalog of their own, where that name cannot point, so
    the emulator makes it an ordinary table (replaced by the next build, as dbt creates it `or replace`)."""
    if isinstance(expression, exp.Create) and expression.this.args.get("catalog") is not None:
        for temporary in expression.find_all(exp.TemporaryProperty):
            temporary.pop()
    return expression


def extend_fakesnow(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Snowflake does and fakesnow lacks: list functions over semi-structured arrays, their elements as text,
    qualified temporary tables, and the cursor's `fetch_arrow_all` (the real one's, from the rows as fakesnow
    fetches them); for the connector in process and fakesnow's server alike."""
    from fakesnow.cursor import FakeSnowflakeCursor

    transform = FakeSnowflakeCursor._transform

    def with_additions(cursor, expression, params):
        expression = expression.transform(qualified_temporary_table, copy=False)
        return (
            transform(cursor, expression, params)
            .transform(over_json_list, copy=False)
            .transform(element_as_text, copy=False)
        )

    monkeypatch.setattr(FakeSnowflakeCursor, "_transform", with_additions)
    monkeypatch.setattr(
        FakeSnowflakeCursor,
        "fetch_arrow_all",
        lambda cursor: pa.Table.from_pandas(cursor.fetch_pandas_all(), preserve_index=False),
        raising=False,
    )


@contextmanager
def fakesnow_server() -> Iterator[dict]:
    """fakesnow's server on loopback (its connection arguments), with an instance of its own: the module keeps one
    for every server of the process, so each starts from an empty one."""
    import fakesnow.server as server_module
    from fakesnow.instance import FakeSnow

    server_module.shared_fs = FakeSnow()
    with _start_server() as server:
        yield server
