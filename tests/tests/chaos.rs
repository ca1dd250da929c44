//! Chaos: the real client runs commands (stdout and stderr streaming, stdin
//! echoed, a file written to and read from its storage folder, round trips
//! in flight) through a proxy that breaks connections at seeded points and
//! in seeded ways (`terminalwire_tests::chaos`); every run must end with
//! the command's exit status and its output byte-exact.
//!
//! The soak test is ignored; run it with, say,
//! `CHAOS_ITERATIONS=300 cargo test -p terminalwire-tests --test chaos -- --ignored --nocapture chaos_soak`
//! (`CHAOS_START` picks the first seed, `CHAOS_PARALLEL` the runs at a time,
//! `CHAOS_FAULTS` a comma-separated list of faults such as
//! `Reset,HalfCloseToClient`, `CHAOS_MAX_FAULTS` the most connections
//! broken in a run, `CHAOS_HOLD_MS` the longest stall or half-open time;
//! `CHAOS_SEED=0x...` replays one seed with the same settings).

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

use std::time::Duration;

use terminalwire_tests::TestServer;
use terminalwire_tests::chaos::{Fault, Scenario, Settings, Workload, run_scenario};

async fn run_seeds(seeds: Vec<u64>, settings: &Settings, parallel: usize) -> (u32, Vec<String>) {
    // Built before the clock of any run starts.
    let started = std::time::Instant::now();
    terminalwire_tests::client_binary();
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        eprintln!("client binary ready in {:?}", started.elapsed());
    }
    let server = TestServer::with_terminal(terminalwire_tests::chaos::terminal()).await;
    let addr = server.addr();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut runs = Vec::new();
    for seed in seeds {
        let mut scenario = Scenario::of(seed, settings);
        if std::env::var_os("CHAOS_CALM").is_some() {
            // The same run without faults (to tell a bug of resuming from
            // one of the workload).
            scenario.chaos.max_faults = 0;
            scenario.tail = None;
        }
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        runs.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = run_scenario(addr, scenario).await;
            drop(permit);
            if std::env::var_os("CHAOS_VERBOSE").is_some() {
                eprintln!(
                    "seed {seed:#x}: {:?} in {:?}",
                    result.as_ref().map_err(|_| "FAILED"),
                    started.elapsed()
                );
            }
            result
        }));
    }
    let mut fired = 0;
    let mut failures = Vec::new();
    for run in runs {
        match run.await.unwrap() {
            Ok(count) => fired += count,
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        eprintln!("all runs done in {:?}", started.elapsed());
    }
    (fired, failures)
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).unwrap(),
        None => value.parse().unwrap(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak test of minutes: run it by hand (see the file's comment)"]
async fn chaos_soak() {
    let faults: Vec<Fault> = match std::env::var("CHAOS_FAULTS") {
        Ok(list) => list
            .split(',')
            .map(|name| {
                *Fault::ALL
                    .iter()
                    .find(|fault| format!("{fault:?}") == name.trim())
                    .unwrap_or_else(|| panic!("unknown fault {name}"))
            })
            .collect(),
        Err(_) => Fault::ALL.to_vec(),
    };
    let seeds: Vec<u64> = match env_u64("CHAOS_SEED") {
        Some(seed) => vec![seed],
        None => {
            let start = env_u64("CHAOS_START").unwrap_or(1);
            let count = env_u64("CHAOS_ITERATIONS").unwrap_or(100);
            (start..start + count).collect()
        }
    };
    let parallel = env_u64("CHAOS_PARALLEL").unwrap_or(3) as usize;
    let max_faults = env_u64("CHAOS_MAX_FAULTS").unwrap_or(6) as u32;
    let max_hold = Duration::from_millis(env_u64("CHAOS_HOLD_MS").unwrap_or(1500));
    let count = seeds.len();
    let settings = Settings {
        faults,
        max_faults,
        max_hold,
        scale: env_u64("CHAOS_SCALE").unwrap_or(1),
    };
    let (fired, failures) = run_seeds(seeds, &settings, parallel).await;
    eprintln!(
        "{count} runs, {fired} connections broken, {} failures",
        failures.len()
    );
    for failure in &failures {
        eprintln!("{failure}\n");
    }
    assert!(failures.is_empty(), "{} failures", failures.len());
}

/// A bounded run for CI: a fixed set of seeds, small workloads, short holds;
/// every fault and workload appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_input_files_and_requests_survive_connections_broken_at_seeded_points() {
    let settings = Settings {
        faults: Fault::ALL.to_vec(),
        max_faults: 4,
        max_hold: Duration::from_millis(300),
        scale: 8,
    };
    let seeds: Vec<u64> = (0xc1_0000..0xc1_0000 + 24).collect();
    // Every workload, and stdout into a file and a pipe, come up.
    let scenarios: Vec<Scenario> = seeds
        .iter()
        .map(|seed| Scenario::of(*seed, &settings))
        .collect();
    for workload in [
        Workload::Stream,
        Workload::Stdin,
        Workload::File,
        Workload::Requests,
        Workload::Lines,
    ] {
        assert!(
            scenarios
                .iter()
                .any(|scenario| scenario.workload == workload),
            "no {workload:?} run"
        );
    }
    assert!(scenarios.iter().any(|scenario| scenario.stdout_to_file));
    assert!(scenarios.iter().any(|scenario| scenario.tail.is_some()));
    let (fired, failures) = run_seeds(seeds, &settings, 3).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(fired >= 24, "only {fired} connections broken");
}

/// Seeds of the soak test that found bugs, with its settings, one run at a
/// time: a chunk of stdout written into a file twice when the window grant
/// after it met the broken connection (0x2441, 0x2449; timing decides
/// whether the grant is what meets it: without the fix this failed two runs
/// in three; `session::tests::a_chunk_written_before_its_grant_failed_to_leave_is_not_written_again`
/// in the client is the deterministic test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_that_found_bugs_pass() {
    let settings = Settings {
        faults: Fault::ALL.to_vec(),
        max_faults: 8,
        max_hold: Duration::from_millis(1500),
        scale: 1,
    };
    let (_, failures) = run_seeds(vec![0x2441, 0x2449], &settings, 1).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
