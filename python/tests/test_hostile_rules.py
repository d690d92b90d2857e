"""A hostile review of rules per error from Python (commit 26aef93): ``error_class`` on
``Transient``/``Permanent`` and ``_Caller._failure`` in retrylake/__init__.py, ``Answer``
and ``rules_json`` in python/src/lib.rs, and the tables' upgrade when Python opens a queue
an older retrylake made.

Each test says what it attacks and what is expected. ``FINDING:`` (now ``FAILED BEFORE THE FIX:``) marks a test the code as
reviewed is believed to fail (its cause by file:line); ``HOLDS:`` one it is believed to
pass, kept as a guard.
"""

import datetime as dt
import json

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"
TABLES = ("retry_queue", "final_results", "dead_letter_queue", "attempts")
FIRST_COMMIT = "0" * 20 + ".json"


class RateLimited(Exception):
    pass


def queue_with(tmp_path, ids):
    q = retrylake.Queue(str(tmp_path / "data"))
    q.enqueue([{"sample_id": i, "payload": "p"} for i in ids], now=START)
    return q


def journal(q):
    rows = q.query(
        "SELECT sample_id, disposition, rule, retry_count FROM attempts ORDER BY sample_id"
    ).to_pylist()
    return {r["sample_id"]: (r["disposition"], r["rule"], r["retry_count"]) for r in rows}


def placed(q):
    """Each record's table (and error or response), by id."""
    where = {}
    for table, column in (
        ("final_results", "response"),
        ("retry_queue", "error_msg"),
        ("dead_letter_queue", "error_msg"),
    ):
        for row in q.query(f"SELECT sample_id, {column} AS x FROM {table}").to_pylist():
            assert row["sample_id"] not in where, f"{row['sample_id']} in two tables"
            where[row["sample_id"]] = (table, row["x"])
    return where


@pytest.mark.parametrize("batch", [False, True])
def test_an_error_class_utf8_cannot_hold_does_not_change_where_records_go(tmp_path, batch):
    # FAILED BEFORE THE FIX: an `error_class` with a lone surrogate (text decoded with
    # `surrogateescape`: file names, bytes from a subprocess) makes the answer unreadable,
    # and the records go where their outcome does not say. `_error_class`
    # (retrylake/__init__.py:85) checks only that it is a str, and `_failure`
    # (__init__.py:382, :384) hands it on as it is for Transient and Permanent (only the
    # other-exception path, :391, passes it through `_valid_utf8`). `Answer::read`
    # (python/src/lib.rs:228, `extract()` of a String) then raises UnicodeEncodeError
    # inside `done`, the answer is never sent, and the round takes "the processor's call
    # ended without an answer" (lib.rs:272/335, transient). So a Permanent is retried
    # instead of dead-lettered, and with a batch (`done` reads every answer first,
    # lib.rs:310-315) the success of its batch-mate is thrown away too: "ok" was stored
    # downstream and is called again.
    # Expected: the class is escaped like every other text (or ignored); "bad" is dead
    # with its own message, "ok" is final.
    q = queue_with(tmp_path, ["ok", "bad"])
    bad = retrylake.Permanent("bad record", error_class="lone \udcff surrogate")
    if batch:

        def process(records):
            return ["stored" if r.id == "ok" else bad for r in records]

        options = {"call_batch": 10}
    else:

        def process(record):
            if record.id == "bad":
                raise bad
            return "stored"

        options = {}
    q.run(process, now=START, breaker=False, timeout=5, **options)
    assert placed(q) == {
        "ok": ("final_results", "stored"),
        "bad": ("dead_letter_queue", "bad record"),
    }


@pytest.mark.parametrize("base", [Exception, retrylake.Transient, retrylake.Permanent])
def test_an_error_class_set_on_the_exception_type_is_matched(tmp_path, base):
    # FAILED BEFORE THE FIX (for Transient and Permanent; HOLDS for a plain Exception): a class given as
    # a class attribute, the usual way to tag a family of exceptions, is ignored on
    # retrylake's own exception types. `_failure` reads `getattr(e, "error_class")`
    # (retrylake/__init__.py:379), which finds a class attribute on a plain Exception
    # subclass; but `Transient.__init__` and `Permanent.__init__` (__init__.py:73, :82)
    # always set the instance attribute, to None when no `error_class=` is passed, which
    # shadows the class's. The rule for "throttle" then silently never matches: the
    # record is retried (Transient) or dead-lettered (Permanent) instead of snoozed.
    # Expected: the class attribute is the exception's class, whatever its base.
    class Throttled(base):
        error_class = "throttle"

    q = queue_with(tmp_path, ["a"])

    def process(record):
        raise Throttled("slow down")

    rules = [{"name": "t", "class": ["throttle"], "action": "snooze", "wait": "5m"}]
    q.run(process, now=START, rules=rules, breaker=False)
    assert journal(q)["a"] == ("snooze", "t", 0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("wait", 300),
        ("wait", dt.timedelta(minutes=5)),
        ("class", "RateLimited"),
    ],
)
def test_a_rule_given_as_a_dict_is_read_or_refused_naming_the_field(tmp_path, field, value):
    # FAILED BEFORE THE FIX: rules given as dicts are refused without naming what is wrong. `run`'s
    # docstring ends "Durations are seconds or timedelta" (retrylake/__init__.py:638),
    # and every other duration option takes them; in a rule, `wait = 300` is refused by
    # serde_json with "rules: invalid type: integer `300`, expected a string at line 1
    # column N" (python/src/lib.rs:648, `Rules::parse_json`, src/rules.rs:201: JSON
    # errors carry no field name and point into JSON the user never wrote), a timedelta
    # makes `json.dumps` (__init__.py:760) raise "Object of type timedelta is not JSON
    # serializable", and `"class": "RateLimited"` (one name, not a list) gets the same
    # nameless serde message. The TOML file shows the offending line; the dicts do not.
    # Expected: a Python duration is taken as one (the rule snoozes), or the error names
    # the field that is wrong.
    q = queue_with(tmp_path, ["a"])

    def process(record):
        raise RateLimited("slow down")

    rule = {"name": "t", "class": ["RateLimited"], "action": "snooze", "wait": "5m"}
    rule[field] = value
    try:
        q.run(process, now=START, rules=[rule], breaker=False)
    except (TypeError, ValueError, retrylake.RetrylakeError) as e:
        assert field in str(e), f"the error does not name {field!r}: {e}"
        return
    assert journal(q)["a"] == ("snooze", "t", 0)


def _old_root(tmp_path):
    """Four empty tables as a retrylake before rules made them: the first commit of
    fresh tables, without the columns added since (`snoozes`, `rule`)."""
    fresh = tmp_path / "fresh"
    retrylake.Queue(str(fresh))
    old = tmp_path / "old"
    for table in TABLES:
        lines = []
        for line in (fresh / table / "_delta_log" / FIRST_COMMIT).read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "metaData" in action:
                schema = json.loads(action["metaData"]["schemaString"])
                schema["fields"] = [
                    f for f in schema["fields"] if f["name"] not in ("snoozes", "rule")
                ]
                action["metaData"]["schemaString"] = json.dumps(schema)
            lines.append(json.dumps(action))
        log = old / table / "_delta_log"
        log.mkdir(parents=True)
        (log / FIRST_COMMIT).write_text("\n".join(lines) + "\n")
    return old


def test_looking_at_an_old_queue_from_python_does_not_upgrade_it(tmp_path):
    # FAILED BEFORE THE FIX: Python has no reader. `Queue.__init__` opens with `Queue::open_with`
    # (python/src/lib.rs:502), the writer's open, which now upgrades a table an older
    # retrylake made (src/store/mod.rs:117 `open_tables(.., true)`, :630 `add_columns`):
    # a notebook that only calls `status()` or `query()` commits ADD COLUMN to the
    # production queue. The CLI's readers (status, query, history, report) open with
    # `open_existing` and change nothing; from Python the same look is a write, which
    # fails with read-only credentials, and is believed to break an older worker still
    # running (its next commit conflicts on the metadata change, and once it reads the
    # table anew delta-rs refuses its batches without the new column:
    # deltalake-core writer/record_batch.rs:553 SchemaMismatch).
    # Expected: status and query leave the tables as they were (the upgrade waits for the
    # first write). Fixed so: every write calls `Store::upgrade` first, and opening never
    # upgrades.
    old = _old_root(tmp_path)
    q = retrylake.Queue(str(old))
    assert q.status()["waiting"] == 0
    assert q.query("SELECT count(*) AS n FROM retry_queue").column(0)[0].as_py() == 0
    for table in TABLES:
        log = old / table / "_delta_log"
        commits = sorted(p.name for p in log.glob("*.json"))
        assert commits == [FIRST_COMMIT], f"{table} written by a reader: {commits}"
