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
    assert_eq!(ids(&dead, |r| &r.sample_id), ["bad.jsonl:2", "bad.jsonl:3"]);
    assert!(dead.iter().all(|d| d.reason == "invalid_input"));
    let line2 = dead.iter().find(|d| d.sample_id == "bad.jsonl:2").unwrap();
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
