"""A cluster batch's projection: one ``executemany`` per SQL, every partition's order kept."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from persistence.partition_sql import merge_statements

SQLS = [f"sql {k}" for k in range(8)]  # the projection's one fixed order


@st.composite
def partitions(draw: st.DrawFn) -> list[list[tuple[str, list[tuple[int, int]]]]]:
    out = []
    for p in range(draw(st.integers(1, 6))):
        chosen = draw(st.lists(st.sampled_from(SQLS), unique=True, max_size=len(SQLS)))
        ordered = sorted(chosen, key=SQLS.index)
        out.append([(sql, [(p, n) for n in range(draw(st.integers(0, 3)))]) for sql in ordered])
    return out


@given(partitions())
def test_each_sql_once_with_every_row_and_every_partitions_order(
    per_partition: list[list[tuple[str, list[tuple[int, int]]]]],
) -> None:
    merged = merge_statements(per_partition)
    order = [sql for sql, _ in merged]
    assert len(order) == len(set(order))
    assert set(order) == {sql for statements in per_partition for sql, _ in statements}
    for statements in per_partition:  # each partition's statements run in its own order
        positions = [order.index(sql) for sql, _ in statements]
        assert positions == sorted(positions)
    for sql, rows in merged:  # every row, partitions in batch order
        assert list(rows) == [r for s in per_partition for q, rs in s if q == sql for r in rs]


def test_one_partition_is_passed_through() -> None:
    statements = [("b", [(1,)]), ("a", [(2,)])]
    assert merge_statements([statements]) == statements
