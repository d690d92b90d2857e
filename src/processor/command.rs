//! The `command` processor: one `sh -c CMD` child per record.
//!
//! The contract: the payload on stdin; `RETRYLAKE_SAMPLE_ID`, `RETRYLAKE_ATTEMPT` and
//! `RETRYLAKE_IDEMPOTENCY_KEY` in the environment; exit 0 is success (stdout becomes the
//! response), exit 75 (`EX_TEMPFAIL`) is transient, any other exit is permanent, death by a
//! signal is transient; the last line of stderr is the error message. Called with a batch,
//! the command runs once for all its records (see [`CommandProcessor`]'s
//! [`BatchProcessor`] implementation).

use std::process::Stdio;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::batch::{Answers, MAX_BATCH_ANSWER, batch_key, read_item, record_json};
use super::http::DEFAULT_TRANSIENT_STATUSES;
use super::{BatchProcessor, MAX_RESPONSE_BYTES, Processor, Record};
use crate::outcome::{ErrorClass, Outcome};

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

/// What a finished child left: the head of its stdout, the tail of its stderr, and how it
/// ended.
struct Finished {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: std::process::ExitStatus,
}

impl CommandProcessor {
    /// Runs the command with `env` set and `input` on stdin, keeping at most `stdout_limit`
    /// bytes of its stdout: what it left, or the transient failure of a command that could
    /// not be run.
    async fn run(
        &self,
        env: &[(&str, String)],
        input: Vec<u8>,
        stdout_limit: usize,
    ) -> Result<Finished, Outcome> {
        let mut command = Command::new("sh");
        command.arg("-c").arg(&self.command);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Outcome::transient(format!("could not start sh: {e}")))?;
        // A process id always fits an i32 (pid_max is at most 2^22); one that did not would
        // name no group to kill.
        let pgid = child.id().and_then(|id| i32::try_from(id).ok());
        let mut guard = GroupGuard(pgid.map(Pid::from_raw));

        let mut stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(stdin) = stdin.as_mut() {
                // A child that does not read its stdin closes the pipe: not an error.
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            }
            drop(stdin);
        };
        let (_, stdout, stderr, status) = tokio::join!(
            feed,
            read_head(stdout, stdout_limit),
            read_tail(stderr, MAX_STDERR),
            child.wait()
        );
        let status =
            status.map_err(|e| Outcome::transient(format!("could not wait for command: {e}")))?;
        guard.0 = None;
        Ok(Finished {
            stdout,
            stderr,
            status,
        })
    }
}

impl Finished {
    /// The outcome its exit status gives: `on_success` for exit 0, transient for exit 75
    /// or death by a signal, permanent for any other exit; a failure's message is the last
    /// line of stderr.
    fn outcome(&self, on_success: impl FnOnce() -> Outcome) -> Outcome {
        let message = |fallback: String| last_line(&self.stderr).unwrap_or(fallback);
        match self.status.code() {
            Some(0) => on_success(),
            Some(EX_TEMPFAIL) => Outcome::transient(message(format!("exit status {EX_TEMPFAIL}")))
                .with_class(ErrorClass::Exit(EX_TEMPFAIL)),
            Some(code) => Outcome::permanent(message(format!("exit status {code}")))
                .with_class(ErrorClass::Exit(code)),
            None => {
                use std::os::unix::process::ExitStatusExt;
                let signal = self.status.signal().unwrap_or_default();
                Outcome::transient(message(format!("killed by signal {signal}")))
            }
        }
    }
}

#[async_trait]
impl Processor for CommandProcessor {
    async fn process(&self, record: &Record) -> Outcome {
        let env = [
            ("RETRYLAKE_SAMPLE_ID", record.sample_id.clone()),
            ("RETRYLAKE_ATTEMPT", record.retry_count.to_string()),
            ("RETRYLAKE_IDEMPOTENCY_KEY", record.idempotency_key()),
        ];
        let payload = record.payload.clone().unwrap_or_default().into_bytes();
        match self.run(&env, payload, MAX_RESPONSE_BYTES).await {
            Ok(finished) => finished.outcome(|| Outcome::Success {
                response: Some(String::from_utf8_lossy(&finished.stdout).into_owned()),
            }),
            Err(failed) => failed,
        }
    }
}

/// Called with a batch, it runs the command once: JSON Lines of `{"id", "data",
/// "attempt", "idempotency_key"}` on stdin, `RETRYLAKE_BATCH_SIZE` and the batch's
/// `RETRYLAKE_IDEMPOTENCY_KEY` in the environment. Each line of its stdout answers one
/// record (see [`read_item`]), whatever the exit status. A record no line answers fails
/// transiently, its error the last line of stderr (or the exit status; after exit 0: no
/// answer); a line that cannot be read is named, by its number, in those records' error.
#[async_trait]
impl BatchProcessor for CommandProcessor {
    async fn process_batch(&self, records: &[Record]) -> Vec<Outcome> {
        let mut input = Vec::new();
        for record in records {
            // Writing JSON into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut input, &record_json(record));
            input.push(b'\n');
        }
        let env = [
            ("RETRYLAKE_BATCH_SIZE", records.len().to_string()),
            ("RETRYLAKE_IDEMPOTENCY_KEY", batch_key(records)),
        ];
        let limit = MAX_RESPONSE_BYTES
            .saturating_mul(records.len())
            .min(MAX_BATCH_ANSWER);
        let finished = match self.run(&env, input, limit).await {
            Ok(finished) => finished,
            Err(failed) => return vec![failed; records.len()],
        };
        let mut answers = Answers::new(records);
        let stdout = String::from_utf8_lossy(&finished.stdout);
        for (n, line) in stdout.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|item| read_item(&item, |s| DEFAULT_TRANSIENT_STATUSES.contains(&s)));
            match item {
                Ok((id, outcome)) => answers.answer(&id, outcome),
                Err(e) => answers.refuse(|| format!("answer line {} of the command", n + 1), e),
            }
        }
        // A record the command left unanswered fails transiently, whatever the exit
        // status: the record that made it give up cannot be told from the ones it never
        // read, who should not die with it (a record is failed permanently by its line).
        answers.finish(|| {
            match finished
                .outcome(|| Outcome::transient("the command gave no answer for this record"))
            {
                Outcome::Permanent { error, class } => Outcome::Transient {
                    error,
                    retry_after: None,
                    class,
                },
                outcome => outcome,
            }
        })
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
