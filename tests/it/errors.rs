//! Bad input and bad state: exit 2, one clear line, nothing written.

use super::util::{Env, bare_cmd};

#[test]
fn bad_flags_and_values() {
    let env = Env::new();
    let err = env.fails(&["run", "--timeout", "5x"]);
    assert!(err.contains("--timeout"), "{err}");
    let err = env.fails(&["run", "--now", "yesterday"]);
    assert!(err.contains("RFC 3339"), "{err}");
    let err = env.fails(&["run", "--no-such-flag"]);
    assert!(err.contains("--no-such-flag"), "{err}");
    let err = env.fails(&["run", "--multiplier", "0.5"]);
    assert!(
        err.contains("multiplier must be a number of at least 1"),
        "{err}"
    );
    let err = env.fails(&["run", "--base-backoff", "10m", "--max-backoff", "1m"]);
    assert!(err.contains("max backoff"), "{err}");
    let err = env.fails(&["run", "--processor", "command"]);
    assert!(err.contains("--command"), "{err}");
    let err = env.fails(&["run", "--transient-rate", "2"]);
    assert!(err.contains("between 0 and 1"), "{err}");
    // Redrives are journaled under this name: a worker sharing it would fence them.
    let err = env.fails(&["run", "--worker", "redrive"]);
    assert!(err.contains("redrives are journaled under"), "{err}");
}

#[test]
fn a_missing_input_file() {
    let env = Env::new();
    let err = env.fails(&["enqueue", env.path("nope.jsonl").to_str().unwrap()]);
    assert!(
        err.contains("nope.jsonl") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn a_data_dir_that_cannot_be_created() {
    let env = Env::new();
    let file = env.write("plain-file", "x");
    let data = file.join("data");
    let out = bare_cmd()
        .args(["--data", data.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("data directory") && err.contains("plain-file"),
        "{err}"
    );
}

#[test]
fn a_folder_that_is_not_a_delta_table() {
    let env = Env::new();
    std::fs::create_dir_all(env.data_dir().join("final_results")).unwrap();
    std::fs::write(env.data_dir().join("final_results/notes.txt"), "mine").unwrap();
    let err = env.fails(&["init"]);
    assert!(err.contains("final_results is not a Delta table"), "{err}");
    // Nothing was written over the user's folder.
    let entries: Vec<_> = std::fs::read_dir(env.data_dir().join("final_results"))
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1);
}

#[test]
fn a_table_with_the_wrong_schema() {
    let env = Env::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let path = env.data_dir().join("retry_queue");
        let url = deltalake::ensure_table_uri(path.to_str().unwrap()).unwrap();
        deltalake::DeltaTable::try_from_url(url)
            .await
            .unwrap()
            .create()
            .with_columns([deltalake::kernel::StructField::new(
                "sample_id",
                deltalake::kernel::DataType::STRING,
                false,
            )])
            .await
            .unwrap();
    });
    // A command that only reads names the tables it misses; one that writes refuses the
    // table it cannot use.
    let err = env.fails(&["status"]);
    assert!(
        err.contains(
            "only some of retrylake's tables: final_results, dead_letter_queue, attempts missing"
        ),
        "{err}"
    );
    let err = env.fails(&["run"]);
    assert!(
        err.contains("retry_queue has the wrong schema: column 'payload' is missing"),
        "{err}"
    );
}
