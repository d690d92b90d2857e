//! Throughput of the http processor against a loopback server with a fixed latency:
//! retrylake's concurrent round beside the original Spark job's one-call-at-a-time loop, in one run.
//!
//!     cargo run --release --example http_bench -- [RECORDS] [CONCURRENCY] [LATENCY_MS]
//!
//! Defaults: 5000 records, concurrency 50, 20 ms latency. The target is at least 80% of
//! the ideal concurrency / latency calls per second.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use chrono::{TimeZone, Utc};
use futures::StreamExt;
use retrylake::{FixedClock, HttpProcessor, Processor, Queue, Record, RoundConfig};

fn start_server(latency: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new().route(
                "/",
                post(move || async move {
                    tokio::time::sleep(latency).await;
                    "ok"
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{addr}/")
}

#[tokio::main]
async fn main() -> retrylake::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let records = args.first().copied().unwrap_or(5000) as usize;
    let concurrency = args.get(1).copied().unwrap_or(50) as usize;
    let latency = Duration::from_millis(args.get(2).copied().unwrap_or(20));
    let url = start_server(latency);
    let processor = HttpProcessor::builder(&url)
        .pool_size(concurrency)
        .build()?;
    let ideal = concurrency as f64 / latency.as_secs_f64();

    // The original job's loop: one call at a time (a sample is enough to know its rate).
    let sample = (records / 20).clamp(20, 200);
    let start = Instant::now();
    for i in 0..sample {
        let record = Record {
            sample_id: format!("seq-{i}"),
            payload: Some("x".into()),
            retry_count: 0,
        };
        processor.process(&record).await;
    }
    let sequential = sample as f64 / start.elapsed().as_secs_f64();

    // The calls alone, as a round schedules them.
    let start = Instant::now();
    futures::stream::iter(0..records)
        .map(|i| {
            let processor = &processor;
            async move {
                let record = Record {
                    sample_id: format!("c-{i}"),
                    payload: Some("x".into()),
                    retry_count: 0,
                };
                processor.process(&record).await
            }
        })
        .buffer_unordered(concurrency)
        .count()
        .await;
    let calls_only = records as f64 / start.elapsed().as_secs_f64();

    // A whole round on Delta tables: read the due rows, call, commit.
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..records)
        .map(|i| format!("{{\"sample_id\":\"r-{i}\",\"payload\":\"x\"}}\n"))
        .collect();
    std::fs::write(&input, lines).expect("write input");
    let clock = Arc::new(FixedClock::new(
        Utc.with_ymd_and_hms(2025, 11, 24, 14, 0, 0).unwrap(),
    ));
    let mut queue = Queue::open(dir.path().join("data").to_str().unwrap())
        .await?
        .with_clock(clock);
    queue.enqueue(&input, &Default::default()).await?;
    let config = RoundConfig {
        concurrency,
        ..RoundConfig::default()
    };
    let start = Instant::now();
    let report = queue.run_round(&processor, &config).await?;
    let round_total = start.elapsed();
    assert_eq!(report.succeeded, records);
    let in_round = records as f64 / report.phases.process.as_secs_f64();

    println!(
        "http processor: {records} records, concurrency {concurrency}, server latency {latency:?}"
    );
    println!("ideal (concurrency / latency)    {ideal:>8.0} calls/s");
    println!("one call at a time (original)    {sequential:>8.0} calls/s");
    println!(
        "concurrent calls only            {calls_only:>8.0} calls/s  ({:.0}% of ideal, {:.1}x one at a time)",
        100.0 * calls_only / ideal,
        calls_only / sequential
    );
    println!(
        "calls inside a round             {in_round:>8.0} calls/s  ({:.0}% of ideal, {:.1}x one at a time)",
        100.0 * in_round / ideal,
        in_round / sequential
    );
    println!(
        "whole round                      {:>8.0} records/s (read {:?}, calls {:?}, commits {:?})",
        records as f64 / round_total.as_secs_f64(),
        report.phases.read,
        report.phases.process,
        report.phases.commit()
    );
    Ok(())
}
