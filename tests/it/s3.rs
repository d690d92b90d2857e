//! A real S3-compatible server on loopback for the object-store tests: moto's server,
//! installed from PyPI by `scripts/py-tools.sh`. `.ci/run` starts one and passes its address
//! in `RETRYLAKE_TEST_S3_ENDPOINT`; without it, the first test that needs one starts its own,
//! which dies with the test process.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BUCKET: &str = "retrylake-tests";

/// The server's address, `http://127.0.0.1:PORT`, with the tests' bucket created.
pub fn endpoint() -> &'static str {
    static ENDPOINT: OnceLock<String> = OnceLock::new();
    ENDPOINT.get_or_init(|| {
        let endpoint = std::env::var("RETRYLAKE_TEST_S3_ENDPOINT").unwrap_or_else(|_| start());
        create_bucket(&endpoint);
        endpoint
    })
}

/// The bucket every S3 test writes under (each test in a prefix of its own).
pub fn bucket() -> &'static str {
    endpoint();
    BUCKET
}

/// The environment a process needs to reach the server: the usual AWS variables.
pub fn environment() -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint()),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The venv holding moto and Python's `deltalake`, installed on first use.
pub fn py_tools() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/py-tools.sh");
        let out = Command::new(script)
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/py-tools.sh runs (it needs python3 with venv and pip)");
        assert!(out.status.success(), "scripts/py-tools.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// Starts moto's server (`scripts/s3_server.py`: with S3's conditional writes atomic) on a
/// free port, on a thread that lives as long as the test
/// process, and waits until it answers.
fn start() -> String {
    let python = py_tools().join("bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/s3_server.py");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut cmd = Command::new(python);
        cmd.args([script, "-H", "127.0.0.1", "-p", &port.to_string()])
            .env(
                "MOTO_RECORDER_FILEPATH",
                concat!(env!("CARGO_TARGET_TMPDIR"), "/moto_recording"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe. The server is killed when the thread that
        // started it ends, and this thread never ends before the test process does.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let child = cmd.spawn().expect("start moto_server");
        tx.send(()).unwrap();
        let _keep = child;
        loop {
            std::thread::park();
        }
    });
    rx.recv().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://127.0.0.1:{port}")
}

/// Creates the tests' bucket (moto takes an unsigned `PUT /bucket`; creating it twice is
/// harmless).
fn create_bucket(endpoint: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .put(format!("{endpoint}/{BUCKET}"))
            .send()
            .await
            .expect("reach the S3 server")
            .status()
    });
    assert!(status.is_success(), "create bucket: {status}");
}

/// One request the S3 server received: its method and URL.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
}

/// The requests the S3 server receives while `f` runs whose URL contains `marker` (a
/// test's prefix), by moto's request recorder. Other tests' requests are left out; only
/// one test may record at a time.
pub fn recorded<T>(marker: &str, f: impl FnOnce() -> T) -> (T, Vec<Request>) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = |path: &str, post: bool| {
        let url = format!("{}/moto-api/recorder/{path}", endpoint());
        rt.block_on(async {
            let client = reqwest::Client::new();
            let request = if post {
                client.post(url)
            } else {
                client.get(url)
            };
            let response = request.send().await.expect("reach the S3 server");
            assert!(response.status().is_success(), "recorder {path}");
            response.text().await.expect("recorder answer")
        })
    };
    api("reset-recording", true);
    api("start-recording", true);
    let out = f();
    api("stop-recording", true);
    let log = api("download-recording", false);
    api("reset-recording", true);
    let requests = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .map(|r| Request {
            method: r["method"].as_str().unwrap_or_default().to_owned(),
            url: r["url"].as_str().unwrap_or_default().to_owned(),
        })
        .filter(|r| r.url.contains(marker))
        .collect();
    (out, requests)
}
