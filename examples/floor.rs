//! The physical floor of a whole workload: one delta-rs append, from memory, of every row
//! each table must receive over it, and nothing else (no parsing, no calls, no claims, no
//! recovery). `bench/bench.py` sets retrylake's total and each phase beside it.
//!
//!     cargo run --release --example floor -- INPUT.jsonl SCRATCH_DIR ATTEMPTS FINAL DEAD
//!
//! The rows are those of the input's N records: N enqueued into `retry_queue`, ATTEMPTS
//! journal rows in `attempts`, FINAL rows in `final_results`, DEAD in `dead_letter_queue`,
//! and the ATTEMPTS - FINAL - DEAD retried rows written back to `retry_queue`, each shaped
//! as retrylake writes it (payloads, errors, responses). Each table's rows are appended in
//! one commit to a fresh table, best of three. Prints one JSON object of seconds per table.

use std::time::Instant;

use chrono::{Duration, Utc};
use deltalake::arrow::array::RecordBatch;
use deltalake::protocol::SaveMode;
use retrylake::store::{
    AttemptKind, AttemptRow, DeadReason, DeadRow, Disposition, FinalRow, QueueRow, Rows, Store,
    Table,
};

/// Rows per batch handed to the append (the size of retrylake's files).
const CHUNK: usize = retrylake::store::FILE_ROWS;
const TRANSIENT: &str = "API Timeout / 503 Service Unavailable";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, dir, attempts, finals, dead] = args.as_slice() else {
        anyhow::bail!("usage: floor INPUT.jsonl SCRATCH_DIR ATTEMPTS FINAL DEAD");
    };
    let (attempts, finals, dead): (usize, usize, usize) =
        (attempts.parse()?, finals.parse()?, dead.parse()?);
    let retried = attempts
        .checked_sub(finals + dead)
        .ok_or_else(|| anyhow::anyhow!("ATTEMPTS is less than FINAL + DEAD"))?;
    let mut records: Vec<(String, Option<String>)> = Vec::new();
    for line in std::fs::read_to_string(input)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let id = v["sample_id"].as_str().unwrap_or_default().to_owned();
        let payload = v["payload"].as_str().map(str::to_owned);
        records.push((id, payload));
    }
    anyhow::ensure!(!records.is_empty(), "{input} holds no record");
    let now = Utc::now();
    let record = |i: usize| &records[i % records.len()];
    let queue_row = |i: usize, retry_count: i32| {
        let (id, payload) = record(i);
        QueueRow {
            sample_id: id.clone(),
            payload: payload.clone(),
            error_msg: (retry_count > 0).then(|| TRANSIENT.to_owned()),
            retry_count,
            process_after: now + Duration::minutes(2),
            enqueued_at: now,
            snoozes: 0,
        }
    };
    let attempt_row = |i: usize| {
        let (id, payload) = record(i);
        let (outcome, disposition) = if i < finals {
            (AttemptKind::Success, Disposition::Final)
        } else if i < finals + dead {
            (AttemptKind::Permanent, Disposition::Dead)
        } else {
            (AttemptKind::Transient, Disposition::Retry)
        };
        let failed = outcome != AttemptKind::Success;
        AttemptRow {
            round: 1,
            worker: "local".to_owned(),
            sample_id: id.clone(),
            retries_before: 0,
            outcome,
            error_msg: failed.then(|| TRANSIENT.to_owned()),
            started_at: now,
            finished_at: now,
            duration_ms: 0,
            process_after: (disposition == Disposition::Retry).then_some(now),
            disposition,
            reason: (disposition == Disposition::Dead).then_some(DeadReason::Permanent),
            retry_count: i32::from(failed),
            payload: payload.clone(),
            response: (!failed).then(|| "Processed OK".to_owned()),
            rule: None,
        }
    };
    let final_row = |i: usize| {
        let (id, payload) = record(i);
        FinalRow {
            sample_id: id.clone(),
            data: payload.clone(),
            processed_at: now,
            attempts: 1,
            response: Some("Processed OK".to_owned()),
        }
    };
    let dead_row = |i: usize| {
        let (id, payload) = record(i);
        DeadRow {
            sample_id: id.clone(),
            payload: payload.clone(),
            error_msg: Some("Missing Payload".to_owned()),
            retry_count: 0,
            failed_at: now,
            reason: DeadReason::Permanent,
        }
    };
    let mut out = serde_json::Map::new();
    let mut total = 0.0;
    let phases: [(&str, Table, usize); 5] = [
        ("enqueue", Table::RetryQueue, records.len()),
        ("journal", Table::Attempts, attempts),
        ("final", Table::FinalResults, finals),
        ("dead_letter", Table::DeadLetterQueue, dead),
        ("queue", Table::RetryQueue, retried),
    ];
    for (phase, table, rows) in phases {
        // Built before the clock starts and dropped before the next table's: only the
        // append is timed.
        let mut batches: Vec<RecordBatch> = Vec::new();
        for start in (0..rows).step_by(CHUNK) {
            let range = start..rows.min(start + CHUNK);
            batches.push(match phase {
                "enqueue" => {
                    QueueRow::to_batch(&range.map(|i| queue_row(i, 0)).collect::<Vec<_>>())?
                }
                "journal" => AttemptRow::to_batch(&range.map(attempt_row).collect::<Vec<_>>())?,
                "final" => FinalRow::to_batch(&range.map(final_row).collect::<Vec<_>>())?,
                "dead_letter" => DeadRow::to_batch(&range.map(dead_row).collect::<Vec<_>>())?,
                _ => QueueRow::to_batch(&range.map(|i| queue_row(i, 1)).collect::<Vec<_>>())?,
            });
        }
        let mut best = f64::MAX;
        // Best of three fresh tables: one append is short and the machine is shared.
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(dir);
            let store = Store::open(dir).await?;
            let start = Instant::now();
            if !batches.is_empty() {
                store
                    .table(table)
                    .clone()
                    .write(batches.clone())
                    .with_save_mode(SaveMode::Append)
                    .await?;
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        total += best;
        out.insert(format!("{phase}_s"), best.into());
        out.insert(format!("{phase}_rows"), rows.into());
    }
    out.insert("total_s".to_owned(), total.into());
    println!("{}", serde_json::Value::Object(out));
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
