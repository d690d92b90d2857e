//! A custom processor in Rust: deliver each record by your own code, let retrylake handle
//! the time locks, retries, dead letters and Delta commits.
//!
//!     cargo run --example custom_processor

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{TimeZone, Utc};
use retrylake::{FixedClock, Outcome, Processor, Queue, Record, RoundConfig};

/// Parses each payload as JSON and "stores" it; the store is down for each record's first
/// call (a transient failure), and records without a numeric `value` are rejected for good.
#[derive(Default)]
struct Warehouse {
    calls: Mutex<HashMap<String, u32>>,
}

#[async_trait]
impl Processor for Warehouse {
    async fn process(&self, record: &Record) -> Outcome {
        let first_call = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(record.sample_id.clone()).or_default();
            *n += 1;
            *n == 1
        };
        if first_call {
            return Outcome::transient("warehouse busy");
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(payload) {
            Ok(v) if v["value"].is_number() => {
                Outcome::success(format!("stored {}", record.idempotency_key()))
            }
            _ => Outcome::permanent("payload has no numeric 'value'"),
        }
    }
}

#[tokio::main]
async fn main() -> retrylake::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"sample_id\":\"A\",\"payload\":{\"value\":1}}\n{\"sample_id\":\"B\",\"payload\":{\"value\":\"n/a\"}}\n",
    )
    .expect("write input");

    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2025, 11, 24, 14, 0, 0).unwrap(),
    ));
    let mut queue = Queue::open(dir.path().join("data").to_str().unwrap())
        .await?
        .with_clock(clock.clone());
    queue.enqueue(&input, &Default::default()).await?;

    let warehouse = Warehouse::default();
    loop {
        let report = queue.run_round(&warehouse, &RoundConfig::default()).await?;
        println!("{report:?}");
        match report.next_due {
            Some(next) => clock.set(next),
            None => break,
        }
    }
    let status = queue.status().await?;
    println!(
        "final {}, dead {}: {:?}",
        status.final_count, status.dead, status.dead_by_error
    );
    assert_eq!((status.final_count, status.dead), (1, 1));
    Ok(())
}
