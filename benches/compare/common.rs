//! What both sides share: the event, the server, the stream, the hand-written
//! raw message, the trace context, statistics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_nats::header::HeaderName;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use jetevents::client::Client;
use jetevents::config::Config;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde::{Deserialize, Serialize};

/// Subject environment of every benchmark event.
pub const ENV: &str = "bench";
/// CloudEvents `source` of every benchmark event.
pub const SOURCE: &str = "/bench-service";
/// The stream the scenarios publish to and consume from.
pub const STREAM: &str = "BENCH";
/// Subjects of that stream.
pub const STREAM_SUBJECTS: &str = "bench.booking.>";
/// The acks a pipelined publisher may await at once, both sides (jetevents
/// uses this value for its context).
pub const MAX_ACKS_IN_FLIGHT: usize = 65_536;
/// PubAck timeout of both sides (jetevents' default `ack_timeout`).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The benchmark event: about 300 bytes of JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AppointmentBooked {
    pub appointment_id: String,
    pub patient_id: String,
    pub clinic_id: String,
    pub practitioner_id: String,
    pub starts_at: String,
    pub duration_minutes: u32,
    pub channel: String,
    pub notes: String,
    /// Nanoseconds since the process's clock base when it was sent (scenario
    /// 4), 0 elsewhere.
    pub sent_at_ns: u64,
}

impl jetevents::Event for AppointmentBooked {
    const TYPE: &'static str = "booking.appointment.booked.v1";

    fn key(&self) -> Option<String> {
        Some(self.appointment_id.clone())
    }
}

/// The `i`-th event; every event serializes to the same length.
pub fn event(i: u64) -> AppointmentBooked {
    AppointmentBooked {
        appointment_id: format!("apt-{i:012}"),
        patient_id: format!("pat-{:012}", i % 9_973),
        clinic_id: "clinic-berlin-mitte-0042".to_owned(),
        practitioner_id: format!("prac-{:06}", i % 311),
        starts_at: "2026-12-01T09:30:00Z".to_owned(),
        duration_minutes: 30,
        channel: "online-booking-widget".to_owned(),
        notes: "Follow-up consultation; patient asked for a morning slot, \
                bring previous lab results"
            .to_owned(),
        sent_at_ns: 0,
    }
}

/// `count` events starting at `first`.
pub fn events(first: u64, count: usize) -> Vec<AppointmentBooked> {
    (first..first + count as u64).map(event).collect()
}

/// Nanoseconds since a base fixed at the first call (monotonic clock).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The OpenTelemetry context every runtime thread runs in: an application
/// that propagates trace context without a `tracing` subscriber installed.
/// jetevents then writes this context's `traceparent`; the raw side formats
/// the same value by hand.
pub fn trace_context() -> opentelemetry::Context {
    let span = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
        SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    opentelemetry::Context::new().with_remote_span_context(span)
}

/// Makes [`trace_context`] current on this thread for the rest of its life.
pub fn attach_trace_context() {
    std::mem::forget(trace_context().attach());
}

/// A tokio runtime whose threads all carry [`trace_context`]: multi-thread
/// with `worker_threads`, or current-thread for 0 (`JE_BENCH_THREADS=0`).
pub fn runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    attach_trace_context();
    let mut builder = if worker_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder
        .enable_all()
        .on_thread_start(attach_trace_context)
        .build()
        .expect("tokio runtime")
}

/// What [`runtime`] builds for `worker_threads`, for titles and the JSON.
pub fn runtime_name(worker_threads: usize) -> String {
    match worker_threads {
        0 => "current-thread".to_owned(),
        n => format!("multi-thread ({n} workers)"),
    }
}

/// Where the measured work runs (`JE_BENCH_SPAWN`), for the header and the JSON.
pub fn placement_name(spawn: bool) -> &'static str {
    if spawn {
        "spawned on a runtime worker"
    } else {
        "block_on on the main thread"
    }
}

/// Runs `work` to its end on `runtime`: in `block_on` on this thread, or with
/// `spawn` in a task on the runtime, awaited through its `JoinHandle`.
pub fn run_placed<F>(runtime: &tokio::runtime::Runtime, spawn: bool, work: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    if !spawn {
        return runtime.block_on(work);
    }
    match runtime.block_on(runtime.spawn(work)) {
        Ok(output) => output,
        // Keep the task's own panic message.
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("measured task: {error}"),
    }
}

/// A jetevents client as a service would configure it.
pub async fn jetevents_client(url: &str) -> Client {
    jetevents_client_in(url, ENV).await
}

/// [`jetevents_client`] publishing under subject environment `env`.
pub async fn jetevents_client_in(url: &str, env: &str) -> Client {
    Client::connect(jetevents_config(url, env))
        .await
        .expect("jetevents connect")
}

/// The configuration of [`jetevents_client_in`].
// `Config` is `#[non_exhaustive]`: outside the crate it can only be built
// from its default and then changed.
#[allow(clippy::field_reassign_with_default)]
pub fn jetevents_config(url: &str, env: &str) -> Config {
    let mut config = Config::default();
    config.servers = vec![url.to_owned()];
    config.source = SOURCE.to_owned();
    config.env = env.to_owned();
    config.name = Some("bench-jetevents".to_owned());
    config
}

/// The raw side: a plain async-nats connection and a JetStream context set
/// up like jetevents' (same ack timeout, same in-flight limit).
#[derive(Clone)]
pub struct Raw {
    pub js: jetstream::Context,
}

impl Raw {
    pub async fn connect(url: &str) -> Raw {
        let nats = async_nats::ConnectOptions::new()
            .name("bench-raw")
            .connect(url)
            .await
            .expect("raw connect");
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .build(nats);
        Raw { js }
    }
}

/// Deletes and creates the benchmark stream (file storage, like jetevents'
/// `StreamSpec` default), so every run starts from the same empty state.
pub async fn recreate_stream(js: &jetstream::Context) -> stream::Stream {
    recreate_stream_named(js, STREAM, STREAM_SUBJECTS).await
}

/// [`recreate_stream`] for stream `name` capturing `subjects`.
pub async fn recreate_stream_named(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> stream::Stream {
    recreate(js, name, subjects, false).await
}

/// Replicas of every stream the scenarios create: 1, or 3 while scenario 9
/// runs on a cluster.
pub static STREAM_REPLICAS: AtomicUsize = AtomicUsize::new(1);

/// [`recreate_stream`] allowing fast-ingest batches (scenario 6).
pub async fn recreate_batch_stream(js: &jetstream::Context) -> stream::Stream {
    recreate(js, STREAM, STREAM_SUBJECTS, true).await
}

async fn recreate(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
    allow_batch_publish: bool,
) -> stream::Stream {
    let _ = js.delete_stream(name).await;
    let created = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: STREAM_REPLICAS.load(Ordering::Relaxed),
            duplicate_window: Duration::from_secs(120),
            allow_batch_publish,
            ..Default::default()
        })
        .await
        .expect("create stream");
    if STREAM_REPLICAS.load(Ordering::Relaxed) == 1 {
        return created;
    }
    wait_for_leader(js, name).await
}

/// The stream `name` once it has a leader: a replicated stream just created
/// answers publishes only then (before, a publish fails `StreamNotFound`).
async fn wait_for_leader(js: &jetstream::Context, name: &str) -> stream::Stream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut stream = js.get_stream(name).await.expect("get created stream");
        let led = stream
            .info()
            .await
            .ok()
            .and_then(|info| {
                info.cluster
                    .as_ref()
                    .map(|cluster| cluster.leader.is_some())
            })
            .unwrap_or(false);
        if led {
            return stream;
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} has no leader after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages stored in the benchmark stream.
pub async fn stream_messages(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(STREAM).await.expect("get stream");
    stream.info().await.expect("stream info").state.messages
}

const CE_SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
const CE_ID: HeaderName = HeaderName::from_static("ce-id");
const CE_SOURCE: HeaderName = HeaderName::from_static("ce-source");
const CE_TYPE: HeaderName = HeaderName::from_static("ce-type");
const CE_TIME: HeaderName = HeaderName::from_static("ce-time");
const CE_DATACONTENTTYPE: HeaderName = HeaderName::from_static("ce-datacontenttype");
const CE_PARTITIONKEY: HeaderName = HeaderName::from_static("ce-partitionkey");
const CE_TRACEPARENT: HeaderName = HeaderName::from_static("ce-traceparent");

/// The message jetevents sends for `event`, built by hand: the same subject,
/// payload bytes and headers (`Nats-Msg-Id` = event id, every `ce-*`
/// attribute, `ce-traceparent` from the current trace context).
///
/// The values are known to be header-safe (ids, a fixed source and type, an
/// RFC 3339 time), so, as a hand-written service would, this skips the
/// percent-encoding and validation jetevents does.
pub fn raw_message(event: &AppointmentBooked) -> (String, HeaderMap, Bytes) {
    let payload = Bytes::from(serde_json::to_vec(event).expect("serialize"));
    let id = uuid::Uuid::now_v7().to_string();
    let time = Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let traceparent = {
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span = span.span_context();
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    };
    let subject = format!(
        "{ENV}.{}.{}",
        <AppointmentBooked as jetevents::Event>::TYPE,
        event.appointment_id
    );
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
    headers.insert(CE_SPECVERSION, "1.0");
    headers.insert(CE_ID, id);
    headers.insert(CE_SOURCE, SOURCE);
    headers.insert(CE_TYPE, <AppointmentBooked as jetevents::Event>::TYPE);
    headers.insert(CE_TIME, time);
    headers.insert(CE_DATACONTENTTYPE, "application/json");
    headers.insert(CE_PARTITIONKEY, event.appointment_id.as_str());
    headers.insert(CE_TRACEPARENT, traceparent);
    (subject, headers, payload)
}

/// One awaited raw publish of a message built by [`raw_message`].
pub async fn raw_publish(raw: &Raw, (subject, headers, payload): (String, HeaderMap, Bytes)) {
    let message = jetstream::message::PublishMessage::build()
        .payload(payload)
        .headers(headers);
    raw.js
        .send_publish(subject, message)
        .await
        .expect("raw send")
        .await
        .expect("raw ack");
}

/// A binary-mode message decoded by hand, as a raw consumer would: every
/// `ce-*` attribute jetevents reads (time parsed, trace context parsed) and
/// the JSON data.
#[allow(dead_code)]
pub struct RawDecoded {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub time: chrono::DateTime<Utc>,
    pub data_content_type: Option<String>,
    pub partition_key: Option<String>,
    pub trace: Option<(TraceId, SpanId)>,
    pub event: AppointmentBooked,
}

/// The trace and span ids of a `traceparent` value, parsed by hand.
pub fn raw_traceparent(value: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = value.split('-');
    let (_version, trace_id, span_id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
    ))
}

pub fn raw_decode(headers: Option<&HeaderMap>, payload: &[u8]) -> RawDecoded {
    let headers = headers.expect("headers");
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        headers.get("ce-specversion").map(|v| v.as_str()),
        Some("1.0")
    );
    let time = headers.get("ce-time").expect("ce-time").as_str();
    let trace = headers
        .get("ce-traceparent")
        .and_then(|value| raw_traceparent(value.as_str()));
    let decoded = RawDecoded {
        id: get("ce-id").expect("ce-id"),
        source: get("ce-source").expect("ce-source"),
        event_type: get("ce-type").expect("ce-type"),
        time: chrono::DateTime::parse_from_rfc3339(time)
            .expect("ce-time")
            .with_timezone(&Utc),
        data_content_type: get("ce-datacontenttype"),
        partition_key: get("ce-partitionkey"),
        trace,
        event: serde_json::from_slice(payload).expect("decode event"),
    };
    assert_eq!(
        decoded.event_type,
        <AppointmentBooked as jetevents::Event>::TYPE
    );
    decoded
}

/// CPU time (user + system) of every thread of this process so far
/// (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond resolution). Unlike wall time it
/// barely moves when other processes compete for the CPUs, so it shows the
/// client's cost per event on a busy machine too.
pub fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Client CPU per event, microseconds, since `start` (a [`process_cpu`]).
pub fn cpu_us_per_event(start: Duration, events: usize) -> f64 {
    (process_cpu() - start).as_secs_f64() * 1e6 / events.max(1) as f64
}

/// CPU time of the nats-server processes this bench started (its
/// children), from `/proc/<pid>/stat`: the server's share of the work,
/// which on a small machine competes with the client's.
pub fn server_cpu() -> Duration {
    let ticks = server_pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // The command name may hold spaces: the fields follow its ')'.
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            // After the name: state, ppid, ..., utime (index 11), stime (12).
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let field = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
            field(11).unwrap_or(0) + field(12).unwrap_or(0)
        })
        .sum::<u64>();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / ticks_per_second)
}

/// Read and write system calls so far (`/proc/<pid>/io`) of this process
/// and of its nats-servers: how many messages each syscall carries.
pub fn syscalls() -> [(u64, u64); 2] {
    let read = |pid: &str| {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
        let field = |name: &str| {
            io.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        (field("syscr:"), field("syscw:"))
    };
    let server = server_pids()
        .iter()
        .map(|pid| read(pid))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    [read("self"), server]
}

/// System calls per event since `start` (a [`syscalls`]), for the log.
pub fn syscalls_per_event(start: [(u64, u64); 2], events: usize) -> String {
    let now = syscalls();
    let per = |now: u64, start: u64| now.saturating_sub(start) as f64 / events.max(1) as f64;
    format!(
        "syscalls/event client r {:.2} w {:.2}, server r {:.2} w {:.2}",
        per(now[0].0, start[0].0),
        per(now[0].1, start[0].1),
        per(now[1].0, start[1].0),
        per(now[1].1, start[1].1),
    )
}

/// Pids of the nats-server processes this bench started (its children).
fn server_pids() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // After the name: state, ppid.
        if head.ends_with("(nats-server") && rest.split_whitespace().nth(1) == Some(me.as_str()) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

/// Server CPU per event, microseconds, since `start` (a [`server_cpu`]).
pub fn server_cpu_us_per_event(start: Duration, events: usize) -> f64 {
    (server_cpu().saturating_sub(start)).as_secs_f64() * 1e6 / events.max(1) as f64
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median of values (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Which side runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Jetevents,
    Raw,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Jetevents => "jetevents",
            Side::Raw => "raw",
        }
    }
}

/// The two sides in the order of round `round`: alternating, so neither
/// always runs first (warm caches, server state, background noise).
///
/// `JE_BENCH_SIDES=jetevents` (or `raw`) runs one side only, for profiling.
pub fn order(round: usize) -> Vec<Side> {
    let both = if round.is_multiple_of(2) {
        [Side::Jetevents, Side::Raw]
    } else {
        [Side::Raw, Side::Jetevents]
    };
    let only = std::env::var("JE_BENCH_SIDES").unwrap_or_default();
    both.into_iter()
        .filter(|side| only.is_empty() || only.split(',').any(|s| s.trim() == side.name()))
        .collect()
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs this binary as a child process of kind `kind` (`JE_BENCH_CHILD`)
/// with `vars`, and reads the JSON line it prints last.
pub fn run_child(kind: &str, vars: &[(&str, String)]) -> serde_json::Value {
    let exe = std::env::current_exe().expect("current exe");
    let output = std::process::Command::new(exe)
        .env("JE_BENCH_CHILD", kind)
        .envs(vars.iter().map(|(name, value)| (name, value)))
        .output()
        .expect("spawn child");
    assert!(
        output.status.success(),
        "{kind} child failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("child report");
    serde_json::from_str(line).expect("child json")
}

/// The value of child variable `name`, set by the parent.
pub fn child_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}
