"""The Python package's `query` takes the same Delta SQL as `retrylake sql`: time travel per
table, DESCRIBE HISTORY and DETAIL, tables by path; errors name the table and its versions."""

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"


@pytest.fixture
def q(tmp_path):
    q = retrylake.Queue(str(tmp_path / "data"))
    q.enqueue([{"sample_id": s, "payload": "p"} for s in ("a", "b", "c")], now=START)

    def fail_c(record):
        if record.id == "c":
            raise retrylake.Transient("later")
        return "ok"

    q.run(fail_c, now=START)
    return q


def rows(table):
    return table.to_pylist()


def test_each_table_reference_travels_on_its_own(q):
    # retry_queue at version 1 (the enqueue) joined with final_results now.
    got = q.query(
        "SELECT r.sample_id, f.sample_id IS NOT NULL AS done "
        "FROM retry_queue VERSION AS OF 1 r LEFT JOIN final_results f USING (sample_id) "
        "ORDER BY 1"
    )
    assert rows(got) == [
        {"sample_id": "a", "done": True},
        {"sample_id": "b", "done": True},
        {"sample_id": "c", "done": False},
    ]
    # The table's own name still qualifies its columns when the clause has no alias.
    got = q.query("SELECT retry_queue.sample_id FROM retry_queue VERSION AS OF 1 ORDER BY 1")
    assert [r["sample_id"] for r in rows(got)] == ["a", "b", "c"]


def test_describe_history_is_a_table_with_deltas_columns(q):
    history = q.query("DESCRIBE HISTORY retry_queue")
    for column in ("version", "timestamp", "operation", "operationParameters", "job", "round", "worker", "counts"):
        assert column in history.schema.names
    versions = history.column("version").to_pylist()
    assert versions == sorted(versions, reverse=True) and versions[-1] == 0
    assert q.query("DESCRIBE HISTORY retry_queue LIMIT 2").column("version").to_pylist() == versions[:2]
    rounds = q.query(
        "SELECT round, counts['succeeded'] AS ok, counts['retried'] AS retried "
        "FROM (DESCRIBE HISTORY retry_queue) WHERE job = 'round'"
    )
    assert rows(rounds) == [{"round": 1, "ok": 2, "retried": 1}]


def test_describe_detail_and_tables_by_path(q, tmp_path):
    path = tmp_path / "data" / "final_results"
    detail = rows(q.query(f"DESCRIBE DETAIL delta.`{path}`"))[0]
    assert detail["format"] == "delta" and detail["name"] == "final_results"
    assert detail["numFiles"] >= 1 and detail["sizeInBytes"] > 0
    assert detail["earliestVersion"] == 0 and detail["latestVersion"] == detail["version"]
    got = q.query(f"SELECT count(*) AS n FROM delta.`{path}` VERSION AS OF 0")
    assert rows(got) == [{"n": 0}]


def test_missing_versions_are_errors_naming_the_table_and_its_range(q, tmp_path):
    with pytest.raises(retrylake.RetrylakeError, match=r"retry_queue: no version 99: it has versions 0 to \d+"):
        q.query("SELECT * FROM retry_queue VERSION AS OF 99")
    # version= applies to every table the SQL names, and refuses one without it...
    with pytest.raises(retrylake.RetrylakeError, match=r"final_results: no version 3"):
        q.query("SELECT count(*) FROM final_results", version=3)
    # ...but not a table the SQL does not name.
    assert rows(q.query("SELECT count(*) AS n FROM retry_queue", version=3)) == [{"n": 1}]
    with pytest.raises(retrylake.RetrylakeError, match="unknown table nope"):
        q.query("DESCRIBE HISTORY nope")
    missing = tmp_path / "nowhere"
    with pytest.raises(retrylake.RetrylakeError, match="no Delta table"):
        q.query(f"SELECT * FROM delta.`{missing}`")
    assert not missing.exists()
    with pytest.raises(retrylake.RetrylakeError, match="read-only"):
        q.query(f"INSERT INTO delta.`{tmp_path / 'data' / 'final_results'}` SELECT * FROM final_results")


def test_an_enormous_in_list_is_a_result_not_a_crash(q):
    # Planning recurses per term: 20,000 ids overflowed a default 2 MB thread stack.
    ids = ",\n".join(f"'S-{i}'" for i in range(20000))
    got = q.query(f"SELECT count(*) AS n FROM final_results WHERE sample_id IN ({ids}, 'a')")
    assert rows(got) == [{"n": 1}]
