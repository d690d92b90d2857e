//! Kills `retrylake run` again and again, at the commit protocol's failpoints and with
//! SIGKILL at random moments, and checks after each restart that no record is lost or
//! doubled. Run it with `scripts/crash-soak.sh [KILLS] [RECORDS]`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use retrylake::audit::audit;
use retrylake::store::Store;

const NOW: &str = "2025-01-01T00:00:00Z";
const FAILPOINTS: [&str; 4] = [
    "after-journal",
    "after-final",
    "after-dead-letter",
    "after-merge",
];

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
    cmd.env_remove("RETRYLAKE_FAILPOINT");
    cmd
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
    let input = dir.path().join("in.jsonl");
    let ids: Vec<String> = (0..records).map(|i| format!("K-{i:05}")).collect();
    let lines: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            format!(
                "{{\"sample_id\":\"{id}\",\"payload\":\"{}\"}}\n",
                if i % 11 == 0 { "" } else { "x" }
            )
        })
        .collect();
    std::fs::write(&input, lines).expect("write input");
    assert!(
        retrylake(&data, &["enqueue", input.to_str().unwrap(), "--now", NOW])
            .status()
            .expect("run")
            .success()
    );

    let drain = [
        "run",
        "--now",
        NOW,
        "--drain",
        "--limit",
        "25",
        "--transient-rate",
        "0.4",
    ];
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut at_failpoints, mut by_sigkill, mut worst_lost, mut worst_doubled) = (0, 0, 0, 0);
    let mut check = |label: &str, audit: &retrylake::audit::Audit| {
        let lost = ids.iter().filter(|id| !audit.ids.contains(*id)).count();
        let doubled =
            audit.doubled.len() + audit.unjournaled_finals.len() + audit.count_mismatches.len();
        worst_lost = worst_lost.max(lost);
        worst_doubled = worst_doubled.max(doubled);
        if lost + doubled > 0 {
            eprintln!("{label}: lost {lost}, doubled {doubled}: {audit:?}");
        }
    };
    for kill in 0..kills {
        if rng.random_bool(0.3) {
            let point = FAILPOINTS[rng.random_range(0..FAILPOINTS.len())];
            let _ = retrylake(&data, &drain)
                .env("RETRYLAKE_FAILPOINT", point)
                .status();
            at_failpoints += 1;
        } else {
            let mut child = retrylake(&data, &drain).spawn().expect("spawn");
            std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
            let _ = child.kill();
            let _ = child.wait();
            by_sigkill += 1;
        }
        // The next run recovers first; then the tables must be whole.
        let _ = retrylake(&data, &["run", "--now", NOW, "--limit", "1"]).status();
        let store = Store::open(&data).await?;
        check(&format!("after kill {}", kill + 1), &audit(&store).await?);
    }
    assert!(
        retrylake(&data, &["run", "--now", NOW, "--drain"])
            .status()
            .expect("run")
            .success()
    );
    let store = Store::open(&data).await?;
    let last = audit(&store).await?;
    check("after the final drain", &last);
    let waiting = store.read::<retrylake::store::QueueRow>().await?.len();

    println!(
        "kills done: {} ({at_failpoints} at commit failpoints, {by_sigkill} by SIGKILL at random moments)",
        at_failpoints + by_sigkill
    );
    println!(
        "records checked: {} after every restart, {waiting} left waiting at the end",
        ids.len()
    );
    println!("lost: {worst_lost}");
    println!("doubled: {worst_doubled}");
    if worst_lost + worst_doubled > 0 {
        std::process::exit(1);
    }
    Ok(())
}
