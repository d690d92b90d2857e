//! Shared test fixtures: a temp data root (a local folder or a prefix on the loopback S3
//! server), the binary, and the tables read back from storage.

use std::ffi::OsStr;
use std::path::PathBuf;

use assert_cmd::Command;
use retrylake::store::{Rows, StorageOptions, Store, Table};
use tempfile::TempDir;

use super::s3;

/// Where a test's tables live, and the settings to reach them.
#[derive(Clone, Debug)]
pub struct Root {
    pub url: String,
    /// Environment variables for the binary, also passed as storage options in-process.
    pub env: Vec<(String, String)>,
}

impl Root {
    /// Opens the tables in this process.
    pub async fn open(&self) -> Store {
        let options: StorageOptions = self.env.iter().cloned().collect();
        Store::open_with(&self.url, options)
            .await
            .expect("open store")
    }
}

impl AsRef<OsStr> for Root {
    fn as_ref(&self) -> &OsStr {
        self.url.as_ref()
    }
}

/// A temp dir holding input files and, for local tests, the data root.
pub struct Env {
    pub dir: TempDir,
    root: Root,
}

impl Env {
    /// Tables in a local temp folder.
    pub fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = dir.path().join("data").to_str().expect("utf8").to_owned();
        Env {
            dir,
            root: Root { url, env: vec![] },
        }
    }

    /// Tables under a fresh prefix of a bucket on the loopback S3 server.
    pub fn s3() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
        Env {
            dir,
            root: Root {
                url: format!("s3://{}/{prefix}", s3::bucket()),
                env: s3::environment(),
            },
        }
    }

    /// The data root.
    pub fn data(&self) -> Root {
        self.root.clone()
    }

    /// The data root as a local folder (local tests only).
    pub fn data_dir(&self) -> PathBuf {
        assert!(self.root.env.is_empty(), "not a local data root");
        PathBuf::from(&self.root.url)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with `--data` set to this env's data root.
    pub fn cmd(&self) -> Command {
        let mut cmd = bare_cmd();
        cmd.envs(self.root.env.iter().cloned())
            .arg("--data")
            .arg(&self.root);
        cmd
    }

    /// The binary as a plain process (to spawn and kill), `--data` set.
    pub fn process(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("retrylake"));
        cmd.env_remove("RETRYLAKE_FAILPOINT")
            .env_remove("RETRYLAKE_DATA")
            .env_remove("RETRYLAKE_LOG")
            .envs(self.root.env.iter().cloned())
            .arg("--data")
            .arg(&self.root);
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
pub fn assert_exactly_once(data: &Root, expected: &[String]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let audit = rt.block_on(async {
        let store = data.open().await;
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

pub fn read_rows<R: Rows>(data: &Root) -> Vec<R> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = data.open().await;
        store.read::<R>().await.expect("read table")
    })
}

pub fn ids<T>(rows: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    let mut ids: Vec<String> = rows.iter().map(|r| id(r).to_owned()).collect();
    ids.sort();
    ids
}

/// The data files of a table's latest version.
pub fn data_files(data: &Root, table: Table) -> Vec<String> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = data.open().await;
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
