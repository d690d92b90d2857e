//! Kills `retrylake run` again and again, at the commit protocol's failpoints and with
//! SIGKILL at random moments, while a second worker (`retrylake worker --worker soak-w2`)
//! runs throughout with a short lease and takes whatever the killed runs leave behind once
//! their leases end; checks after each restart that no record is lost or doubled. Run it
//! with `scripts/crash-soak.sh [KILLS] [RECORDS]`.
//!
//! Everything runs on the system clock with leases of seconds and backoffs under a second,
//! so the killed runner's leases do run out while the second worker is looking. The
//! records are enqueued in waves as the kills go on (racing the second worker's rounds),
//! so there is always work in flight.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use retrylake::store::{AttemptRow, QueueRow};
use retrylake::{Audit, Queue};

const FAILPOINTS: [&str; 4] = [
    "after-journal",
    "after-final",
    "after-dead-letter",
    "after-merge",
];
/// The killed runner's lease: after a kill the soak sometimes waits it out, so that the
/// second worker finds the records of a crashed round before their runner comes back.
const LEASE_SECS: f64 = 2.0;
/// A virtual clock past every lease and backoff, for the final drain.
const FAR: &str = "2100-01-01T00:00:00Z";
/// Kills between two waves of new records.
const KILLS_PER_WAVE: usize = 4;

fn binary() -> PathBuf {
    std::env::var_os("RETRYLAKE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/retrylake"))
}

fn retrylake(data: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg("--data")
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.env_remove("RETRYLAKE_FAILPOINT")
        .env_remove("RETRYLAKE_LOG");
    cmd
}

/// The simulator on the system clock, with retries due again within a second.
const ROUND: [&str; 6] = [
    "--processor=simulate",
    "--transient-rate=0.4",
    "--timeout=500ms",
    "--base-backoff=100ms",
    "--max-backoff=800ms",
    "--poll=200ms",
];

/// The runner the soak kills: rounds of 25 under a 2 s lease.
fn first_runner(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["run", "--worker=soak-w1", "--lease=2s", "--rate=100/s"];
    args.extend(ROUND);
    args.extend(extra);
    args.into_iter().map(str::to_owned).collect()
}

/// A background process killed and reaped when dropped, whatever path the soak leaves by.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for `child`, killing it after `timeout`.
fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Enqueues `ids` (every 11th with an empty payload) from a file under `dir`; returns how
/// many attempts failed before one succeeded.
fn enqueue(data: &str, dir: &Path, wave: usize, ids: &[String]) -> usize {
    let input = dir.join(format!("wave-{wave}.jsonl"));
    let lines: String = ids
        .iter()
        .map(|id| {
            let n: usize = id.trim_start_matches("K-").parse().unwrap_or(1);
            let payload = if n.is_multiple_of(11) { "" } else { "x" };
            format!("{{\"sample_id\":\"{id}\",\"payload\":\"{payload}\"}}\n")
        })
        .collect();
    std::fs::write(&input, lines).expect("write input");
    let mut failures = 0;
    loop {
        let out = retrylake(data, &["enqueue", input.to_str().unwrap()])
            .stderr(Stdio::piped())
            .output()
            .expect("run enqueue");
        if out.status.success() {
            return failures;
        }
        failures += 1;
        eprintln!(
            "enqueue of wave {wave} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        assert!(failures < 20, "enqueue keeps failing");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What an audit taken while the second worker runs may show of that worker's round in
/// flight: a record journaled and appended to final_results or dead_letter_queue whose
/// lease file in retry_queue the round has not removed yet (with the record's old retry
/// count). Such a record sits in retry_queue under a lease that has not ended. Everything
/// else counts; the final audit, with every process stopped, counts everything.
fn settled(mut audit: Audit, queue: &[QueueRow]) -> Audit {
    let now = chrono::Utc::now();
    let leased: HashSet<&str> = queue
        .iter()
        .filter(|q| q.process_after > now)
        .map(|q| q.sample_id.as_str())
        .collect();
    let queued: HashSet<&str> = queue.iter().map(|q| q.sample_id.as_str()).collect();
    // Gone from the queue since the audit read it: the round in flight has settled.
    let in_flight = |id: &str| leased.contains(id) || !queued.contains(id);
    audit.doubled.retain(|(id, places)| {
        !(places.len() == 2 && places.contains(&"retry_queue") && in_flight(id))
    });
    audit.count_mismatches.retain(|id| !in_flight(id));
    audit
}

#[tokio::main]
async fn main() -> retrylake::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let kills = args.first().copied().unwrap_or(40);
    let records = args.get(1).copied().unwrap_or(500);
    assert!(
        binary().exists(),
        "build the binary first (cargo build), or set RETRYLAKE_BIN"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data").to_str().unwrap().to_owned();
    assert!(retrylake(&data, &["init"]).status().expect("run").success());
    let all: Vec<String> = (0..records).map(|i| format!("K-{i:05}")).collect();
    let waves = kills.div_ceil(KILLS_PER_WAVE).max(1);
    let mut pending = all.chunks(records.div_ceil(waves).max(1)).enumerate();
    let mut enqueued: Vec<String> = Vec::new();
    let mut enqueue_failures = 0;

    // The second worker: a lease of its own, a slower pace (so the killed runner finds
    // work too), running from before the first kill to after the last.
    let w2_log = dir.path().join("soak-w2.log");
    let mut w2_args = vec![
        "worker",
        "--worker=soak-w2",
        "--lease=3s",
        "--limit=10",
        "--rate=20/s",
    ];
    w2_args.extend(ROUND);
    let mut w2 = Reaped(
        retrylake(&data, &w2_args)
            .stderr(std::fs::File::create(&w2_log).expect("log file"))
            .spawn()
            .expect("spawn the second worker"),
    );
    let mut w2_failed = false;

    let mut rng = SmallRng::seed_from_u64(7);
    let (mut at_failpoints, mut by_sigkill, mut worst_lost, mut worst_doubled) = (0, 0, 0, 0);
    let mut check = |label: &str, expected: &[String], audit: &Audit| {
        let lost = expected
            .iter()
            .filter(|id| !audit.ids.contains(*id))
            .count();
        let doubled =
            audit.doubled.len() + audit.unjournaled_finals.len() + audit.count_mismatches.len();
        worst_lost = worst_lost.max(lost);
        worst_doubled = worst_doubled.max(doubled);
        if lost + doubled > 0 {
            let few = |v: &[String]| v[..v.len().min(5)].join(", ");
            let missing: Vec<String> = expected
                .iter()
                .filter(|id| !audit.ids.contains(*id))
                .cloned()
                .collect();
            let twice: Vec<String> = audit
                .doubled
                .iter()
                .map(|(id, places)| format!("{id} in {}", places.join(" + ")))
                .collect();
            eprintln!(
                "{label}: lost {lost}, doubled {doubled}: missing [{}]; doubled [{}]; final without a journaled success [{}]; retry count off the journal [{}]",
                few(&missing),
                few(&twice),
                few(&audit.unjournaled_finals),
                few(&audit.count_mismatches)
            );
        }
    };
    for kill in 0..kills {
        if kill.is_multiple_of(KILLS_PER_WAVE)
            && let Some((n, wave)) = pending.next()
        {
            enqueue_failures += enqueue(&data, dir.path(), n, wave);
            enqueued.extend(wave.iter().cloned());
        }
        let drain = first_runner(&["--drain", "--limit=25"]);
        let drain: Vec<&str> = drain.iter().map(String::as_str).collect();
        if rng.random_bool(0.3) {
            let point = FAILPOINTS[rng.random_range(0..FAILPOINTS.len())];
            let mut child = retrylake(&data, &drain)
                .env("RETRYLAKE_FAILPOINT", point)
                .spawn()
                .expect("spawn");
            // An empty queue lets it end without reaching the failpoint; a long wait for
            // due records is cut short.
            wait(&mut child, Duration::from_secs(10));
            at_failpoints += 1;
        } else {
            let mut child = retrylake(&data, &drain).spawn().expect("spawn");
            std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
            let _ = child.kill();
            let _ = child.wait();
            by_sigkill += 1;
        }
        // Half the time the killed runner's lease ends before it comes back, while the
        // second worker is looking.
        if rng.random_bool(0.5) {
            std::thread::sleep(Duration::from_secs_f64(LEASE_SECS + 0.5));
        }
        // The next run recovers first; then the tables must be whole.
        let once = first_runner(&["--limit=1"]);
        let once: Vec<&str> = once.iter().map(String::as_str).collect();
        let _ = retrylake(&data, &once).status();
        let mut tables = Queue::open(&data).await?;
        let found = tables.audit().await?;
        let queue = tables.store().read::<QueueRow>().await?;
        check(
            &format!("after kill {}", kill + 1),
            &enqueued,
            &settled(found, &queue),
        );
        if !w2_failed && let Ok(Some(status)) = w2.0.try_wait() {
            eprintln!("the second worker died at kill {}: {status}", kill + 1);
            w2_failed = true;
        }
    }
    for (n, wave) in pending {
        enqueue_failures += enqueue(&data, dir.path(), n, wave);
        enqueued.extend(wave.iter().cloned());
    }

    // Stop the second worker (it finishes its round), then drain what is left.
    if !w2_failed {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w2.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        match wait(&mut w2.0, Duration::from_secs(60)) {
            Some(status) if status.success() => {}
            other => {
                eprintln!("the second worker did not stop cleanly: {other:?}");
                w2_failed = true;
            }
        }
    }
    if w2_failed {
        let log = std::fs::read_to_string(&w2_log).unwrap_or_default();
        eprintln!("soak-w2's stderr:\n{log}");
    }
    let drain = first_runner(&["--drain", "--now", FAR]);
    let drain: Vec<&str> = drain.iter().map(String::as_str).collect();
    assert!(retrylake(&data, &drain).status().expect("run").success());
    let mut tables = Queue::open(&data).await?;
    let last = tables.audit().await?;
    check("after the final drain", &all, &last);
    let waiting = tables.store().read::<QueueRow>().await?.len();
    let attempts = tables.store().read::<AttemptRow>().await?;
    let by_w2 = attempts.iter().filter(|a| a.worker == "soak-w2").count();
    eprintln!(
        "attempts journaled: {} by the killed runner, {by_w2} by the second worker",
        attempts.len() - by_w2
    );

    println!(
        "kills done: {} ({at_failpoints} at commit failpoints, {by_sigkill} by SIGKILL at random moments)",
        at_failpoints + by_sigkill
    );
    println!(
        "records checked: {} after every restart, {waiting} left waiting at the end",
        all.len()
    );
    println!("lost: {worst_lost}");
    println!("doubled: {worst_doubled}");
    if enqueue_failures > 0 {
        eprintln!("enqueues that failed while the workers ran: {enqueue_failures}");
    }
    if worst_lost + worst_doubled > 0 || enqueue_failures > 0 || w2_failed {
        std::process::exit(1);
    }
    Ok(())
}
