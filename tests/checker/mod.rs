//! A Jepsen-style queue checker for the reliability suite.
//!
//! Every event a fault test publishes is an [`Op`] with a unique `op` id. The
//! test records the outcome of each publish ([`Checker::record`]: acked by the
//! server, outcome unknown, or refused) and every time a consumer handles one
//! ([`Checker::handled`]). At the end [`Checker::report`] counts:
//!
//! - **lost**: acked by the server, never handled;
//! - **unexpected**: handled or stored, never published;
//! - **phantom**: reported as definitely not stored, yet handled (the
//!   library's error said something false);
//! - **duplicates**: handled more than once (what a fault explains, e.g. a
//!   redelivery after a crash before the ack, is allowed by the test);
//! - **unknown**: outcome unknown (timeout); stored once or not at all, both
//!   are fine.
//!
//! [`read_back`] reads the stream at the end: what is **stored**, so each op
//! can be checked to be stored at most once (an unknown outcome may be stored
//! once or not at all, never twice). Publish-only tests
//! ([`Checker::publish_only`]) count lost and duplicates against what is
//! stored instead of what was handled.
//!
//! [`Report::assert_holds`] is the one assertion every fault test ends with;
//! it prints the row `scripts/fault-suite.sh` collects for RELIABILITY.md.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub use crate::support::{eventually, Running};

pub mod cluster;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::publish::{PublishError, PublishErrorKind};
use serde::{Deserialize, Serialize};

/// The event every fault test publishes: a unique operation id and some
/// padding to give it a realistic size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Unique within one test run.
    pub op: String,
    /// Filler bytes.
    pub pad: String,
}

impl jetevents::Event for Op {
    const TYPE: &'static str = "chaos.op.recorded.v1";
    fn key(&self) -> Option<String> {
        // Eight subjects: enough to spread over several subjects, few enough
        // to keep the server's per-subject state small.
        let n: u64 = self
            .op
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Some(format!("p{}", n % 8))
    }
}

/// Operation `n` of run `run`, with `pad` bytes of filler.
pub fn op(run: &str, n: usize, pad: usize) -> Op {
    Op {
        op: format!("{run}-{n}"),
        pad: "x".repeat(pad),
    }
}

/// Multiplier of the event counts: `JETEVENTS_FAULT_SCALE` (default 1, small
/// enough for CI).
pub fn scale() -> usize {
    std::env::var("JETEVENTS_FAULT_SCALE")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|s| *s >= 1)
        .unwrap_or(1)
}

/// `base` times [`scale`].
pub fn scaled(base: usize) -> usize {
    base.saturating_mul(scale())
}

#[derive(Default)]
struct State {
    acked: BTreeSet<String>,
    unknown: BTreeSet<String>,
    refused: BTreeMap<String, String>,
    handled: BTreeMap<String, u32>,
    /// How often each op is in the stream; `None` until [`read_back`].
    stored: Option<BTreeMap<String, u32>>,
}

/// Publish outcomes and handling counts of one test.
#[derive(Default)]
pub struct Checker {
    name: String,
    /// No consumer: what is stored stands for what is handled.
    publish_only: bool,
    state: Mutex<State>,
}

impl Checker {
    /// A new, empty history named `name` (for the summary line).
    pub fn new(name: &str) -> Arc<Checker> {
        Arc::new(Checker {
            name: name.to_owned(),
            publish_only: false,
            state: Mutex::default(),
        })
    }

    /// A history without a consumer: [`read_back`] is what counts as handled.
    pub fn publish_only(name: &str) -> Arc<Checker> {
        Arc::new(Checker {
            name: name.to_owned(),
            publish_only: true,
            state: Mutex::default(),
        })
    }

    /// `op` is stored (once more): in the stream, or in whatever durable
    /// state a scenario checks instead (an aggregate's events).
    pub fn stored(&self, op: &str) {
        *self
            .state
            .lock()
            .unwrap()
            .stored
            .get_or_insert_with(BTreeMap::new)
            .entry(op.to_owned())
            .or_default() += 1;
    }

    /// The stored state was read and held nothing (yet). Scenarios whose
    /// outcome is not a stream of ops (a read model, saga records) call it
    /// and record [`Checker::handled`] instead, for [`Report::assert_holds`].
    pub fn nothing_stored(&self) {
        self.state
            .lock()
            .unwrap()
            .stored
            .get_or_insert_with(BTreeMap::new);
    }

    /// The server acked `op`.
    pub fn acked(&self, op: &str) {
        let mut state = self.state.lock().unwrap();
        state.unknown.remove(op);
        state.acked.insert(op.to_owned());
    }

    /// The publish of `op` ended without knowing whether it was stored.
    pub fn unknown(&self, op: &str) {
        let mut state = self.state.lock().unwrap();
        if !state.acked.contains(op) {
            state.unknown.insert(op.to_owned());
        }
    }

    /// The publish of `op` failed with an error that says it was not stored.
    pub fn refused(&self, op: &str, why: &str) {
        self.state
            .lock()
            .unwrap()
            .refused
            .insert(op.to_owned(), why.to_owned());
    }

    /// Records the result of publishing `op`.
    pub fn record<T>(&self, op: &str, result: &Result<T, PublishError>) {
        match result {
            Ok(_) => self.acked(op),
            Err(err) => match err.kind() {
                PublishErrorKind::OutcomeUnknown { .. } => self.unknown(op),
                // Every other kind claims nothing was stored.
                _ => self.refused(op, &err.to_string()),
            },
        }
    }

    /// A consumer handled `op` (once more).
    pub fn handled(&self, op: &str) {
        *self
            .state
            .lock()
            .unwrap()
            .handled
            .entry(op.to_owned())
            .or_default() += 1;
    }

    /// Whether `op` was handled at least once.
    pub fn is_handled(&self, op: &str) -> bool {
        self.state.lock().unwrap().handled.contains_key(op)
    }

    /// How many distinct ops were handled so far.
    pub fn handled_distinct(&self) -> usize {
        self.state.lock().unwrap().handled.len()
    }

    /// How many acked ops were handled so far.
    pub fn acked_handled(&self) -> usize {
        let state = self.state.lock().unwrap();
        state
            .acked
            .iter()
            .filter(|op| state.handled.contains_key(*op))
            .count()
    }

    /// How many ops were acked so far.
    pub fn acked_count(&self) -> usize {
        self.state.lock().unwrap().acked.len()
    }

    /// Whether every acked op was handled.
    pub fn all_acked_handled(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.acked.iter().all(|op| state.handled.contains_key(op))
    }

    /// The counts so far; printed as one line.
    pub fn report(&self) -> Report {
        let state = self.state.lock().unwrap();
        let empty = BTreeMap::new();
        let stored = state.stored.as_ref().unwrap_or(&empty);
        let seen = if self.publish_only {
            stored
        } else {
            &state.handled
        };
        let lost: Vec<String> = state
            .acked
            .iter()
            .filter(|op| !seen.contains_key(*op))
            .cloned()
            .collect();
        let unexpected: Vec<String> = seen
            .keys()
            .chain(stored.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|op| {
                !state.acked.contains(*op)
                    && !state.unknown.contains(*op)
                    && !state.refused.contains_key(*op)
            })
            .cloned()
            .collect();
        let phantom: Vec<String> = state
            .refused
            .keys()
            .filter(|op| seen.contains_key(*op) || stored.contains_key(*op))
            .cloned()
            .collect();
        let duplicates: Vec<(String, u32)> = seen
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(op, count)| (op.clone(), *count))
            .collect();
        let stored_twice: Vec<(String, u32)> = stored
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(op, count)| (op.clone(), *count))
            .collect();
        let unknown_handled = state
            .unknown
            .iter()
            .filter(|op| seen.contains_key(*op))
            .count();
        let unknown_stored = state.stored.as_ref().map(|stored| {
            state
                .unknown
                .iter()
                .filter(|op| stored.contains_key(*op))
                .count()
        });
        let report = Report {
            name: self.name.clone(),
            attempted: state.acked.len() + state.unknown.len() + state.refused.len(),
            acked: state.acked.len(),
            unknown: state.unknown.len(),
            unknown_handled,
            unknown_stored,
            refused: state.refused.len(),
            refused_reasons: state.refused.values().take(3).cloned().collect(),
            handled: seen.len(),
            deliveries: seen.values().map(|c| u64::from(*c)).sum(),
            lost,
            unexpected,
            phantom,
            duplicates,
            stored_twice,
        };
        drop(state);
        println!("{report}");
        report
    }
}

/// The counts of one run.
#[derive(Clone, Debug)]
pub struct Report {
    pub name: String,
    pub attempted: usize,
    pub acked: usize,
    pub unknown: usize,
    pub unknown_handled: usize,
    /// Unknown outcomes found in the stream; `None` if it was not read back.
    pub unknown_stored: Option<usize>,
    pub refused: usize,
    pub refused_reasons: Vec<String>,
    pub handled: usize,
    pub deliveries: u64,
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    pub phantom: Vec<String>,
    pub duplicates: Vec<(String, u32)>,
    /// Ops in the stream more than once (the server's deduplication failed).
    pub stored_twice: Vec<(String, u32)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checker[{}]: attempted={} acked={} unknown={} (handled {}, stored {}) refused={} handled={} deliveries={} lost={} unexpected={} phantom={} duplicates={} stored_twice={}",
            self.name,
            self.attempted,
            self.acked,
            self.unknown,
            self.unknown_handled,
            self.unknown_stored
                .map_or_else(|| "not read".to_owned(), |n| n.to_string()),
            self.refused,
            self.handled,
            self.deliveries,
            self.lost.len(),
            self.unexpected.len(),
            self.phantom.len(),
            self.duplicates.len(),
            self.stored_twice.len(),
        )
    }
}

fn sample<T: fmt::Debug>(items: &[T]) -> String {
    format!("{:?}", &items[..items.len().min(10)])
}

/// What the faults of one scenario explain, for [`Report::assert_holds`].
#[derive(Clone, Debug)]
pub struct Bounds {
    /// The faults injected, as the summary row shows them (e.g. `SIGKILL x3
    /// (3 mid-publish)`).
    pub faults: String,
    /// Handlings beyond the first that the faults explain, in all (e.g. the
    /// events a consumer held unacked when a fault took its acks).
    pub extra_handlings: u64,
    /// Publishes whose outcome may stay unknown (e.g. those in flight at
    /// each fault once the retry budget is spent).
    pub unknown: usize,
    /// Publishes that may be refused (e.g. no stream leader within a short
    /// retry budget). A refusal says "not stored", which is checked anyway.
    pub refused: usize,
}

impl Report {
    /// Handlings beyond the first, over all ops.
    pub fn extra_handlings(&self) -> u64 {
        self.duplicates
            .iter()
            .map(|(_, count)| u64::from(count - 1))
            .sum()
    }

    /// What every fault test asserts, and the row RELIABILITY.md copies:
    /// nothing acked lost, nothing unexpected or phantom, nothing stored
    /// twice (so every unknown outcome was stored once or not at all), and
    /// unknown outcomes, refusals and duplicates within what the faults
    /// explain. The stream must have been read back ([`read_back`]).
    pub fn assert_holds(&self, bounds: &Bounds) -> &Self {
        let unknown_stored = self
            .unknown_stored
            .unwrap_or_else(|| panic!("{self}\nread the stream back before assert_holds"));
        println!(
            "FAULT-ROW | {} | {} | {} | {} | {} | {} | {} ({} stored) | {} | {} ({} ops)",
            self.name,
            self.attempted,
            bounds.faults,
            self.acked,
            self.lost.len(),
            self.unexpected.len(),
            self.unknown,
            unknown_stored,
            self.refused,
            self.extra_handlings(),
            self.duplicates.len(),
        );
        self.assert_no_loss();
        assert!(
            self.stored_twice.is_empty(),
            "{self}\nstored more than once: {}",
            sample(&self.stored_twice)
        );
        assert!(
            self.unknown <= bounds.unknown,
            "{self}\nmore than {} unknown outcomes",
            bounds.unknown
        );
        assert!(
            self.refused <= bounds.refused,
            "{self}\nmore than {} refused, for: {:?}",
            bounds.refused,
            self.refused_reasons
        );
        assert!(
            self.extra_handlings() <= bounds.extra_handlings,
            "{self}\n{} extra handlings, the faults explain {}: {}",
            self.extra_handlings(),
            bounds.extra_handlings,
            sample(&self.duplicates)
        );
        self
    }

    /// Nothing acked was lost, nothing unexpected or phantom was handled.
    pub fn assert_no_loss(&self) -> &Self {
        assert!(self.lost.is_empty(), "{self}\nlost: {}", sample(&self.lost));
        assert!(
            self.unexpected.is_empty(),
            "{self}\nunexpected: {}",
            sample(&self.unexpected)
        );
        assert!(
            self.phantom.is_empty(),
            "{self}\nreported not stored, yet handled: {}",
            sample(&self.phantom)
        );
        self
    }

    /// No op was handled more than once.
    pub fn assert_no_duplicates(&self) -> &Self {
        assert!(
            self.duplicates.is_empty(),
            "{self}\nduplicates: {}",
            sample(&self.duplicates)
        );
        self
    }

    /// Only ops in `allowed` were handled more than once.
    pub fn assert_duplicates_within(&self, allowed: &BTreeSet<String>) -> &Self {
        let unexplained: Vec<_> = self
            .duplicates
            .iter()
            .filter(|(op, _)| !allowed.contains(op))
            .collect();
        assert!(
            unexplained.is_empty(),
            "{self}\nduplicates no fault explains: {}",
            sample(&unexplained)
        );
        self
    }

    /// Every publish was acked (none unknown or refused).
    pub fn assert_all_acked(&self) -> &Self {
        assert_eq!(
            self.acked, self.attempted,
            "{self}\nrefused for: {:?}",
            self.refused_reasons
        );
        self
    }

    /// No publish was refused (every one was acked or has an unknown outcome).
    pub fn assert_none_refused(&self) -> &Self {
        assert_eq!(
            self.refused, 0,
            "{self}\nrefused for: {:?}",
            self.refused_reasons
        );
        self
    }

    /// At most `n` publishes ended with an unknown outcome.
    pub fn assert_unknown_at_most(&self, n: usize) -> &Self {
        assert!(self.unknown <= n, "{self}: more than {n} unknown outcomes");
        self
    }

    /// At least `n` ops were acked: the run exercised something.
    pub fn assert_acked_at_least(&self, n: usize) -> &Self {
        assert!(self.acked >= n, "{self}: expected at least {n} acked");
        self
    }
}

/// Reads every message of `stream` (from the first) with an ordered consumer,
/// decodes it with the jetevents codec and records its op as stored. Returns
/// how many messages were read. Fails on a message that does not decode.
pub async fn read_back(client: &Client, stream: &str, checker: &Checker) -> usize {
    // After a fault the JetStream API may need a while (leader elections,
    // a restarted server recovering its store): retry the setup.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (total, mut messages) = loop {
        let setup = async {
            let mut handle = client.jetstream().unwrap().get_stream(stream).await.ok()?;
            let total = handle.info().await.ok()?.state.messages;
            let consumer = handle
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await
                .ok()?;
            Some((total, consumer.messages().await.ok()?))
        };
        if let Some(ready) = setup.await {
            break ready;
        }
        assert!(Instant::now() < deadline, "stream {stream} unreadable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    checker.nothing_stored();
    if total == 0 {
        return 0;
    }
    let mut read = 0usize;
    while (read as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| panic!("read back stalled after {read} of {total}"))
            .unwrap()
            .unwrap();
        let envelope =
            jetevents::codec::decode(message.headers.as_ref(), &message.payload).unwrap();
        let op: Op = envelope.decode_data().unwrap();
        checker.stored(&op.op);
        read += 1;
    }
    read
}

/// The resident set size of this process in KiB (`VmRSS` in
/// `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// What the checker's consumer handler shares: the history and how long each
/// handling takes.
#[derive(Clone)]
pub struct Handling {
    pub checker: Arc<Checker>,
    pub delay: Duration,
}

/// A consumer builder of `group` on `stream` whose handler records every
/// [`Op`] it handles in `checker` (after `delay`), with its own dead-letter
/// stream. Tests add their settings and build it.
pub fn consumer(
    client: &Client,
    group: &str,
    stream: &str,
    checker: &Arc<Checker>,
    delay: Duration,
) -> jetevents::consume::ConsumerBuilder<Handling> {
    let dead_letters = jetevents::consume::DeadLetterConfig::new(
        format!("{stream}_DL"),
        format!("dl{}", stream.to_ascii_lowercase()),
    );
    jetevents::consume::Consumer::builder(client, group)
        .stream(stream)
        .dead_letter(dead_letters)
        .with_state(Handling {
            checker: checker.clone(),
            delay,
        })
        .handle(
            |event: Op, ctx: jetevents::consume::Context<Handling>| async move {
                if !ctx.state().delay.is_zero() {
                    tokio::time::sleep(ctx.state().delay).await;
                }
                ctx.state().checker.handled(&event.op);
                Ok::<_, jetevents::consume::HandlerError>(())
            },
        )
}

/// Publishes `count` ops of run `run` one by one on a task, recording each
/// outcome; `done` counts finished publishes.
pub fn publish_in_background(
    client: &Client,
    run: &'static str,
    count: usize,
    checker: &Arc<Checker>,
    done: &Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<()> {
    let publisher = client.publisher();
    let checker = checker.clone();
    let done = done.clone();
    tokio::spawn(async move {
        for n in 0..count {
            let event = op(run, n, 100);
            let result = publisher.publish(&event).await;
            checker.record(&event.op, &result);
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
}

/// The end of a fault run: waits for `publishing` to return and for every
/// acked op to be handled, then stops the consumer, which must still be
/// running (a runner that gave up would pass for one that drained).
pub async fn drain(checker: &Checker, publishing: tokio::task::JoinHandle<()>, running: Running) {
    tokio::time::timeout(Duration::from_secs(180), publishing)
        .await
        .expect("publishing did not finish after the fault")
        .unwrap();
    eventually(
        "every acked op handled",
        Duration::from_secs(120),
        || async { checker.all_acked_handled() },
    )
    .await;
    assert!(!running.is_finished(), "the runner gave up");
    running.stop().await;
}

/// Creates stream `name` capturing `{env}.chaos.>` of `client`'s environment.
pub async fn chaos_stream(client: &Client, name: &str, replicas: usize) {
    let spec = jetevents::provision::StreamSpec::for_domain(client.subjects(), name, "chaos")
        .unwrap()
        .replicas(replicas);
    // Right after a cluster forms, R3 placement can be refused until every
    // peer has caught up with the meta leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(err) = client.ensure_stream(&spec).await {
        assert!(
            Instant::now() < deadline,
            "stream {name} not created: {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the stream has a leader and two current, online followers.
pub async fn replicas_current(client: &jetevents::client::Client, stream: &str) -> bool {
    let Ok(mut stream) = client.jetstream().unwrap().get_stream(stream).await else {
        return false;
    };
    let Ok(info) = stream.info().await else {
        return false;
    };
    match &info.cluster {
        Some(cluster) => {
            cluster.leader.is_some()
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current && !r.offline)
        }
        None => false,
    }
}
