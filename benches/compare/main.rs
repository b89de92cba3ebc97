//! jetevents against hand-written raw async-nats, same server, same run.
//!
//! `cargo bench --bench compare` runs every scenario at full size; see
//! BENCHMARKS.md for what each scenario does, the environment variables that
//! size them (`JE_BENCH_QUICK=1` for a run under two minutes) and results.
//!
//! Each scenario runs both sides in alternating order for several rounds on
//! one nats-server (binary backend of jetevents-testcontainers, JetStream
//! file storage) and reports the median, with the ratio jetevents/raw.
//!
//! Scenarios 7-10 are opt-in (`JE_BENCH_SCENARIOS=7,8,9,10`): 7 observability
//! on/off, 8 consumer instances of one group (`JE_BENCH_INSTANCES`), 9 a
//! 3-node cluster with R3 streams, 10 heap per in-flight event; 11
//! (`JE_BENCH_SCENARIOS=11`) binary against structured content mode; 12
//! (`JE_BENCH_SCENARIOS=12`) the publish ceiling: scenario 1's messages by
//! the cheapest clients, acked and unacked, against scenario 1's raw side. Every
//! scenario runs on a multi-thread runtime, or a current-thread one with
//! `JE_BENCH_THREADS=0`.
//!
//! `JE_BENCH_SPAWN=1` runs the measured work of every scenario, both sides
//! alike, in a task spawned on the runtime (awaited through its `JoinHandle`)
//! instead of in `block_on` on the main thread. On a multi-thread runtime the
//! main thread is not a worker, so by default the publishers run beside
//! async-nats' connection tasks (as `#[tokio::main]` code does), while
//! spawned they run on a worker with them (as a service's handlers do). The
//! child processes of scenarios 5, 7 and 10 inherit the knob and place their
//! work the same way; scenario 7's floor rows always run spawned. The run's
//! `settings:` line and the JSON say which placement was used.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ceiling;
mod cluster;
mod common;
mod consume;
mod encode;
mod heap;
mod inflight;
mod ingest;
mod memory;
mod modes;
mod observability;
mod publish;
mod report;
mod scaling;

/// Counts heap bytes in the memory scenarios' child processes.
#[global_allocator]
static ALLOCATOR: heap::CountingAllocator = heap::CountingAllocator;

use std::time::Instant;

use jetevents_testcontainers::{Backend, NatsServer};
use serde_json::json;

/// Sizes of the scenarios, from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Scenarios to run (`JE_BENCH_SCENARIOS`, e.g. `1,2`).
    pub scenarios: Vec<u32>,
    /// Rounds per scenario (`JE_BENCH_ROUNDS`).
    pub rounds: usize,
    /// Events of scenarios 1 and 3 (`JE_BENCH_EVENTS`).
    pub events: usize,
    /// Acks in flight in scenario 1 (`JE_BENCH_WINDOW`).
    pub window: usize,
    /// Publishes per run in scenario 2 (`JE_BENCH_LATENCY_EVENTS`).
    pub latency_events: usize,
    /// Events per run in scenario 4 (`JE_BENCH_E2E_EVENTS`).
    pub e2e_events: usize,
    /// Publish rate of scenario 4, events/s (`JE_BENCH_E2E_RATE`).
    pub e2e_rate: u64,
    /// Backlog sizes of scenario 5 (`JE_BENCH_BACKLOGS`, comma separated).
    pub backlogs: Vec<usize>,
    /// How long each scenario-5 consumer runs, seconds (`JE_BENCH_MEMORY_SECS`).
    pub memory_secs: u64,
    /// Per-event sleep of the slow handler in scenario 5, ms (`JE_BENCH_SLOW_MS`).
    pub slow_handler_ms: u64,
    /// jetevents consumer concurrency (`JE_BENCH_CONCURRENCY`; unset: its default).
    pub concurrency: Option<usize>,
    /// Consumer instances of scenario 8 (`JE_BENCH_INSTANCES`, comma separated).
    pub instances: Vec<usize>,
    /// The larger window of scenario 10 (`JE_BENCH_INFLIGHT_WINDOW`; the
    /// smaller is `window`).
    pub inflight_window: usize,
    /// `max_ack_pending` of both sides in scenario 5
    /// (`JE_BENCH_MEMORY_MAX_ACK_PENDING`).
    pub memory_max_ack_pending: i64,
    /// Tokio worker threads (`JE_BENCH_THREADS`; 0: a current-thread runtime).
    pub threads: usize,
    /// Run the measured work in a spawned task (`JE_BENCH_SPAWN=1`), not in
    /// `block_on` on the main thread.
    pub spawn: bool,
    /// Where the JSON goes (`JE_BENCH_JSON`).
    pub json_path: String,
    /// `JE_BENCH_QUICK=1` was set.
    pub quick: bool,
}

pub(crate) fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not valid")),
        _ => default,
    }
}

fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<T> {
    let value = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    value
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            item.trim()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {item} is not valid"))
        })
        .collect()
}

impl Settings {
    fn from_env() -> Settings {
        let quick = env("JE_BENCH_QUICK", 0u8) == 1;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (rounds, events, latency, e2e, backlogs) = if quick {
            (2, 20_000, 1_000, 1_000, "10000,30000,100000")
        } else {
            (5, 200_000, 5_000, 5_000, "100000,300000,1000000")
        };
        Settings {
            scenarios: env_list("JE_BENCH_SCENARIOS", "1,2,3,4,5,6"),
            rounds: env("JE_BENCH_ROUNDS", rounds),
            events: env("JE_BENCH_EVENTS", events),
            window: env("JE_BENCH_WINDOW", 256),
            latency_events: env("JE_BENCH_LATENCY_EVENTS", latency),
            e2e_events: env("JE_BENCH_E2E_EVENTS", e2e),
            e2e_rate: env("JE_BENCH_E2E_RATE", 1_000),
            backlogs: env_list("JE_BENCH_BACKLOGS", backlogs),
            memory_secs: env("JE_BENCH_MEMORY_SECS", if quick { 2 } else { 5 }),
            slow_handler_ms: env("JE_BENCH_SLOW_MS", 5),
            concurrency: std::env::var("JE_BENCH_CONCURRENCY")
                .ok()
                .and_then(|value| value.trim().parse().ok()),
            instances: env_list("JE_BENCH_INSTANCES", "1,4,16"),
            inflight_window: env("JE_BENCH_INFLIGHT_WINDOW", 4096),
            memory_max_ack_pending: env("JE_BENCH_MEMORY_MAX_ACK_PENDING", 100_000),
            threads: env("JE_BENCH_THREADS", threads),
            spawn: env("JE_BENCH_SPAWN", 0u8) == 1,
            json_path: std::env::var("JE_BENCH_JSON").unwrap_or_else(|_| {
                let target = std::env::var("CARGO_TARGET_DIR")
                    .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target").to_owned());
                format!("{target}/bench-results.json")
            }),
            quick,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "scenarios": self.scenarios,
            "rounds": self.rounds,
            "events": self.events,
            "window": self.window,
            "latency_events": self.latency_events,
            "e2e_events": self.e2e_events,
            "e2e_rate": self.e2e_rate,
            "backlogs": self.backlogs,
            "memory_secs": self.memory_secs,
            "slow_handler_ms": self.slow_handler_ms,
            "concurrency": self.concurrency,
            "instances": self.instances,
            "inflight_window": self.inflight_window,
            "memory_max_ack_pending": self.memory_max_ack_pending,
            "threads": self.threads,
            "runtime": common::runtime_name(self.threads),
            "placement": common::placement_name(self.spawn),
            "quick": self.quick,
        })
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_default();
    let memory_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("MemTotal:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": memory_kib as f64 / 1024.0 / 1024.0,
        "load_average_at_start": load.trim(),
        "date_utc": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

fn main() {
    let settings = Settings::from_env();
    if memory::is_child() {
        heap::enable();
        memory::child(&settings);
        return;
    }
    if inflight::is_child() {
        heap::enable();
        inflight::child(&settings);
        return;
    }
    if observability::is_child() {
        observability::child(&settings);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs bench
    // targets without it, and must not start a four-minute benchmark.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("compare: run with `cargo bench --bench compare` (or pass --bench)");
        return;
    }
    let runtime = common::runtime(settings.threads);
    common::run_placed(&runtime, settings.spawn, run(settings));
}

async fn run(settings: Settings) {
    let machine = machine();
    eprintln!("settings: {}", settings.to_json());
    eprintln!(
        "measured work: {}, {}",
        common::runtime_name(settings.threads),
        common::placement_name(settings.spawn)
    );
    eprintln!("machine: {machine}");
    let server = NatsServer::builder()
        .backend(Backend::Binary)
        .start()
        .await
        .expect("start nats-server (binary backend)");
    let url = server.url();
    eprintln!("nats-server at {url} (binary backend, JetStream file storage)");

    let je = common::jetevents_client(&url).await;
    // `JE_BENCH_RAW_ON_JETEVENTS_CONNECTION=1`: the raw side uses jetevents'
    // own connection and JetStream context, to tell connection-level from
    // code-path differences.
    let raw = if env("JE_BENCH_RAW_ON_JETEVENTS_CONNECTION", 0u8) == 1 {
        common::Raw {
            js: je.jetstream().unwrap().clone(),
        }
    } else {
        common::Raw::connect(&url).await
    };

    let started = Instant::now();
    let mut scenarios = Vec::new();
    for id in settings.scenarios.clone() {
        let scenario_start = Instant::now();
        eprintln!("scenario {id}:");
        let scenario = match id {
            0 => encode::encode(&settings, &je),
            1 => publish::pipelined(&settings, &je, &raw).await,
            2 => publish::one_at_a_time(&settings, &je, &raw).await,
            3 => consume::throughput(&settings, &je, &raw).await,
            4 => consume::end_to_end(&settings, &je, &raw).await,
            5 => memory::memory(&settings, &raw, &url).await,
            6 => ingest::fast_ingest(&settings, &je, &raw).await,
            7 => observability::observability(&settings, &raw, &url).await,
            8 => scaling::scaling(&settings, &raw, &url).await,
            9 => cluster::cluster(&settings).await,
            10 => inflight::inflight(&settings, &raw, &url).await,
            11 => modes::modes(&settings, &je, &raw, &url).await,
            12 => ceiling::ceiling(&settings, &je, &raw).await,
            other => {
                eprintln!("  there is no scenario {other}");
                continue;
            }
        };
        eprintln!("  took {:.1}s", scenario_start.elapsed().as_secs_f64());
        scenarios.push(scenario);
    }
    let _ = raw.js.delete_stream(common::STREAM).await;

    let table = report::table(&scenarios);
    println!("\n{table}");
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    let document = report::json(settings.to_json(), machine, &scenarios);
    if let Some(parent) = std::path::Path::new(&settings.json_path).parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(
        &settings.json_path,
        serde_json::to_string_pretty(&document).expect("json"),
    )
    .expect("write results");
    println!("results: {}", settings.json_path);
}
