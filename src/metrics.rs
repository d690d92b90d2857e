//! Prometheus metrics of a worker: attempts by outcome, queue depth, due now, dead letters,
//! round duration and last round time, served as text on `/metrics`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::round::RoundReport;
use crate::status::Status;

/// What a worker has done so far.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    rounds: u64,
    success: u64,
    transient: u64,
    permanent: u64,
    conflicts: u64,
    deferred: u64,
    snoozes: u64,
    snoozed: i64,
    paused: bool,
    waiting: i64,
    due: i64,
    dead: i64,
    last_round_seconds: f64,
    last_round_at: Option<DateTime<Utc>>,
    queue_paused: bool,
    dead_by_reason: Vec<(String, i64)>,
    alerts_delivered: u64,
    alerts_failed: u64,
}

impl Metrics {
    /// Counts a finished round and the queue's state after it.
    pub fn record(&mut self, report: &RoundReport, status: &Status, at: DateTime<Utc>) {
        self.conflicts += report.conflicts;
        self.deferred += report.deferred as u64;
        self.snoozes += report.snoozed as u64;
        self.paused = report.paused_until.is_some_and(|until| until > at);
        if report.round.is_some() {
            self.rounds += 1;
            self.success += report.outcomes.success as u64;
            self.transient += report.outcomes.transient as u64;
            self.permanent += report.outcomes.permanent as u64;
            let phases = report.phases;
            self.last_round_seconds = phases.total().as_secs_f64();
            self.last_round_at = Some(at);
        }
        self.waiting = status.waiting;
        self.due = status.due;
        self.snoozed = status.snoozed;
        self.dead = status.dead;
        self.queue_paused = status.paused.is_some();
        self.dead_by_reason = status
            .dead_by_reason
            .iter()
            .map(|r| (r.reason.clone().unwrap_or_default(), r.count))
            .collect();
    }

    /// Counts dead-letter alerts delivered (`--on-dead-letter`).
    pub fn alerts_delivered(&mut self, alerts: u64) {
        self.alerts_delivered += alerts;
    }

    /// Counts a failed delivery of a dead-letter alert (tried again later).
    pub fn alert_failed(&mut self) {
        self.alerts_failed += 1;
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "retrylake_rounds_total",
            "counter",
            "Rounds that processed records.",
            &[("", self.rounds.to_string())],
        );
        metric(
            "retrylake_attempts_total",
            "counter",
            "Attempts by outcome.",
            &[
                ("{outcome=\"success\"}", self.success.to_string()),
                ("{outcome=\"transient\"}", self.transient.to_string()),
                ("{outcome=\"permanent\"}", self.permanent.to_string()),
            ],
        );
        metric(
            "retrylake_commit_conflicts_total",
            "counter",
            "Commits that lost a race with another worker and were tried again.",
            &[("", self.conflicts.to_string())],
        );
        metric(
            "retrylake_deferred_total",
            "counter",
            "Claimed records not called because calls were paused (breaker, Retry-After).",
            &[("", self.deferred.to_string())],
        );
        metric(
            "retrylake_snoozes_total",
            "counter",
            "Failures a rule snoozed: the record waits, no retry counted.",
            &[("", self.snoozes.to_string())],
        );
        metric(
            "retrylake_snoozed",
            "gauge",
            "Records in retry_queue waiting out a snooze (not a retry).",
            &[("", self.snoozed.to_string())],
        );
        metric(
            "retrylake_calls_paused",
            "gauge",
            "1 while calls are paused (circuit breaker open or a Retry-After pause).",
            &[("", u8::from(self.paused).to_string())],
        );
        metric(
            "retrylake_queue_depth",
            "gauge",
            "Records in retry_queue.",
            &[("", self.waiting.to_string())],
        );
        metric(
            "retrylake_due",
            "gauge",
            "Records past their time lock.",
            &[("", self.due.to_string())],
        );
        metric(
            "retrylake_dead_letters",
            "gauge",
            "Records in dead_letter_queue.",
            &[("", self.dead.to_string())],
        );
        let by_reason: Vec<(String, String)> = self
            .dead_by_reason
            .iter()
            .map(|(reason, n)| (format!("{{reason=\"{}\"}}", label(reason)), n.to_string()))
            .collect();
        let by_reason: Vec<(&str, String)> = by_reason
            .iter()
            .map(|(l, n)| (l.as_str(), n.clone()))
            .collect();
        metric(
            "retrylake_dead_letters_by_reason",
            "gauge",
            "Records in dead_letter_queue by reason (permanent, retries_exhausted, \
             invalid_input, cancelled, expired).",
            &by_reason,
        );
        metric(
            "retrylake_queue_paused",
            "gauge",
            "1 while the queue is paused (retrylake pause).",
            &[("", u8::from(self.queue_paused).to_string())],
        );
        metric(
            "retrylake_dead_letter_alerts_total",
            "counter",
            "Dead-letter alerts (--on-dead-letter) by result; a failed one is tried again.",
            &[
                ("{result=\"delivered\"}", self.alerts_delivered.to_string()),
                ("{result=\"failed\"}", self.alerts_failed.to_string()),
            ],
        );
        metric(
            "retrylake_round_duration_seconds",
            "gauge",
            "Wall time of the last round.",
            &[("", format!("{:.6}", self.last_round_seconds))],
        );
        let last = self
            .last_round_at
            .map_or(0.0, |t| t.timestamp_millis() as f64 / 1000.0);
        metric(
            "retrylake_last_round_timestamp_seconds",
            "gauge",
            "When the last round finished (Unix time).",
            &[("", format!("{last:.3}"))],
        );
        out
    }
}

/// A label value as the Prometheus text format writes it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `metrics` on `http://ADDR/metrics` until the process ends. `ADDR` is `host:port`,
/// or a bare port (`9100`, `:9100`) bound to 127.0.0.1. Returns the bound address.
pub async fn serve(addr: &str, metrics: Arc<Mutex<Metrics>>) -> Result<std::net::SocketAddr> {
    let addr = addr.trim();
    let addr = if addr.chars().all(|c| c.is_ascii_digit() || c == ':') {
        format!("127.0.0.1:{}", addr.trim_start_matches(':'))
    } else {
        addr.to_owned()
    };
    let listener = tokio::net::TcpListener::bind(&addr).await.map_err(|e| {
        Error::InvalidConfig(format!("cannot listen on --metrics-addr {addr}: {e}"))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::InvalidConfig(format!("--metrics-addr {addr}: {e}")))?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let text = metrics.lock().expect("metrics lock").render();
            async move { ([("content-type", "text/plain; version=0.0.4")], text) }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics server stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snoozes_are_counted_apart_from_retries() {
        let report = RoundReport {
            round: Some(1),
            retried: 1,
            snoozed: 2,
            ..RoundReport::default()
        };
        let status = Status {
            waiting: 3,
            due: 0,
            snoozed: 2,
            avg_retries: None,
            max_retries: None,
            next_due: None,
            final_count: 0,
            dead: 0,
            dead_by_error: Vec::new(),
            dead_by_reason: vec![crate::ReasonCount {
                reason: Some("we\"ird\n".into()),
                count: 2,
            }],
            paused: None,
            needed_retry: 0,
            recovered: 0,
            recovered_share: None,
        };
        let mut metrics = Metrics::default();
        metrics.record(&report, &status, Utc::now());
        metrics.record(&report, &status, Utc::now());
        let text = metrics.render();
        assert!(text.contains("\nretrylake_snoozes_total 4\n"), "{text}");
        assert!(text.contains("\nretrylake_snoozed 2\n"), "{text}");
        assert!(
            text.contains("\nretrylake_dead_letters_by_reason{reason=\"we\\\"ird\\n\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("\nretrylake_queue_paused 0\n"), "{text}");
    }
}
