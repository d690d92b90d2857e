//! The library gives what the binary uses: checked worker and table names, processors built
//! from options, queues opened with storage options, and the loop of rounds of `run` and
//! `worker`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use retrylake::processor::parse_header;
use retrylake::store::Table;
use retrylake::{
    BreakerConfig, Clock, Error, FixedClock, Guard, GuardConfig, ProcessorKind, ProcessorOptions,
    Queue, RoundConfig, RoundReport, Rounds, Shutdown, SimulateProcessor, StorageOptions, Until,
    WorkerName, run_rounds,
};

use super::util::{Env, write_samples};

const PAST: &str = "2020-01-01T00:00:00Z";

fn past() -> DateTime<Utc> {
    PAST.parse().unwrap()
}

/// A queue on a virtual clock at [`PAST`], holding `n` records due then.
async fn queue_with(env: &Env, n: usize) -> (Queue, Arc<FixedClock>, Vec<String>) {
    let clock = Arc::new(FixedClock::new(past()));
    let mut queue = Queue::open(&env.data().url)
        .await
        .unwrap()
        .with_clock(clock.clone());
    let (input, ids) = write_samples(env, "L", n);
    queue.enqueue(&input, &Default::default()).await.unwrap();
    (queue, clock, ids)
}

fn config(limit: usize) -> RoundConfig {
    RoundConfig {
        limit,
        ..RoundConfig::default()
    }
}

#[tokio::test]
async fn worker_names_are_checked_by_the_library() {
    for good in ["main", "w1", "w-1.eu_west", &"x".repeat(64)] {
        assert_eq!(WorkerName::from_str(good).unwrap().as_str(), good);
    }
    for bad in ["", "two words", "ü", "a/b", &"x".repeat(65)] {
        let err = WorkerName::from_str(bad).unwrap_err().to_string();
        assert!(
            err.contains("expected 1 to 64 letters, digits, '-', '_' or '.'"),
            "{bad}: {err}"
        );
    }
    let err = WorkerName::from_str("redrive").unwrap_err().to_string();
    assert!(err.contains("redrives are journaled under"), "{err}");
    let err = WorkerName::from_str("cancel").unwrap_err().to_string();
    assert!(err.contains("cancels are journaled under"), "{err}");

    let env = Env::new();
    let queue = Queue::open(&env.data().url).await.unwrap();
    assert_eq!(queue.worker(), "main");
    let queue = queue.with_worker("w2").unwrap();
    assert_eq!(queue.worker(), "w2");
    let Err(err) = queue.with_worker("redrive") else {
        panic!("the redrive worker's name was accepted");
    };
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

#[test]
fn table_names_parse() {
    for table in Table::ALL {
        assert_eq!(table.name().parse::<Table>().unwrap(), table);
    }
    let err = "nope".parse::<Table>().unwrap_err().to_string();
    assert!(err.contains("unknown table 'nope'"), "{err}");
    assert!(err.contains("dead_letter_queue"), "{err}");
}

#[test]
fn processors_are_built_and_checked_from_options() {
    assert_eq!(parse_header(" X-Team :  lab ").unwrap(), ("X-Team", "lab"));
    assert_eq!(parse_header("X-Empty:").unwrap(), ("X-Empty", ""));
    for bad in ["no colon", ": value", "  : value"] {
        let err = parse_header(bad).unwrap_err().to_string();
        assert!(err.contains("expects 'Name: value'"), "{bad}: {err}");
    }

    assert_eq!(
        "http".parse::<ProcessorKind>().unwrap(),
        ProcessorKind::Http
    );
    assert!("smtp".parse::<ProcessorKind>().is_err());
    assert!(!ProcessorKind::Simulate.breaker_by_default());
    assert!(ProcessorKind::Command.breaker_by_default());
    assert!(ProcessorKind::Http.breaker_by_default());

    let fails = |options: &ProcessorOptions| match options.build() {
        Ok(_) => panic!("built a processor from bad options"),
        Err(e) => e.to_string(),
    };
    assert!(
        ProcessorOptions::new(ProcessorKind::Simulate)
            .build()
            .is_ok()
    );
    let mut simulate = ProcessorOptions::new(ProcessorKind::Simulate);
    simulate.transient_probability = 1.5;
    assert!(fails(&simulate).contains("between 0 and 1"));
    simulate.transient_probability = f64::NAN;
    assert!(fails(&simulate).contains("between 0 and 1"));

    let mut command = ProcessorOptions::new(ProcessorKind::Command);
    assert!(fails(&command).contains("--processor command needs --command"));
    command.command = Some("cat".into());
    assert!(command.build().is_ok());

    let mut http = ProcessorOptions::new(ProcessorKind::Http);
    assert!(fails(&http).contains("--processor http needs --url"));
    http.url = Some("not a url".into());
    assert!(fails(&http).contains("invalid --url"));
    http.url = Some("http://127.0.0.1:9/results".into());
    http.headers = vec!["X-Team: lab".into()];
    assert!(http.build().is_ok());
    http.headers = vec!["no colon".into()];
    assert!(fails(&http).contains("--header expects 'Name: value'"));
    http.headers = vec!["Bad Name: x".into()];
    assert!(fails(&http).contains("invalid header name"));
    http.headers.clear();
    http.env_headers = vec!["Authorization: RETRYLAKE_TEST_NOT_SET_ANYWHERE".into()];
    let err = fails(&http);
    assert!(
        err.contains("--header-env Authorization")
            && err.contains("RETRYLAKE_TEST_NOT_SET_ANYWHERE is not set"),
        "{err}"
    );
    http.env_headers = vec!["PATH".into()];
    assert!(fails(&http).contains("--header-env expects 'Name: value'"));
    http.env_headers = vec!["X-Path: PATH".into()];
    assert!(http.build().is_ok());
    http.env_headers.clear();
    http.transient_statuses = vec![503, 700];
    assert!(fails(&http).contains("invalid transient status 700"));
}

#[tokio::test]
async fn a_round_refuses_a_breaker_that_can_never_open() {
    let env = Env::new();
    let (mut queue, _clock, _) = queue_with(&env, 3).await;
    let breaker = BreakerConfig {
        window: 10,
        min_calls: 20,
        ..BreakerConfig::default()
    };
    assert!(breaker.check().is_err());
    let never_opens = RoundConfig {
        guard: Guard::new(GuardConfig {
            breaker: Some(breaker),
            rate: None,
        }),
        ..config(10)
    };
    let err = queue
        .run_round(&SimulateProcessor::new(0.0, 1), &never_opens)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("--breaker-window 10") && message.contains("--breaker-min-calls 20"),
        "{message}"
    );
    // Nothing was claimed: the records are all still due (one without a payload).
    let report = queue
        .run_round(&SimulateProcessor::new(0.0, 1), &config(10))
        .await
        .unwrap();
    assert_eq!((report.succeeded, report.dead_lettered), (2, 1));
    // The default guard has the breaker on.
    assert!(GuardConfig::default().breaker.is_some());
}

#[tokio::test]
async fn a_queue_opens_with_storage_options() {
    let env = Env::new();
    let root = env.data().url;
    let err = Queue::open_existing_with(&root, StorageOptions::new())
        .await
        .err()
        .expect("no tables yet");
    assert!(matches!(err, Error::NoTables { .. }), "{err}");

    let mut queue = Queue::open_with(&root, StorageOptions::new())
        .await
        .unwrap();
    let (input, _) = write_samples(&env, "O", 3);
    queue.enqueue(&input, &Default::default()).await.unwrap();

    let mut reader = Queue::open_existing_with(&root, StorageOptions::new())
        .await
        .unwrap();
    assert_eq!(reader.status().await.unwrap().waiting, 3);
}

/// `run_rounds` drains on a virtual clock exactly as `run --drain --now` does.
#[tokio::test]
async fn run_rounds_drains_on_a_virtual_clock_as_the_cli_does() {
    let env = Env::new();
    let (mut queue, clock, ids) = queue_with(&env, 40).await;
    let rounds = Rounds::new(Until::Drained).virtual_clock(clock.clone());
    let mut reports: Vec<RoundReport> = Vec::new();
    run_rounds(
        &mut queue,
        &SimulateProcessor::new(0.3, 42),
        &RoundConfig::default(),
        &rounds,
        |r| {
            reports.push(r.clone());
            Ok::<(), Error>(())
        },
    )
    .await
    .unwrap();
    assert!(reports.len() > 1, "retries took more rounds");
    assert!(clock.now() > past(), "the clock jumped to the retries");
    let library = queue.status().await.unwrap();
    assert_eq!(library.waiting, 0);
    assert_eq!(library.final_count + library.dead, ids.len() as i64);

    let cli = Env::new();
    let (input, _) = write_samples(&cli, "L", 40);
    cli.ok(&["enqueue", input.to_str().unwrap(), "--now", PAST]);
    let out = cli.ok(&["run", "--now", PAST, "--drain", "--processor", "simulate"]);
    assert_eq!(out.lines().count(), reports.len(), "{out}");
    let status = cli.json(&["status"]);
    assert_eq!(status["final"], library.final_count);
    assert_eq!(status["dead"], library.dead);
}

#[tokio::test]
async fn run_rounds_stops_after_one_round_or_when_none_is_due() {
    let env = Env::new();
    let (mut queue, _clock, _) = queue_with(&env, 20).await;
    let processor = SimulateProcessor::new(0.0, 1);
    let mut count = 0;
    let one = Rounds::new(Until::OneRound);
    run_rounds(&mut queue, &processor, &config(5), &one, |_| {
        count += 1;
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(count, 1);
    assert_eq!(queue.status().await.unwrap().waiting, 15);

    // Rounds of 5 while more are due: three more, and the queue is empty.
    let mut processed = Vec::new();
    let none_due = Rounds::new(Until::NoneDue);
    run_rounds(&mut queue, &processor, &config(5), &none_due, |r| {
        processed.push(r.processed);
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(processed, [5, 5, 5]);
    assert_eq!(queue.status().await.unwrap().waiting, 0);
}

#[tokio::test]
async fn a_shutdown_or_an_error_stops_the_rounds() {
    let env = Env::new();
    let (mut queue, _clock, _) = queue_with(&env, 10).await;
    let processor = SimulateProcessor::new(0.0, 1);

    // Triggered before: no round at all.
    let shutdown = Shutdown::new();
    shutdown.trigger();
    let rounds = Rounds::new(Until::Stopped).shutdown(shutdown);
    let mut count = 0;
    run_rounds(&mut queue, &processor, &config(2), &rounds, |_| {
        count += 1;
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(count, 0);

    // Triggered during the first round: that round is finished, no other starts.
    let shutdown = Shutdown::new();
    let rounds = Rounds::new(Until::Stopped).shutdown(shutdown.clone());
    run_rounds(&mut queue, &processor, &config(2), &rounds, |_| {
        count += 1;
        shutdown.trigger();
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(count, 1);
    assert_eq!(queue.status().await.unwrap().waiting, 8);

    // An error from the callback ends the rounds and is returned.
    let rounds = Rounds::new(Until::Stopped);
    let err = run_rounds(&mut queue, &processor, &config(2), &rounds, |r| {
        Err(Error::InvalidConfig(format!("stop at round {:?}", r.round)))
    })
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("stop at round"), "{err}");
    assert_eq!(queue.status().await.unwrap().waiting, 6);

    // A worker polling an empty queue stops during its wait.
    let rounds = Rounds::new(Until::Stopped);
    let mut empty = queue;
    run_rounds(
        &mut empty,
        &processor,
        &config(100),
        &Rounds::new(Until::OneRound),
        |_| Ok::<(), Error>(()),
    )
    .await
    .unwrap();
    assert_eq!(empty.status().await.unwrap().waiting, 0);
    let shutdown = Shutdown::new();
    let rounds = rounds
        .poll(Duration::from_secs(30))
        .shutdown(shutdown.clone());
    let idle = Arc::new(AtomicUsize::new(0));
    let seen = idle.clone();
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        shutdown.trigger();
    });
    let start = Instant::now();
    run_rounds(&mut empty, &processor, &config(100), &rounds, |r| {
        assert_eq!(r.processed, 0);
        seen.fetch_add(1, Ordering::SeqCst);
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    stopper.await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the wait ended early"
    );
    assert_eq!(
        idle.load(Ordering::SeqCst),
        1,
        "one round, then the poll wait"
    );
}

/// Counts its calls; every call succeeds.
#[derive(Default)]
struct Counting(AtomicUsize);

#[async_trait::async_trait]
impl retrylake::Processor for Counting {
    async fn process(&self, _record: &retrylake::Record) -> retrylake::Outcome {
        self.0.fetch_add(1, Ordering::SeqCst);
        retrylake::Outcome::success("ok")
    }
}

/// Pause, resume, cancel, deadlines and dead-letter alerts, from the library, with the
/// tables audited after each.
#[tokio::test]
async fn the_operator_controls_work_from_the_library() {
    use retrylake::{Alerts, CancelFilter, DeadLetterHook};
    let env = Env::new();
    let (mut queue, clock, ids) = queue_with(&env, 30).await;
    let calls = Counting::default();
    // Paused: a round claims nothing, and says why.
    let pause = queue.pause(None, Some("maintenance")).await.unwrap();
    assert_eq!(pause.reason.as_deref(), Some("maintenance"));
    let report = queue.run_round(&calls, &config(100)).await.unwrap();
    assert_eq!(report.queue_paused, Some(pause.clone()));
    assert_eq!((report.processed, calls.0.load(Ordering::SeqCst)), (0, 0));
    assert_eq!(queue.status().await.unwrap().paused, Some(pause));
    // A pause that ends by itself: over once the clock passes it.
    queue.resume().await.unwrap();
    let until = past() + chrono::Duration::minutes(1);
    queue.pause(Some(until), None).await.unwrap();
    assert!(queue.paused().unwrap().is_some());
    clock.set(until);
    assert!(queue.paused().unwrap().is_none());
    clock.set(past());
    queue.resume().await.unwrap();
    // Cancel three records: dead letters with reason cancelled, never called.
    let filter = CancelFilter {
        ids: ids[1..4].to_vec(),
        reason: Some("bad batch".into()),
        ..CancelFilter::default()
    };
    let cancelled = queue.cancel(&filter).await.unwrap();
    assert_eq!((cancelled.cancelled, cancelled.held), (3, 0));
    assert!(
        queue.cancel(&CancelFilter::default()).await.is_err(),
        "no filter"
    );
    // A deadline of a minute, the clock two on: the rest expire, uncalled, but alerted.
    clock.set(past() + chrono::Duration::minutes(2));
    let dir = env.path("alerts");
    std::fs::create_dir_all(&dir).unwrap();
    let hook: DeadLetterHook = format!("cat > '{}'/\"$RETRYLAKE_IDEMPOTENCY_KEY\"", dir.display())
        .parse()
        .unwrap();
    let rounds = Rounds::new(Until::NoneDue).on_dead_letter(Alerts::new(&hook).unwrap());
    let deadline = RoundConfig {
        max_age: Some(Duration::from_secs(60)),
        ..config(100)
    };
    run_rounds(&mut queue, &calls, &deadline, &rounds, |_| {
        Ok::<(), Error>(())
    })
    .await
    .unwrap();
    assert_eq!(
        calls.0.load(Ordering::SeqCst),
        0,
        "expired records are not called"
    );
    let dead = queue.status().await.unwrap().dead_by_reason;
    let count = |reason: &str| {
        dead.iter()
            .find(|r| r.reason.as_deref() == Some(reason))
            .map_or(0, |r| r.count)
    };
    assert_eq!((count("cancelled"), count("expired")), (3, 23), "{dead:?}");
    assert_eq!(
        count("permanent"),
        4,
        "missing payloads are dead as before: {dead:?}"
    );
    let alerted: usize = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            let alert: serde_json::Value = serde_json::from_str(&text).unwrap();
            alert["dead_letters"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(alerted, 27, "the round's dead letters were alerted");
    let audit = queue.audit().await.unwrap();
    assert!(audit.is_clean(), "{audit:?}");
    assert_eq!(audit.ids.len(), ids.len());
}
