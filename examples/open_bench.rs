//! How long the tables take to open after many rounds, with the checkpoints delta-rs writes
//! every 100 commits, beside the same tables with their checkpoints removed (every commit
//! replayed from JSON), measured in the same run.
//!
//!     cargo run --release --example open_bench -- [ROUNDS]      (default 1000)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use retrylake::store::{Store, Table};
use retrylake::{FixedClock, Queue, RetryPolicy, RoundConfig, SimulateProcessor};

async fn open_time(root: &str) -> retrylake::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let store = Store::open(root).await?;
        store.read::<retrylake::store::QueueRow>().await?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[tokio::main]
async fn main() -> retrylake::Result<()> {
    let rounds: i64 = std::env::args()
        .nth(1)
        .map_or(1000, |a| a.parse().expect("a number"));
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("data");
    let root = root.to_str().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: String = (0..rounds)
        .map(|i| format!("{{\"sample_id\":\"R-{i:06}\",\"payload\":\"x\"}}\n"))
        .collect();
    std::fs::write(&input, lines).expect("write input");

    // One record per round, each round a minute apart: `rounds` rounds of five commits.
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(FixedClock::new(start));
    let mut queue = Queue::open(root).await?.with_clock(clock.clone());
    queue.enqueue(&input, &Default::default()).await?;
    let config = RoundConfig {
        limit: 1,
        policy: RetryPolicy::builder().max_retries(0).build()?,
        ..RoundConfig::default()
    };
    let processor = SimulateProcessor::new(0.0, 1);
    let building = Instant::now();
    for round in 0..rounds {
        clock.set(start + chrono::Duration::minutes(round));
        queue.run_round(&processor, &config).await?;
    }
    let versions: Vec<String> = Table::ALL
        .iter()
        .map(|t| {
            format!(
                "{} v{}",
                t.name(),
                queue.store().table(*t).version().unwrap_or(0)
            )
        })
        .collect();
    println!(
        "{rounds} rounds in {:.1?} ({})",
        building.elapsed(),
        versions.join(", ")
    );

    let with = open_time(root).await?;
    let bare = dir.path().join("no-checkpoints");
    copy_dir(Path::new(root), &bare);
    for table in Table::ALL {
        let log = bare.join(table.name()).join("_delta_log");
        for entry in std::fs::read_dir(&log).expect("log") {
            let path = entry.expect("entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains("checkpoint") {
                std::fs::remove_file(path).expect("remove checkpoint");
            }
        }
    }
    let without = open_time(bare.to_str().unwrap()).await?;
    println!("open all four tables and read the queue, best of 5:");
    println!("  with checkpoints     {with:>10.1?}");
    println!(
        "  without checkpoints  {without:>10.1?}  ({:.1}x slower)",
        without.as_secs_f64() / with.as_secs_f64()
    );
    Ok(())
}
