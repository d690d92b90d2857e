//! The physical limit of a round: one delta-rs append of the input's rows to a fresh
//! `retry_queue`, with nothing else (no parsing, no calls, no journal), best of three.
//! `bench/bench.py` sets each phase of a round beside it. Prints `{"rows": N, "append_s": S}`.
//!
//!     cargo run --release --example append_limit -- INPUT.jsonl SCRATCH_DIR

use std::time::Instant;

use chrono::Utc;
use deltalake::protocol::SaveMode;
use retrylake::store::{QueueRow, Rows, Store, Table};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(dir)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: append_limit INPUT.jsonl SCRATCH_DIR");
    };
    let now = Utc::now();
    let mut rows = Vec::new();
    for line in std::fs::read_to_string(&input)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        rows.push(QueueRow {
            sample_id: v["sample_id"].as_str().unwrap_or_default().to_owned(),
            payload: v["payload"].as_str().map(str::to_owned),
            error_msg: None,
            retry_count: 0,
            process_after: now,
            enqueued_at: now,
            snoozes: 0,
        });
    }
    let batch = QueueRow::to_batch(&rows)?;
    // Best of three fresh tables: one append is short and the machine is shared.
    let mut append_s = f64::MAX;
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).await?;
        let table = store.table(Table::RetryQueue).clone();
        let start = Instant::now();
        table
            .write(vec![batch.clone()])
            .with_save_mode(SaveMode::Append)
            .await?;
        append_s = append_s.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({"rows": rows.len(), "append_s": append_s})
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
