//! A queue late in its life: a trickle of new records, one round a minute on a virtual
//! clock, for many rounds, as a worker runs it (one process, tables kept open) and as a
//! `retrylake run` process per round runs it (measured by running the binary at marks).
//! Prints, around round 100, 1,000, 10,000 (and the last), the median cost of a worker's
//! round (its maintenance included), of a `run` process, and of `status`, and each
//! table's live data files, data files on disk, and `_delta_log` entries.
//!
//!     cargo build --release --bin retrylake --example longrun
//!     target/release/examples/longrun [ROUNDS] [--per-round N] [--maintain off] [--data URL]
//!         [--log-retention-secs S] [--vacuum-after-secs S] [--clean-log-every N]
//!
//! ROUNDS defaults to 1,200. `--data` runs on an object store (credentials from the
//! environment, as for the binary); files are counted only on a local disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use retrylake::store::Table;
use retrylake::{FixedClock, Maintenance, Queue, RoundConfig, SimulateProcessor};

/// Rounds measured around each mark.
const WINDOW: usize = 20;

struct Args {
    rounds: usize,
    per_round: usize,
    maintain: bool,
    data: Option<String>,
    /// Overrides of the maintenance's log retention (seconds) and cleaning interval.
    log_retention: Option<u64>,
    vacuum_after: Option<u64>,
    clean_every: Option<u64>,
}

fn args() -> Args {
    let mut args = Args {
        rounds: 1200,
        per_round: 5,
        maintain: true,
        data: None,
        log_retention: None,
        vacuum_after: None,
        clean_every: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--per-round" => args.per_round = it.next().expect("N").parse().expect("a number"),
            "--maintain" => args.maintain = it.next().as_deref() != Some("off"),
            "--data" => args.data = it.next(),
            "--log-retention-secs" => {
                args.log_retention = it.next().map(|n| n.parse().expect("secs"))
            }
            "--vacuum-after-secs" => {
                args.vacuum_after = it.next().map(|n| n.parse().expect("secs"))
            }
            "--clean-log-every" => args.clean_every = it.next().map(|n| n.parse().expect("N")),
            n => args.rounds = n.parse().expect("ROUNDS is a number"),
        }
    }
    args
}

fn binary() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    // target/<profile>/examples/longrun -> target/<profile>/retrylake
    me.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("retrylake")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Data files and `_delta_log` entries of a local table.
fn files(table: &Path) -> (usize, usize) {
    let count = |dir: &Path, pred: &dyn Fn(&str) -> bool| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| pred(&e.file_name().to_string_lossy()))
                .count()
        })
    };
    (
        count(table, &|n| n.ends_with(".parquet")),
        count(&table.join("_delta_log"), &|n| !n.starts_with('.')),
    )
}

#[tokio::main]
async fn main() -> retrylake::Result<()> {
    let args = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let root = args
        .data
        .clone()
        .unwrap_or_else(|| dir.path().join("data").to_str().unwrap().to_owned());
    let local = args.data.is_none();
    let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    let clock = Arc::new(FixedClock::new(start));
    let mut queue = Queue::open(&root).await?.with_clock(clock.clone());
    let mut maintenance = if args.maintain {
        Maintenance::default()
    } else {
        Maintenance::off()
    };
    if let Some(secs) = args.log_retention {
        maintenance.log_retention = Some(Duration::from_secs(secs));
    }
    if let Some(secs) = args.vacuum_after {
        maintenance.vacuum_after = Some(Duration::from_secs(secs));
    }
    if let Some(n) = args.clean_every {
        maintenance.clean_log_every = n;
    }
    let config = RoundConfig::default();
    let processor = SimulateProcessor::new(0.3, 7);
    let input = dir.path().join("in.jsonl");
    let marks: Vec<usize> = [100, 1_000, 10_000, 100_000]
        .into_iter()
        .filter(|&m| m + WINDOW <= args.rounds)
        .chain([args.rounds - WINDOW.min(args.rounds)])
        .collect();
    println!(
        "{} rounds, {} new records a round, one round a minute (virtual), maintenance {}",
        args.rounds,
        args.per_round,
        if args.maintain { "on" } else { "off" }
    );
    println!(
        "{:>7} {:>10} {:>10} {:>10}   files live/on disk/log entries: attempts final_results dead_letter_queue retry_queue",
        "round", "worker ms", "run ms", "status ms"
    );
    let mut worker_times = Vec::new();
    // Per round: opening work outside the phases (refresh, recovery), the claim, the
    // calls, the commits, and the upkeep.
    let mut parts: Vec<[Duration; 5]> = Vec::new();
    let mut first = None;
    for i in 0..args.rounds {
        let now: DateTime<Utc> = start + chrono::Duration::minutes(i as i64);
        clock.set(now);
        let lines: String = (0..args.per_round)
            .map(|k| format!("{{\"sample_id\":\"T-{i:07}-{k}\",\"payload\":\"x\"}}\n"))
            .collect();
        std::fs::write(&input, lines).expect("write input");
        queue.enqueue(&input, &Default::default()).await?;
        let took = Instant::now();
        let report = queue.run_round(&processor, &config).await?;
        let kept = Instant::now();
        queue.maintain(&maintenance).await?;
        let upkeep = kept.elapsed();
        let took = took.elapsed();
        let p = &report.phases;
        let inside = p.read + p.process + p.commit();
        let Some(&mark) = marks.iter().find(|&&m| i >= m && i < m + WINDOW) else {
            continue;
        };
        worker_times.push(took);
        parts.push([
            took - upkeep - inside,
            p.read,
            p.process,
            p.commit(),
            upkeep,
        ]);
        if i + 1 < mark + WINDOW {
            continue;
        }
        // The same round as a `run` process per round would make it, a few times.
        let mut runs = Vec::new();
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let took = Instant::now();
            let out = Command::new(binary())
                .args(["run", "--limit", "100", "--now", &now.to_rfc3339()])
                .arg("--data")
                .arg(&root)
                .output()
                .expect("run the binary");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            runs.push(took.elapsed());
            let took = Instant::now();
            queue.status().await?;
            statuses.push(took.elapsed());
        }
        let worker = median(std::mem::take(&mut worker_times));
        let split: Vec<String> = (0..5)
            .map(|k| {
                let m = median(parts.iter().map(|p| p[k]).collect());
                format!("{:.1}", m.as_secs_f64() * 1e3)
            })
            .collect();
        parts.clear();
        let run = median(runs);
        let status = median(statuses);
        let counts = Table::ALL
            .map(|t| {
                let active = queue
                    .store()
                    .table(t)
                    .snapshot()
                    .map_or(0, |s| s.log_data().num_files());
                if local {
                    let (f, l) = files(&Path::new(&root).join(t.name()));
                    format!("{active}/{f}/{l}")
                } else {
                    format!("{active}")
                }
            })
            .join(" ");
        println!(
            "{:>7} {:>10.1} {:>10.1} {:>10.1}   {counts}",
            mark + WINDOW / 2,
            worker.as_secs_f64() * 1e3,
            run.as_secs_f64() * 1e3,
            status.as_secs_f64() * 1e3,
        );
        println!(
            "{:>7} worker round: refresh+recover {} claim {} calls {} commits {} upkeep {} ms",
            "", split[0], split[1], split[2], split[3], split[4]
        );
        let (w0, r0) = *first.get_or_insert((worker, run));
        println!(
            "{:>7} {:>10.2}x {:>9.2}x   against the first mark",
            "",
            worker.as_secs_f64() / w0.as_secs_f64(),
            run.as_secs_f64() / r0.as_secs_f64()
        );
    }
    Ok(())
}
