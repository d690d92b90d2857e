"""Rules per error from Python: ``rules=`` as dicts or a TOML file, matched on the
exception's class (its ``error_class`` or its type's name), the message, the outcome."""

import pytest

import retrylake

START = "2025-11-24T14:00:00Z"


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


RULES = [
    {"name": "throttled", "class": ["RateLimited"], "action": "snooze", "wait": "5m"},
    {"name": "deadlock", "class": ["deadlock"], "action": "transient", "max_retries": 1,
     "base_backoff": "1s"},
    {"name": "schema", "message": "(?i)schema", "action": "permanent"},
]


def process(record):
    if record.id == "a":
        raise RateLimited("slow down")
    if record.id == "b":
        raise retrylake.Transient("deadlock detected", error_class="deadlock")
    if record.id == "c":
        raise ValueError("Schema mismatch in field x")
    if record.id == "d":
        raise retrylake.Transient("just busy")
    return "ok"


@pytest.mark.parametrize("as_file", [False, True])
def test_rules_decide_by_class_message_and_name(tmp_path, as_file):
    q = queue_with(tmp_path, ["a", "b", "c", "d", "e"])
    rules = RULES
    if as_file:
        path = tmp_path / "rules.toml"
        path.write_text(
            '[[rule]]\nname = "throttled"\nclass = ["RateLimited"]\naction = "snooze"\nwait = "5m"\n'
            '[[rule]]\nname = "deadlock"\nclass = ["deadlock"]\naction = "transient"\n'
            'max_retries = 1\nbase_backoff = "1s"\n'
            '[[rule]]\nname = "schema"\nmessage = "(?i)schema"\naction = "permanent"\n'
        )
        rules = str(path)
    report = q.run(process, now=START, rules=rules, breaker=False)
    assert (report["snoozed"], report["retried"], report["dead_lettered"]) == (1, 2, 1)
    assert journal(q) == {
        "a": ("snooze", "throttled", 0),
        "b": ("retry", "deadlock", 1),
        "c": ("dead", "schema", 0),
        "d": ("retry", None, 1),
        "e": ("final", None, 0),
    }
    assert q.status(now=START)["snoozed"] == 1
    # The deadlock rule allows one retry: the next failure is the last.
    q.drain(process, now=START, rules=rules, breaker=False)
    dead = q.query("SELECT sample_id, reason FROM dead_letter_queue ORDER BY sample_id")
    assert dict(zip(*(dead.column(c).to_pylist() for c in ("sample_id", "reason")))) == {
        "a": "retries_exhausted",
        "b": "retries_exhausted",
        "c": "permanent",
        "d": "retries_exhausted",
    }
    b = q.query("SELECT count(*) AS n FROM attempts WHERE sample_id = 'b'").column(0)[0]
    assert b.as_py() == 2


def test_a_batch_processor_names_classes_per_record(tmp_path):
    q = queue_with(tmp_path, ["a", "b"])
    q.run(
        lambda records: [RateLimited("x"), retrylake.Permanent("y", error_class="deadlock")],
        now=START, rules=RULES, call_batch=10, breaker=False,
    )
    # A rule may turn a permanent failure into a retry.
    assert journal(q) == {"a": ("snooze", "throttled", 0), "b": ("retry", "deadlock", 1)}


@pytest.mark.parametrize(
    "rules, wrong",
    [
        ([{"name": "x", "action": "permanent"}], "no condition"),
        ([{"name": "x", "status": [429], "action": "nap"}], "unknown action 'nap'"),
        ([{"name": "x", "status": [429], "action": "snooze"}], "needs wait"),
        ([{"name": "x", "status": [429], "action": "snooze", "wait": "1m", "colour": 1}],
         "unknown field"),
        ("/no/such/rules.toml", "cannot read it"),
    ],
)
def test_bad_rules_are_refused_before_anything_runs(tmp_path, rules, wrong):
    q = queue_with(tmp_path, ["a"])
    with pytest.raises((ValueError, retrylake.RetrylakeError), match=wrong):
        q.run(process, now=START, rules=rules)
    assert q.query("SELECT count(*) FROM attempts").column(0)[0].as_py() == 0


@pytest.mark.parametrize("rules", [42, b"x", [1, 2], {"name": "x"}])
def test_rules_of_the_wrong_type_are_refused(tmp_path, rules):
    q = queue_with(tmp_path, ["a"])
    with pytest.raises(TypeError, match="rules"):
        q.run(process, now=START, rules=rules)


def test_error_class_must_be_text():
    with pytest.raises(TypeError, match="error_class"):
        retrylake.Transient("x", error_class=3)
