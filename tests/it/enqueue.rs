//! Enqueue through the binary: formats, validation, idempotence.

use std::sync::Arc;

use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::parquet::arrow::ArrowWriter;
use retrylake::store::{DeadRow, QueueRow};

use super::util::{Env, ids};

#[test]
fn jsonl_records_enter_the_queue_due_now() {
    let env = Env::new();
    let input = env.write(
        "in.jsonl",
        "{\"sample_id\":\"a\",\"payload\":\"x\"}\n{\"sample_id\":\"b\",\"payload\":{\"n\":1}}\n",
    );
    let out = env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
    ]);
    assert!(out.contains("enqueued 2 of 2"), "{out}");
    let rows = env.rows::<QueueRow>();
    assert_eq!(ids(&rows, |r| &r.sample_id), ["a", "b"]);
    for r in &rows {
        assert_eq!(r.retry_count, 0);
        assert_eq!(r.process_after.to_rfc3339(), "2025-01-01T00:00:00+00:00");
        assert_eq!(r.enqueued_at, r.process_after);
    }
    let b = rows.iter().find(|r| r.sample_id == "b").unwrap();
    assert_eq!(b.payload.as_deref(), Some("{\"n\":1}"));

    // The same file again is harmless.
    let out = env.ok(&["enqueue", input.to_str().unwrap()]);
    assert!(
        out.contains("enqueued 0 of 2 records (2 already known"),
        "{out}"
    );
    assert_eq!(env.rows::<QueueRow>().len(), 2);
}

#[test]
fn csv_with_custom_fields() {
    let env = Env::new();
    let input = env.write(
        "in.csv",
        "id,body,extra\nr1,\"hello, world\",1\nr2,\"two\nlines\",2\n",
    );
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--id-field",
        "id",
        "--payload-field",
        "body",
    ]);
    let rows = env.rows::<QueueRow>();
    assert_eq!(ids(&rows, |r| &r.sample_id), ["r1", "r2"]);
    let r2 = rows.iter().find(|r| r.sample_id == "r2").unwrap();
    assert_eq!(r2.payload.as_deref(), Some("two\nlines"));
}

#[test]
fn parquet_by_extension_and_by_flag() {
    let env = Env::new();
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Int64, false),
        Field::new("payload", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1, 2, 3])),
            Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
        ],
    )
    .unwrap();
    for name in ["in.parquet", "in.bin"] {
        let file = std::fs::File::create(env.path(name)).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
    env.ok(&["enqueue", env.path("in.parquet").to_str().unwrap()]);
    let rows = env.rows::<QueueRow>();
    assert_eq!(ids(&rows, |r| &r.sample_id), ["1", "2", "3"]);
    assert_eq!(
        rows.iter().find(|r| r.sample_id == "2").unwrap().payload,
        None
    );
    let out = env.ok(&[
        "enqueue",
        env.path("in.bin").to_str().unwrap(),
        "--format",
        "parquet",
    ]);
    assert!(out.contains("3 already known"), "{out}");

    let err = env.fails(&[
        "enqueue",
        env.path("in.parquet").to_str().unwrap(),
        "--id-field",
        "id",
    ]);
    assert!(err.contains("no column 'id'"), "{err}");
}

#[test]
fn an_invalid_line_refuses_the_whole_file() {
    let env = Env::new();
    let input = env.write(
        "bad.jsonl",
        "{\"sample_id\":\"a\",\"payload\":\"x\"}\n{broken\n{\"payload\":\"no id\"}\n",
    );
    let err = env.fails(&["enqueue", input.to_str().unwrap()]);
    assert!(err.contains("bad.jsonl"), "{err}");
    assert!(err.contains("line 2: malformed JSON"), "{err}");
    assert!(
        err.contains("line 3: missing id field 'sample_id'"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(env.rows::<QueueRow>().is_empty());
    assert!(env.rows::<DeadRow>().is_empty());

    env.ok(&["enqueue", input.to_str().unwrap(), "--skip-invalid"]);
    assert_eq!(ids(&env.rows::<QueueRow>(), |r| &r.sample_id), ["a"]);
    let dead = env.rows::<DeadRow>();
    let dead_ids = ids(&dead, |r| &r.sample_id);
    assert_eq!(dead_ids.len(), 2, "{dead_ids:?}");
    assert!(
        dead_ids[0].starts_with("invalid:bad.jsonl:2:"),
        "{dead_ids:?}"
    );
    assert!(
        dead_ids[1].starts_with("invalid:bad.jsonl:3:"),
        "{dead_ids:?}"
    );
    assert!(dead.iter().all(|d| d.reason.as_str() == "invalid_input"));
    let line2 = dead
        .iter()
        .find(|d| d.sample_id.starts_with("invalid:bad.jsonl:2:"))
        .unwrap();
    assert_eq!(line2.payload.as_deref(), Some("{broken"));

    // Again: nothing doubles.
    env.ok(&["enqueue", input.to_str().unwrap(), "--skip-invalid"]);
    assert_eq!(env.rows::<DeadRow>().len(), 2);
    assert_eq!(env.rows::<QueueRow>().len(), 1);
}

#[test]
fn a_duplicate_id_in_one_input_is_named() {
    let env = Env::new();
    let input = env.write(
        "dup.jsonl",
        "{\"sample_id\":\"a\",\"payload\":\"1\"}\n{\"sample_id\":\"b\",\"payload\":\"2\"}\n{\"sample_id\":\"a\",\"payload\":\"3\"}\n",
    );
    let err = env.fails(&["enqueue", input.to_str().unwrap()]);
    assert!(err.contains("'a' on lines 1 and 3"), "{err}");
    assert!(env.rows::<QueueRow>().is_empty());
}

/// Ids at and past the 1024-byte limit, with control characters, and blank.
fn bad_ids() -> Vec<(String, &'static str)> {
    vec![
        ("y".repeat(2 << 20), "longer than 1024 bytes"),
        ("z".repeat(1025), "longer than 1024 bytes"),
        ("a\0b".to_owned(), "control character"),
        ("  ".to_owned(), "blank"),
        ("tab\there".to_owned(), "control character"),
        ("del\u{7f}".to_owned(), "control character"),
        ("c1\u{85}".to_owned(), "control character"),
        ("\u{3000} ".to_owned(), "blank"),
        ("line\nbreak".to_owned(), "control character"),
    ]
}

/// Checks the refusal of an input holding [`bad_ids`] from `first_bad` on, in order, then
/// its `--skip-invalid` treatment: synthetic ids in the dead letters, the good ids queued.
fn ids_are_checked(env: &Env, input: &std::path::Path, first_bad: usize, good: &[&str]) {
    let name = input.file_name().unwrap().to_str().unwrap();
    let input = input.to_str().unwrap();
    let err = env.fails(&["enqueue", input]);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.len() < 4096,
        "the bad id is not echoed whole: {} bytes",
        err.len()
    );
    assert!(
        err.contains(name) && err.contains("9 invalid record(s)"),
        "{err}"
    );
    for (i, (_, what)) in bad_ids().iter().take(5).enumerate() {
        let line = format!("line {}: ", first_bad + i);
        let shown = err
            .split(&line)
            .nth(1)
            .unwrap_or_else(|| panic!("{line}: {err}"));
        assert!(
            shown.starts_with("id") && shown.split(';').next().unwrap().contains(what),
            "{line}{what}: {err}"
        );
    }
    assert!(err.contains("and 4 more"), "{err}");
    assert!(env.rows::<QueueRow>().is_empty());
    assert!(env.rows::<DeadRow>().is_empty());

    let out = env.ok(&["enqueue", input, "--skip-invalid"]);
    assert!(out.contains("9 invalid dead-lettered"), "{out}");
    let mut queued = ids(&env.rows::<QueueRow>(), |r| &r.sample_id);
    queued.sort();
    let mut good: Vec<String> = good.iter().map(|g| g.to_string()).collect();
    good.sort();
    assert_eq!(queued, good);
    let dead = env.rows::<DeadRow>();
    let mut expected: Vec<String> = (first_bad..first_bad + 9)
        .map(|line| format!("invalid:{name}:{line}"))
        .collect();
    expected.sort();
    // Each id is `invalid:<file>:<line>:<hash of the line>`.
    let without_hash = |id: &String| id.rsplit_once(':').unwrap().0.to_owned();
    let mut found: Vec<String> = ids(&dead, |r| &r.sample_id)
        .iter()
        .map(without_hash)
        .collect();
    found.sort();
    assert_eq!(found, expected);
    for d in &dead {
        assert_eq!(d.reason.as_str(), "invalid_input");
        let line = d.sample_id.rsplit(':').nth(1).unwrap();
        let msg = d.error_msg.as_deref().unwrap();
        assert!(msg.starts_with(&format!("line {line}: id")), "{msg}");
    }
}

#[test]
fn ids_are_short_printable_and_not_blank_in_jsonl() {
    let env = Env::new();
    let limit = "x".repeat(1024);
    let mut lines = vec![
        serde_json::json!({"sample_id": "ok", "payload": "p"}).to_string(),
        serde_json::json!({"sample_id": limit, "payload": "p"}).to_string(),
    ];
    for (id, _) in bad_ids() {
        lines.push(serde_json::json!({"sample_id": id, "payload": "p"}).to_string());
    }
    let input = env.write("ids.jsonl", lines.join("\n") + "\n");
    ids_are_checked(&env, &input, 3, &["ok", &limit]);
    // The dead letter keeps the line as read.
    let dead = env.rows::<DeadRow>();
    let nul = dead
        .iter()
        .find(|d| d.sample_id.starts_with("invalid:ids.jsonl:5:"))
        .unwrap();
    assert_eq!(nul.payload.as_deref(), Some(lines[4].as_str()));
}

#[test]
fn ids_are_short_printable_and_not_blank_in_csv() {
    let env = Env::new();
    let limit = "x".repeat(1024);
    let mut csv = format!("sample_id,payload\nok,p\n{limit},p\n");
    for (id, _) in bad_ids() {
        csv.push_str(&format!("\"{id}\",p\n"));
    }
    let input = env.write("ids.csv", &csv);
    // Line 1 is the header; the last id, with a newline, spans lines 12 and 13.
    ids_are_checked(&env, &input, 4, &["ok", &limit]);
}

#[test]
fn ids_are_short_printable_and_not_blank_in_parquet() {
    let env = Env::new();
    let limit = "x".repeat(1024);
    let mut column = vec!["ok".to_owned(), limit.clone()];
    column.extend(bad_ids().into_iter().map(|(id, _)| id));
    let schema = Arc::new(Schema::new(vec![
        Field::new("sample_id", DataType::Utf8, false),
        Field::new("payload", DataType::Utf8, true),
    ]));
    let payloads: Vec<Option<&str>> = column.iter().map(|_| Some("p")).collect();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(column.clone())),
            Arc::new(StringArray::from(payloads)),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(env.path("ids.parquet")).unwrap();
    let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    ids_are_checked(&env, &env.path("ids.parquet"), 3, &["ok", &limit]);
}
