//! Scenario 7: what observability costs: jetevents publishing (scenario 1's
//! `publish_many`) and consuming (scenario 3's typed handler) with nothing
//! installed, against the same with a `tracing` subscriber carrying an
//! OpenTelemetry layer and an SDK meter provider, not sampled and sampled.
//!
//! A global subscriber cannot be taken back, so every run is a child process
//! of this binary (`JE_BENCH_CHILD=observability`) that installs its mode
//! before anything else, does the work once and prints one JSON line. The
//! modes alternate their order every round, as the sides do elsewhere.
//!
//! - `off`: no subscriber, no meter provider (the other scenarios' setup);
//! - `unsampled`: registry + `tracing-opentelemetry` layer on an SDK tracer
//!   provider with sampler `AlwaysOff` and a batch exporter, and an SDK meter
//!   provider (periodic reader with a 10-minute interval: instruments
//!   aggregate, nothing is exported during a run) passed to the client as
//!   its meter;
//! - `unsampled-info`: `unsampled` with a global `LevelFilter::INFO`, the
//!   level a production service usually runs at: `debug!`/`trace!` events
//!   (async-nats writes several per message) never reach the layers;
//! - `sampled`: the same as `unsampled` with sampler `AlwaysOn`; the batch
//!   exporter is an in-process one that counts the spans and drops them.
//!
//! Each round also runs the floor rows ([`floor`]) in "unsampled" children:
//! the layer's and the SDK's own cost per event, to read the gap against.

mod floor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetevents::client::Client;
use opentelemetry::metrics::MeterProvider;
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde_json::json;
use tokio::sync::Notify;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::common::median;
use crate::common::{self, child_env, recreate_stream, stream_messages, Raw};
use crate::consume::{fill, jetevents_consumer, reached, Tally};
use crate::report::{Metric, Scenario};
use crate::Settings;
use floor::Floor;

/// What is installed in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Off,
    Unsampled,
    UnsampledInfo,
    Sampled,
}

impl Mode {
    const ALL: [Mode; 4] = [
        Mode::Off,
        Mode::Unsampled,
        Mode::UnsampledInfo,
        Mode::Sampled,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Unsampled => "unsampled",
            Mode::UnsampledInfo => "unsampled-info",
            Mode::Sampled => "sampled",
        }
    }

    fn parse(name: &str) -> Mode {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == name)
            .unwrap_or_else(|| panic!("no observability mode {name}"))
    }

    /// The modes in the order of round `round`, rotating so none always
    /// runs first.
    fn order(round: usize) -> [Mode; 4] {
        let mut modes = Mode::ALL;
        modes.rotate_left(round % Mode::ALL.len());
        modes
    }
}

/// The work a child does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Publish,
    Consume,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Publish => "publish",
            Work::Consume => "consume",
        }
    }
}

/// An exporter that counts the spans it is given and drops them: the cost
/// of recording and batching spans without that of any wire format.
#[derive(Debug, Default)]
struct DroppingExporter {
    spans: Arc<AtomicU64>,
}

impl SpanExporter for DroppingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// The providers a mode installed, to flush and count at the end.
struct Installed {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
    exported_spans: Arc<AtomicU64>,
}

fn install(mode: Mode) -> Option<Installed> {
    let sampler = match mode {
        Mode::Off => return None,
        Mode::Unsampled | Mode::UnsampledInfo => Sampler::AlwaysOff,
        Mode::Sampled => Sampler::AlwaysOn,
    };
    let info_only = (mode == Mode::UnsampledInfo).then_some(LevelFilter::INFO);
    let exporter = DroppingExporter::default();
    let exported_spans = exporter.spans.clone();
    let tracer = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_batch_exporter(exporter)
        .build();
    tracing_subscriber::registry()
        .with(info_only)
        .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer("bench")))
        .init();
    // Instruments aggregate as in any service; the export interval is
    // longer than a run, so what is measured is recording, not exporting.
    let reader = PeriodicReader::builder(InMemoryMetricExporter::default())
        .with_interval(Duration::from_secs(600))
        .build();
    let meter = SdkMeterProvider::builder().with_reader(reader).build();
    Some(Installed {
        tracer,
        meter,
        exported_spans,
    })
}

/// Whether this process is a scenario-7 child.
pub fn is_child() -> bool {
    std::env::var("JE_BENCH_CHILD").is_ok_and(|kind| kind == "observability")
}

/// The child's whole life: install the mode, do the work once, print one
/// JSON line (rate and client CPU per event).
pub fn child(settings: &Settings) {
    let mode = Mode::parse(&child_env("JE_BENCH_CHILD_MODE"));
    let work = child_env("JE_BENCH_CHILD_WORK");
    let url = child_env("JE_BENCH_CHILD_URL");
    let group = child_env("JE_BENCH_CHILD_GROUP");
    let installed = install(mode);
    let meter = installed
        .as_ref()
        .map(|installed| installed.meter.meter("jetevents"));
    let runtime = common::runtime(settings.threads);
    if let Some(floor) = Floor::parse(&work) {
        let meter = meter.expect("the floor runs with observability on");
        let (count, window) = (settings.events, settings.window);
        // On a runtime thread, where the real work runs.
        let cpu = runtime.block_on(async move {
            tokio::spawn(async move {
                let cpu_start = common::process_cpu();
                floor::run(floor, count, window, &meter);
                common::cpu_us_per_event(cpu_start, count)
            })
            .await
            .expect("floor join")
        });
        println!(
            "{}",
            json!({ "mode": mode.name(), "work": work, "cpu_us_per_event": cpu })
        );
        return;
    }
    let measured = (settings.clone(), work.clone());
    let (elapsed, cpu) = common::run_placed(&runtime, settings.spawn, async move {
        let (settings, work) = measured;
        let je = client(&url, meter).await;
        let count = settings.events;
        let cpu_start = common::process_cpu();
        let start = Instant::now();
        if work == Work::Publish.name() {
            let events = common::events(0, count);
            let results = je.publisher().publish_many(&events, settings.window).await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            assert_eq!(failed, 0, "{failed} publishes failed");
        } else {
            let tally = Tally::new(count);
            let consumer =
                jetevents_consumer(&je, &group, tally.clone(), false, settings.concurrency).await;
            let stop = Arc::new(Notify::new());
            let signal = {
                let stop = stop.clone();
                async move { stop.notified().await }
            };
            let running = tokio::spawn(consumer.run_until(signal));
            reached(&tally, count, common::Side::Jetevents).await;
            stop.notify_one();
            running.await.expect("join").expect("consumer run");
        }
        (start.elapsed(), common::cpu_us_per_event(cpu_start, count))
    });
    let exported_spans = installed.map_or(0, |installed| {
        let _ = installed.tracer.force_flush();
        installed.exported_spans.load(Ordering::Relaxed)
    });
    println!(
        "{}",
        json!({
            "mode": mode.name(),
            "work": work,
            "events_per_s": settings.events as f64 / elapsed.as_secs_f64(),
            "cpu_us_per_event": cpu,
            "exported_spans": exported_spans,
            // To pick this child out of `perf record` of the whole run.
            "pid": std::process::id(),
        })
    );
}

/// A benchmark client that records its metrics with `meter` when given.
// `Config` is `#[non_exhaustive]`: outside the crate it can only be built
// from its default and then changed.
#[allow(clippy::field_reassign_with_default)]
async fn client(url: &str, meter: Option<opentelemetry::metrics::Meter>) -> Client {
    let mut config = common::jetevents_config(url, common::ENV);
    config.meter = meter;
    Client::connect(config).await.expect("jetevents connect")
}

/// Per mode: rates, CPU per event, spans exported.
type Runs = [(Vec<f64>, Vec<f64>, u64); 4];

/// Scenario 7: both kinds of work, every mode, `rounds` times.
pub async fn observability(settings: &Settings, raw: &Raw, url: &str) -> Scenario {
    let mut scenario = Scenario::new(
        "7",
        format!(
            "observability on (jetevents column) vs off (raw column), jetevents both, {} events ({})",
            settings.events,
            common::runtime_name(settings.threads)
        ),
    );
    let mut extra = Vec::new();
    for work in [Work::Publish, Work::Consume] {
        if work == Work::Consume {
            recreate_stream(&raw.js).await;
            fill(raw, &common::events(0, settings.events)).await;
        }
        let mut runs: Runs = Default::default();
        let mut floor_cpu: [Vec<f64>; 3] = Default::default();
        for round in 0..settings.rounds {
            for mode in Mode::order(round) {
                if work == Work::Publish {
                    recreate_stream(&raw.js).await;
                }
                let group = format!("obs-{}-{}", mode.name(), round + 1);
                let vars = [
                    ("JE_BENCH_CHILD_MODE", mode.name().to_owned()),
                    ("JE_BENCH_CHILD_WORK", work.name().to_owned()),
                    ("JE_BENCH_CHILD_URL", url.to_owned()),
                    ("JE_BENCH_CHILD_GROUP", group.clone()),
                ];
                let report =
                    tokio::task::spawn_blocking(move || common::run_child("observability", &vars))
                        .await
                        .expect("child join");
                if work == Work::Publish {
                    assert_eq!(stream_messages(&raw.js).await, settings.events as u64);
                } else {
                    let stream = raw.js.get_stream(common::STREAM).await.expect("stream");
                    let _ = stream.delete_consumer(&group).await;
                }
                let slot = mode as usize;
                let rate = report["events_per_s"].as_f64().unwrap_or(f64::NAN);
                let cpu = report["cpu_us_per_event"].as_f64().unwrap_or(f64::NAN);
                runs[slot].0.push(rate);
                runs[slot].1.push(cpu);
                runs[slot].2 += report["exported_spans"].as_u64().unwrap_or(0);
                eprintln!(
                    "  [7] round {} {} {:<9} {:>9.0} events/s {:>6.2} us/event CPU, {} spans exported (pid {})",
                    round + 1,
                    work.name(),
                    mode.name(),
                    rate,
                    cpu,
                    report["exported_spans"],
                    report["pid"]
                );
                extra.push(report);
            }
            for (slot, floor) in Floor::of(work).into_iter().enumerate() {
                let vars = [
                    ("JE_BENCH_CHILD_MODE", Mode::Unsampled.name().to_owned()),
                    ("JE_BENCH_CHILD_WORK", floor.name().to_owned()),
                    ("JE_BENCH_CHILD_URL", url.to_owned()),
                    ("JE_BENCH_CHILD_GROUP", String::new()),
                ];
                let report =
                    tokio::task::spawn_blocking(move || common::run_child("observability", &vars))
                        .await
                        .expect("child join");
                let cpu = report["cpu_us_per_event"].as_f64().unwrap_or(f64::NAN);
                floor_cpu[slot].push(cpu);
                eprintln!(
                    "  [7] round {} {} {:<22} {:>6.2} us/event CPU",
                    round + 1,
                    work.name(),
                    floor.name(),
                    cpu
                );
                extra.push(report);
            }
        }
        let [off, unsampled, unsampled_info, sampled] = &runs;
        for (mode, on, target) in [
            (Mode::Unsampled, unsampled, 0.95),
            (Mode::UnsampledInfo, unsampled_info, 0.95),
            (Mode::Sampled, sampled, 0.0),
        ] {
            let mut throughput = Metric::throughput("events/s", &on.0, &off.0, target);
            throughput.name = format!("{} {} / off", work.name(), mode.name());
            scenario.push(throughput);
            let mut cpu = Metric::cpu(&on.1, &off.1);
            cpu.name = format!("{} {} / off client CPU", work.name(), mode.name());
            scenario.push(cpu);
        }
        scenario.notes.push(format!(
            "{}: spans exported (counted, dropped) unsampled {}, sampled {}",
            work.name(),
            unsampled.2,
            sampled.2
        ));
        push_floor(&mut scenario, work, &floor_cpu, &off.1, &unsampled.1);
    }
    scenario.extra = json!({ "children": extra });
    scenario
}

/// The floor rows of `work` (client CPU against "off"), and a note on how
/// much of the gap "unsampled - off" each explains.
fn push_floor(
    scenario: &mut Scenario,
    work: Work,
    floor_cpu: &[Vec<f64>; 3],
    off: &[f64],
    unsampled: &[f64],
) {
    let (off_us, gap_us) = (median(off), median(unsampled) - median(off));
    let mut parts = Vec::new();
    for (floor, cpu) in Floor::of(work).into_iter().zip(floor_cpu) {
        scenario.push(Metric::cpu(cpu, off).named(&format!(
            "{} floor {} / off client CPU",
            work.name(),
            floor.row()
        )));
        parts.push(format!(
            "{} {:.2} us ({:.0}% of the gap)",
            floor.row(),
            median(cpu),
            100.0 * median(cpu) / gap_us
        ));
    }
    // (a) and (c): what every event costs with any span and these metrics.
    let unavoidable = median(&floor_cpu[0]) + median(&floor_cpu[2]);
    let share = unavoidable / off_us;
    scenario.notes.push(format!(
        "{} floor (unsampled install, per event): off {:.2} us, gap {:.2} us; {}; (a)+(c) = {:.2} us = {:.1}% of off: \
         0.95 {} while each event keeps a span and its metrics through these crates at their defaults",
        work.name(),
        off_us,
        gap_us,
        parts.join(", "),
        unavoidable,
        100.0 * share,
        if share > 0.05 { "is unreachable" } else { "is within reach" }
    ));
}
