//! Hostile input and hostile state: stored faithfully or refused by name, never a panic,
//! never a half-written table.

use std::io::Write;
use std::sync::Arc;

use deltalake::arrow::array::{Array, Int32Array, ListArray, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Int32Type, Schema};
use deltalake::parquet::arrow::ArrowWriter;
use retrylake::store::{DeadRow, FinalRow, QueueRow};

use super::util::{Env, assert_exactly_once, bare_cmd, ids, write_samples};

fn sh(args: &[&str]) -> bool {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

/// A small tmpfs mounted under the env (for full and read-only filesystems), unmounted when
/// dropped, even by a failing test.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        sh(&["umount", self.0.to_str().unwrap()]);
    }
}

/// Mounts a tmpfs of `size` for `test`, or returns `None` where mounting is not allowed
/// (not root, a container without CAP_SYS_ADMIN): the test is then skipped, and says so on
/// stderr (`SKIPPED: ...`). With `CI` or `RETRYLAKE_TEST_REQUIRE_MOUNT` set the tests must
/// run, so a failed mount fails the test instead of skipping it.
fn mount_tmpfs(env: &Env, test: &str, size: &str) -> Option<Tmpfs> {
    let mount = env.path(test);
    std::fs::create_dir_all(&mount).unwrap();
    let options = format!("size={size}");
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(&mount)
        .output();
    let why = match out {
        Ok(out) if out.status.success() => return Some(Tmpfs(mount)),
        Ok(out) => format!(
            "mount -t tmpfs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run mount: {e}"),
    };
    let required = ["CI", "RETRYLAKE_TEST_REQUIRE_MOUNT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
    assert!(
        !required,
        "{test} needs a tmpfs and CI requires it to run: {why}"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of a test
    // that passes, and a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: needs to mount a tmpfs (root with CAP_SYS_ADMIN): {why}"
    );
    None
}

fn enqueue_file(env: &Env, name: &str, contents: impl AsRef<[u8]>) -> std::process::Output {
    let path = env.write(name, contents);
    env.cmd()
        .args(["enqueue", path.to_str().unwrap()])
        .output()
        .unwrap()
}

fn payload_of(env: &Env, id: &str) -> Option<String> {
    env.rows::<QueueRow>()
        .into_iter()
        .find(|r| r.sample_id == id)
        .and_then(|r| r.payload)
}

#[test]
fn empty_and_blank_files_enqueue_nothing() {
    let env = Env::new();
    for (name, contents) in [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n\n  \r\n\t\n"),
        ("header.csv", "sample_id,payload\n"),
    ] {
        let out = enqueue_file(&env, name, contents);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("enqueued 0 of 0"),
            "{name}"
        );
    }
    assert!(env.rows::<QueueRow>().is_empty());
}

#[test]
fn bom_crlf_and_odd_ids_are_stored_faithfully() {
    let env = Env::new();
    let input = "\u{feff}{\"sample_id\":\"quote\\\"d\",\"payload\":\"a\"}\r\n\
                 {\"sample_id\":\"line\u{2028}sep\",\"payload\":\"b\"}\r\n\
                 {\"sample_id\":\"émoji-🧪\",\"payload\":\"c 🧬\"}\r\n\
                 {\"sample_id\":\"nested\",\"payload\":{\"a\":[1,{\"b\":null}],\"c\":\"ü\"}}\r\n";
    let out = enqueue_file(&env, "odd.jsonl", input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ids(&env.rows::<QueueRow>(), |r| &r.sample_id),
        ["line\u{2028}sep", "nested", "quote\"d", "émoji-🧪"]
    );
    assert_eq!(payload_of(&env, "émoji-🧪").as_deref(), Some("c 🧬"));
    assert_eq!(
        payload_of(&env, "nested").as_deref(),
        Some("{\"a\":[1,{\"b\":null}],\"c\":\"ü\"}")
    );
    // And they go through a round and out the other side unchanged.
    env.ok(&["run", "--transient-rate", "0"]);
    assert_eq!(
        ids(&env.rows::<FinalRow>(), |r| &r.sample_id),
        ["line\u{2028}sep", "nested", "quote\"d", "émoji-🧪"]
    );
}

#[test]
fn non_utf8_and_non_objects_are_refused_by_line() {
    let env = Env::new();
    let mut input = b"{\"sample_id\":\"ok\",\"payload\":\"a\"}\n".to_vec();
    input.extend_from_slice(b"{\"sample_id\":\"bad\",\"payload\":\"\xff\xfe\"}\n");
    input.extend_from_slice(b"[\"array\"]\n\"string\"\n42\n");
    let out = enqueue_file(&env, "hostile.jsonl", &input);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2: not valid UTF-8"), "{err}");
    assert!(
        err.contains("line 3: expected a JSON object, found an array"),
        "{err}"
    );
    assert!(
        err.contains("line 4: expected a JSON object, found a string"),
        "{err}"
    );
    assert!(
        err.contains("line 5: expected a JSON object, found a number"),
        "{err}"
    );
    assert!(env.rows::<QueueRow>().is_empty(), "nothing half-written");

    let path = env.path("hostile.jsonl");
    env.ok(&["enqueue", path.to_str().unwrap(), "--skip-invalid"]);
    let dead = env.rows::<DeadRow>();
    assert_eq!(dead.len(), 4);
    let line2 = dead
        .iter()
        .find(|d| d.sample_id.starts_with("invalid:hostile.jsonl:2:"))
        .unwrap();
    assert!(
        line2.payload.as_deref().unwrap().contains('\u{fffd}'),
        "kept lossily, not lost"
    );
}

#[test]
fn a_10_mb_payload_round_trips() {
    let env = Env::new();
    let big = "x".repeat(10 << 20);
    let out = enqueue_file(
        &env,
        "big.jsonl",
        format!("{{\"sample_id\":\"big\",\"payload\":\"{big}\"}}\n"),
    );
    assert!(out.status.success());
    env.ok(&["run", "--transient-rate", "0"]);
    let finals = env.rows::<FinalRow>();
    assert_eq!(finals[0].data.as_ref().map(String::len), Some(10 << 20));
}

#[test]
fn csv_quoted_newlines_and_ragged_rows() {
    let env = Env::new();
    let out = enqueue_file(
        &env,
        "in.csv",
        "sample_id,payload\r\n\"a,1\",\"x\r\ny\"\r\nb,\"say \"\"hi\"\"\"\r\nc\r\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5: expected 2 fields, found 1"), "{err}");
    let path = env.path("in.csv");
    env.ok(&["enqueue", path.to_str().unwrap(), "--skip-invalid"]);
    assert_eq!(payload_of(&env, "a,1").as_deref(), Some("x\r\ny"));
    assert_eq!(payload_of(&env, "b").as_deref(), Some("say \"hi\""));
    assert_eq!(env.rows::<DeadRow>().len(), 1);
}

#[test]
fn parquet_with_wrong_columns_or_types_is_refused() {
    let env = Env::new();
    let write = |name: &str, batch: RecordBatch| {
        let file = std::fs::File::create(env.path(name)).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        env.path(name).to_str().unwrap().to_owned()
    };
    let wrong_name = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("payload", DataType::Utf8, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["a"])),
            Arc::new(StringArray::from(vec!["p"])),
        ],
    )
    .unwrap();
    let err = env.fails(&["enqueue", &write("names.parquet", wrong_name)]);
    assert!(
        err.contains("no column 'sample_id'") && err.contains("names.parquet"),
        "{err}"
    );

    let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
    let wrong_type = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("sample_id", list.data_type().clone(), true),
            Field::new("payload", DataType::Int32, true),
        ])),
        vec![Arc::new(list), Arc::new(Int32Array::from(vec![1]))],
    )
    .unwrap();
    let err = env.fails(&["enqueue", &write("types.parquet", wrong_type)]);
    assert!(
        err.contains("column 'sample_id' is List") && err.contains("string or an integer"),
        "{err}"
    );

    let err = env.fails(&[
        "enqueue",
        env.write("fake.parquet", "not parquet").to_str().unwrap(),
    ]);
    assert!(err.contains("not a readable Parquet file"), "{err}");
    assert!(env.rows::<QueueRow>().is_empty());
}

#[test]
fn a_journal_several_rounds_ahead_is_caught_up() {
    let env = Env::new();
    let (input, all) = write_samples(&env, "J", 60);
    env.ok(&[
        "enqueue",
        input.to_str().unwrap(),
        "--now",
        "2025-01-01T00:00:00Z",
    ]);
    for at in ["00:00", "00:02", "00:06"] {
        env.ok(&[
            "run",
            "--now",
            &format!("2025-01-01T{at}:00Z"),
            "--transient-rate",
            "0.5",
        ]);
    }
    // Roll final_results and the queue back three rounds by deleting their newest commits,
    // as a bad restore or a lost write would.
    for (table, keep) in [("final_results", 1), ("retry_queue", 2)] {
        let log = env.data_dir().join(table).join("_delta_log");
        let mut commits: Vec<_> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        commits.sort();
        for c in &commits[keep..] {
            std::fs::remove_file(c).unwrap();
        }
    }
    env.ok(&[
        "run",
        "--now",
        "2025-01-01T00:06:00Z",
        "--transient-rate",
        "0.5",
    ]);
    assert_exactly_once(&env.data(), &all);
    env.ok(&[
        "run",
        "--now",
        "2025-01-01T00:06:00Z",
        "--transient-rate",
        "0.5",
        "--drain",
    ]);
    assert_exactly_once(&env.data(), &all);
    assert!(env.rows::<QueueRow>().is_empty());
}

#[test]
fn a_full_disk_fails_cleanly() {
    // Needs a small filesystem: a 6 MB tmpfs (the test says SKIPPED where it cannot mount
    // one).
    let env = Env::new();
    let Some(tmpfs) = mount_tmpfs(&env, "a_full_disk_fails_cleanly", "6m") else {
        return;
    };
    let data = tmpfs.0.join("data");
    // Incompressible payloads, 2 x 4 MB, so Parquet cannot squeeze them under 6 MB.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = || {
        (0..4 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'a' + (state % 26) as u8)
            })
            .collect::<String>()
    };
    let (big, big2) = (noise(), noise());
    let input = env.write("big.jsonl", format!("{{\"sample_id\":\"a\",\"payload\":\"{big}\"}}\n{{\"sample_id\":\"b\",\"payload\":\"{big2}\"}}\n"));
    let out = bare_cmd()
        .args([
            "--data",
            data.to_str().unwrap(),
            "enqueue",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    drop(tmpfs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.to_lowercase().contains("no space") || stderr.contains("os error 28"),
        "{stderr}"
    );
}

#[test]
fn a_read_only_data_directory_fails_cleanly_and_stays_readable() {
    // Root ignores file modes, so make the filesystem itself read-only (the test says
    // SKIPPED where it cannot mount one).
    let env = Env::new();
    let Some(tmpfs) = mount_tmpfs(
        &env,
        "a_read_only_data_directory_fails_cleanly_and_stays_readable",
        "64m",
    ) else {
        return;
    };
    let data = tmpfs.0.join("data");
    let data = data.to_str().unwrap();
    let (input, _) = write_samples(&env, "RO", 10);
    let ok = bare_cmd()
        .args(["--data", data, "enqueue", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(sh(&[
        "mount",
        "-o",
        "remount,ro",
        tmpfs.0.to_str().unwrap()
    ]));
    let run = bare_cmd()
        .args(["--data", data, "run", "--transient-rate", "0"])
        .output()
        .unwrap();
    let status = bare_cmd()
        .args(["--data", data, "status", "--json"])
        .output()
        .unwrap();
    drop(tmpfs);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Read-only file system") || stderr.contains("os error 30"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["waiting"], 10,
        "the tables are readable and unchanged"
    );
}
