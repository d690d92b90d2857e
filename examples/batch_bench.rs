//! Throughput with batch calls: whole rounds (claim, calls, commits) on local Delta tables
//! against a loopback server whose latency grows with the batch, for several batch sizes
//! (`--call-batch`) and concurrencies, beside one call per record in the same run.
//!
//!     cargo run --release --example batch_bench -- [SECONDS_PER_CASE]
//!
//! The server answers a call of n records after 5 ms + 0.45 ms × n (a batch of 100 after
//! 50 ms, one record after 5.45 ms), with a result per record. Each case enqueues enough
//! records to keep it busy about SECONDS_PER_CASE (default 2) at its ideal rate, drains
//! them, and prints records per second, the share of the ideal (concurrency calls in
//! flight at all times) and the gain over one call per record at the same concurrency.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use chrono::{TimeZone, Utc};
use retrylake::{
    BatchProcessor, Calls, FixedClock, HttpProcessor, Processor, Queue, RoundConfig, Rounds, Until,
};
use serde_json::{Value, json};

/// How long the server takes to answer a call of `records` records.
fn latency(records: usize) -> Duration {
    Duration::from_micros(5_000 + 450 * records as u64)
}

fn start_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new().route(
                "/",
                post(|body: String| async move {
                    match serde_json::from_str::<Value>(&body) {
                        Ok(Value::Array(items)) => {
                            tokio::time::sleep(latency(items.len())).await;
                            let results: Vec<Value> = items
                                .iter()
                                .map(|i| json!({"id": i["id"], "outcome": "success"}))
                                .collect();
                            Value::Array(results).to_string()
                        }
                        _ => {
                            tokio::time::sleep(latency(1)).await;
                            "ok".to_owned()
                        }
                    }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/")
}

/// Enqueues `records` records in a fresh queue and drains it: records per second.
async fn drain(records: usize, calls: Calls<'_>, config: &RoundConfig) -> retrylake::Result<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("data");
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..records)
        .map(|i| format!("{{\"sample_id\":\"S-{i:07}\",\"payload\":{{\"value\":{i}}}}}\n"))
        .collect();
    std::fs::write(&input, lines).expect("write input");
    let start = Utc.with_ymd_and_hms(2025, 11, 24, 14, 0, 0).unwrap();
    let clock = std::sync::Arc::new(FixedClock::new(start));
    let mut queue = Queue::open(root.to_str().unwrap())
        .await?
        .with_clock(clock.clone());
    queue.enqueue(&input, &Default::default()).await?;
    let rounds = Rounds::new(Until::Drained).virtual_clock(clock);
    let began = Instant::now();
    let mut succeeded = 0;
    retrylake::run_rounds(&mut queue, calls, config, &rounds, |r| {
        succeeded += r.succeeded;
        Ok::<(), retrylake::Error>(())
    })
    .await?;
    assert_eq!(succeeded, records, "every record succeeded once");
    Ok(records as f64 / began.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> retrylake::Result<()> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .map_or(2.0, |a| a.parse().expect("seconds per case"));
    let url = start_server();
    println!(
        "server latency: 5 ms + 0.45 ms a record (a batch of 100: {} ms)",
        latency(100).as_millis()
    );
    println!(
        "{:>11} {:>11} {:>9} {:>12} {:>9} {:>10}",
        "call-batch", "concurrency", "records", "records/s", "of ideal", "vs 1/call"
    );
    for concurrency in [1, 4, 16] {
        let http = HttpProcessor::builder(&url)
            .pool_size(concurrency)
            .build()?;
        let mut per_record = 0.0;
        for batch in [None, Some(1), Some(10), Some(100), Some(1000)] {
            let size = batch.unwrap_or(1);
            let ideal = (concurrency * size) as f64 / latency(size).as_secs_f64();
            let records = ((ideal * seconds) as usize).clamp(200, 50_000);
            let config = RoundConfig {
                concurrency,
                call_batch: size,
                ..RoundConfig::default()
            };
            let calls = match batch {
                None => Calls::Each(&http as &dyn Processor),
                Some(_) => Calls::Batches(&http as &dyn BatchProcessor),
            };
            let rate = drain(records, calls, &config).await?;
            if batch.is_none() {
                per_record = rate;
            }
            println!(
                "{:>11} {:>11} {:>9} {:>12.0} {:>8.0}% {:>9.1}x",
                batch.map_or("per record".to_owned(), |b| b.to_string()),
                concurrency,
                records,
                rate,
                100.0 * rate / ideal,
                rate / per_record
            );
        }
    }
    Ok(())
}
