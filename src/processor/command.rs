//! The `command` processor: one `sh -c CMD` child per record.
//!
//! The contract: the payload on stdin; `RETRYLAKE_SAMPLE_ID`, `RETRYLAKE_ATTEMPT` and
//! `RETRYLAKE_IDEMPOTENCY_KEY` in the environment; exit 0 is success (stdout becomes the
//! response), exit 75 (`EX_TEMPFAIL`) is transient, any other exit is permanent, death by a
//! signal is transient; the last line of stderr is the error message.

use std::process::Stdio;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{MAX_RESPONSE_BYTES, Processor, Record};
use crate::outcome::Outcome;

/// Exit status that marks a transient failure (`EX_TEMPFAIL` from `sysexits.h`).
pub const EX_TEMPFAIL: i32 = 75;

/// Most bytes of the end of stderr kept to find its last line.
const MAX_STDERR: usize = 64 << 10;
/// Longest error message kept from stderr.
const MAX_ERROR_CHARS: usize = 1000;

/// Runs a shell command per record.
#[derive(Debug, Clone)]
pub struct CommandProcessor {
    command: String,
}

impl CommandProcessor {
    /// A processor running `sh -c command`.
    pub fn new(command: impl Into<String>) -> Self {
        CommandProcessor {
            command: command.into(),
        }
    }
}

/// Kills the child's whole process group if the call is dropped before the child exits
/// (a timeout), so no grandchild outlives it.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

#[async_trait]
impl Processor for CommandProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        let mut child = match Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("RETRYLAKE_SAMPLE_ID", &record.sample_id)
            .env("RETRYLAKE_ATTEMPT", record.retry_count.to_string())
            .env("RETRYLAKE_IDEMPOTENCY_KEY", record.idempotency_key())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(e) => return Outcome::transient(format!("could not start sh: {e}")),
        };
        // A process id always fits an i32 (pid_max is at most 2^22); one that did not would
        // name no group to kill.
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let mut guard = GroupGuard(pgid.map(Pid::from_raw));

        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let payload = record.payload.clone().unwrap_or_default();
        let feed = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A child that does not read its stdin closes the pipe: not an error.
                let _ = stdin.write_all(payload.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let (_, out, err, status) = tokio::join!(
            feed,
            read_head(stdout, MAX_RESPONSE_BYTES),
            read_tail(stderr, MAX_STDERR),
            child.wait()
        );
        let status = match status {
            Ok(status) => status,
            Err(e) => return Outcome::transient(format!("could not wait for command: {e}")),
        };
        guard.0 = None;

        let last_line = last_line(&err);
        let message = |fallback: String| last_line.clone().unwrap_or(fallback);
        match status.code() {
            Some(0) => Outcome::Success {
                response: Some(String::from_utf8_lossy(&out).into_owned()),
            },
            Some(EX_TEMPFAIL) => Outcome::transient(message(format!("exit status {EX_TEMPFAIL}"))),
            Some(code) => Outcome::permanent(message(format!("exit status {code}"))),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = status.signal().unwrap_or_default();
                Outcome::transient(message(format!("killed by signal {signal}")))
            }
        }
    }
}

/// Reads a stream to its end, keeping the first `limit` bytes.
async fn read_head<R: AsyncRead + Unpin>(stream: Option<R>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// Reads a stream to its end, keeping about the last `limit` bytes.
async fn read_tail<R: AsyncRead + Unpin>(stream: Option<R>, limit: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut stream) = stream else {
        return kept;
    };
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * limit {
            kept.drain(..kept.len() - limit);
        }
    }
    kept
}

/// The last non-blank line of `bytes`, trimmed and bounded.
fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(line.chars().take(MAX_ERROR_CHARS).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(last_line(b"one\ntwo\n\n  \n"), Some("two".into()));
        assert_eq!(last_line(b"\r\n"), None);
    }
}
