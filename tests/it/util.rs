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

    /// Opens the queue in this process, creating nothing.
    pub async fn queue(&self) -> retrylake::Queue {
        let options: StorageOptions = self.env.iter().cloned().collect();
        retrylake::Queue::open_existing_with(&self.url, options)
            .await
            .expect("open queue")
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

/// No record was journaled twice for the same attempt (its retry count before the call):
/// each retry count has one attempt that moved the record on, after any number of snoozes
/// (which count no retry).
pub fn assert_each_attempt_once(env: &Env) {
    let mut seen = std::collections::HashSet::new();
    for a in env.rows::<retrylake::store::AttemptRow>() {
        if a.disposition == retrylake::store::Disposition::Snooze {
            continue;
        }
        assert!(
            seen.insert((a.sample_id.clone(), a.retries_before)),
            "{} attempt {} twice",
            a.sample_id,
            a.retries_before
        );
    }
}

/// Audits the tables on disk and asserts every invariant holds for exactly `expected` ids.
pub fn assert_exactly_once(data: &Root, expected: &[String]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let audit = rt.block_on(async { data.queue().await.audit().await.expect("audit") });
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

/// A `retrylake` process running in the background (a worker, a round the test stops or
/// lets stall), its stdout and stderr in files of the env's temp dir so it never blocks on
/// a full pipe.
pub struct Background {
    pub name: String,
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// What a background process left when it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Background {
    /// Starts `retrylake --data <env> args...` with the extra environment `envs`.
    pub fn spawn(env: &Env, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Background {
        let stdout = env.path(&format!("{name}.stdout"));
        let stderr = env.path(&format!("{name}.stderr"));
        let child = env
            .process()
            .args(args)
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn retrylake");
        Background {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal)
            .unwrap_or_else(|e| panic!("{}: {signal}: {e}", self.name));
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Waits for it to end on its own; kills it and fails the test after `timeout`.
    pub fn wait(mut self, timeout: std::time::Duration) -> Finished {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Finished {
                    status,
                    stdout: self.stdout(),
                    stderr: self.stderr(),
                };
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "{} did not finish within {timeout:?} (killed); stderr: {}",
                    self.name,
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Asks it to stop (SIGTERM, a worker finishes its round) and waits for it.
    pub fn stop(self, timeout: std::time::Duration) -> Finished {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(timeout)
    }
}

impl Drop for Background {
    /// A test that fails leaves no process behind (a stopped one is woken to die).
    fn drop(&mut self) {
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGCONT);
            let _ = self.child.wait();
        }
    }
}

/// The last 4,000 characters of a process's output, for assertion messages.
pub fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(4000);
    let start = (start..=text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}

/// Audits the tables and asserts every id of `expected` is in exactly one table, and no
/// other id anywhere, with short messages (counts and a few examples) fit for thousands
/// of records. Also asserts the journal agrees with the tables.
pub fn assert_each_once(data: &Root, expected: &[String]) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let audit = rt.block_on(async { data.queue().await.audit().await.expect("audit") });
    // How many, and the first few.
    let few = |v: Vec<String>| -> String {
        let n = v.len();
        let shown: Vec<String> = v.into_iter().take(5).collect();
        format!("{n}, e.g. {}", shown.join("; "))
    };
    assert!(
        audit.doubled.is_empty(),
        "records in more than one place (of {}): {}",
        expected.len(),
        few(audit
            .doubled
            .iter()
            .map(|(id, places)| format!("{id} in {}", places.join(" + ")))
            .collect())
    );
    let expected_set: std::collections::BTreeSet<&String> = expected.iter().collect();
    let lost: Vec<String> = expected
        .iter()
        .filter(|id| !audit.ids.contains(*id))
        .cloned()
        .collect();
    assert!(lost.is_empty(), "records lost: {}", few(lost));
    let invented: Vec<String> = audit
        .ids
        .iter()
        .filter(|id| !expected_set.contains(id))
        .cloned()
        .collect();
    assert!(invented.is_empty(), "records invented: {}", few(invented));
    assert!(
        audit.unjournaled_finals.is_empty(),
        "final without a journaled success: {}",
        few(audit.unjournaled_finals)
    );
    assert!(
        audit.count_mismatches.is_empty(),
        "retry counts off the journal: {}",
        few(audit.count_mismatches)
    );
}

/// The ids found more than once in `ids` (each once, sorted).
pub fn repeated(ids: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for id in ids {
        *counts.entry(id).or_default() += 1;
    }
    counts
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

/// An RFC 3339 time `secs` seconds from now (negative: in the past).
pub fn from_now(secs: f64) -> String {
    let t = chrono::Utc::now() + chrono::Duration::milliseconds((secs * 1000.0) as i64);
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
