//! Shared test fixtures: a temp data dir, the binary, and the tables read back from disk.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use retrylake::store::{Rows, Store, Table};
use tempfile::TempDir;

/// A temp dir holding a data root and input files.
pub struct Env {
    pub dir: TempDir,
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with `--data` set to this env's data root.
    pub fn cmd(&self) -> Command {
        let mut cmd = bare_cmd();
        cmd.arg("--data").arg(self.data());
        cmd
    }

    /// The binary as a plain process (to spawn and kill), `--data` set.
    pub fn process(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("retrylake"));
        cmd.env_remove("RETRYLAKE_FAILPOINT")
            .env_remove("RETRYLAKE_DATA")
            .env_remove("RETRYLAKE_LOG")
            .arg("--data")
            .arg(self.data());
        cmd
    }

    /// Runs the binary with `args`, asserts success and returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run");
        assert!(
            out.status.success(),
            "retrylake {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf8 stdout")
    }

    /// Runs the binary with `args`, asserts exit code 2 and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run");
        let stderr = String::from_utf8(out.stderr).expect("utf8 stderr");
        assert_eq!(out.status.code(), Some(2), "retrylake {args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "panic: {stderr}");
        stderr
    }

    /// Runs the binary with `--json` appended and parses the output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).expect("one JSON object")
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write input");
        path
    }

    /// Every row of one table, read back from disk by a fresh store.
    pub fn rows<R: Rows>(&self) -> Vec<R> {
        read_rows(&self.data())
    }
}

/// The binary in a clean environment, without `--data`.
pub fn bare_cmd() -> Command {
    let mut cmd = Command::cargo_bin("retrylake").expect("binary built");
    cmd.env_remove("RETRYLAKE_FAILPOINT")
        .env_remove("RETRYLAKE_DATA")
        .env_remove("RETRYLAKE_LOG");
    cmd
}

/// Audits the tables on disk and asserts every invariant holds for exactly `expected` ids.
pub fn assert_exactly_once(data: &Path, expected: &[String]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let audit = rt.block_on(async {
        let store = Store::open(data.to_str().expect("utf8 path"))
            .await
            .expect("open store");
        retrylake::audit::audit(&store).await.expect("audit")
    });
    assert!(audit.doubled.is_empty(), "doubled: {:?}", audit.doubled);
    assert!(
        audit.unjournaled_finals.is_empty(),
        "final without success: {:?}",
        audit.unjournaled_finals
    );
    assert!(
        audit.count_mismatches.is_empty(),
        "retry counts off: {:?}",
        audit.count_mismatches
    );
    let found: Vec<&String> = audit.ids.iter().collect();
    let mut expected: Vec<&String> = expected.iter().collect();
    expected.sort();
    assert_eq!(found, expected, "records lost or invented");
}

/// A JSON Lines input of `n` records `<prefix>-0000`..., every 9th with an empty payload.
pub fn write_samples(env: &Env, prefix: &str, n: usize) -> (PathBuf, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    let lines: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let payload = if i % 9 == 0 {
                String::new()
            } else {
                format!("data {i}")
            };
            format!("{{\"sample_id\":\"{id}\",\"payload\":\"{payload}\"}}\n")
        })
        .collect();
    (env.write(&format!("{prefix}.jsonl"), lines), ids)
}

pub fn read_rows<R: Rows>(data: &Path) -> Vec<R> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open(data.to_str().expect("utf8 path"))
            .await
            .expect("open store");
        store.read::<R>().await.expect("read table")
    })
}

pub fn ids<T>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    let mut ids: Vec<String> = rows.iter().map(|r| id(r).to_owned()).collect();
    ids.sort();
    ids
}

/// The data files of a table's latest version.
pub fn data_files(data: &Path, table: Table) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open(data.to_str().expect("utf8 path"))
            .await
            .expect("open store");
        let snapshot = store.table(table).snapshot().expect("snapshot");
        let mut files: Vec<String> = snapshot
            .log_data()
            .iter()
            .map(|f| f.path().to_string())
            .collect();
        files.sort();
        files
    })
}
