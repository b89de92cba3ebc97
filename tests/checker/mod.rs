//! A Jepsen-style queue checker for the reliability suite.
//!
//! Every event a fault test publishes is an [`Op`] with a unique `op` id. The
//! test records the outcome of each publish ([`Checker::record`]: acked by the
//! server, outcome unknown, or refused) and every time a consumer handles one
//! ([`Checker::handled`]). At the end [`Checker::report`] counts:
//!
//! - **lost**: acked by the server, never handled;
//! - **unexpected**: handled, never published;
//! - **phantom**: reported as definitely not stored, yet handled (the
//!   library's error said something false);
//! - **duplicates**: handled more than once (what a fault explains, e.g. a
//!   redelivery after a crash before the ack, is allowed by the test);
//! - **unknown**: outcome unknown (timeout); handled or not, both are fine.
//!
//! Before the consumer runtime is involved, "handled" is "read back from the
//! stream" ([`read_back`]).
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub use crate::support::{eventually, Running};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::publish::{PublishError, PublishErrorKind, Receipt};
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
}

/// Publish outcomes and handling counts of one test.
#[derive(Default)]
pub struct Checker {
    name: String,
    state: Mutex<State>,
}

impl Checker {
    /// A new, empty history named `name` (for the summary line).
    pub fn new(name: &str) -> Arc<Checker> {
        Arc::new(Checker {
            name: name.to_owned(),
            state: Mutex::default(),
        })
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
    pub fn record(&self, op: &str, result: &Result<Receipt, PublishError>) {
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
        let lost: Vec<String> = state
            .acked
            .iter()
            .filter(|op| !state.handled.contains_key(*op))
            .cloned()
            .collect();
        let unexpected: Vec<String> = state
            .handled
            .keys()
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
            .filter(|op| state.handled.contains_key(*op))
            .cloned()
            .collect();
        let duplicates: Vec<(String, u32)> = state
            .handled
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(op, count)| (op.clone(), *count))
            .collect();
        let unknown_handled = state
            .unknown
            .iter()
            .filter(|op| state.handled.contains_key(*op))
            .count();
        let report = Report {
            name: self.name.clone(),
            attempted: state.acked.len() + state.unknown.len() + state.refused.len(),
            acked: state.acked.len(),
            unknown: state.unknown.len(),
            unknown_handled,
            refused: state.refused.len(),
            refused_reasons: state.refused.values().take(3).cloned().collect(),
            handled: state.handled.len(),
            deliveries: state.handled.values().map(|c| u64::from(*c)).sum(),
            lost,
            unexpected,
            phantom,
            duplicates,
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
    pub refused: usize,
    pub refused_reasons: Vec<String>,
    pub handled: usize,
    pub deliveries: u64,
    pub lost: Vec<String>,
    pub unexpected: Vec<String>,
    pub phantom: Vec<String>,
    pub duplicates: Vec<(String, u32)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "checker[{}]: attempted={} acked={} unknown={} (handled {}) refused={} handled={} deliveries={} lost={} unexpected={} phantom={} duplicates={}",
            self.name,
            self.attempted,
            self.acked,
            self.unknown,
            self.unknown_handled,
            self.refused,
            self.handled,
            self.deliveries,
            self.lost.len(),
            self.unexpected.len(),
            self.phantom.len(),
            self.duplicates.len(),
        )
    }
}

fn sample<T: fmt::Debug>(items: &[T]) -> String {
    format!("{:?}", &items[..items.len().min(10)])
}

impl Report {
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
/// decodes it with the jetevents codec and records its op as handled. Returns
/// how many messages were read. Fails on a message that does not decode.
pub async fn read_back(client: &Client, stream: &str, checker: &Checker) -> usize {
    // After a fault the JetStream API may need a while (leader elections,
    // a restarted server recovering its store): retry the setup.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (total, mut messages) = loop {
        let setup = async {
            let mut handle = client.jetstream().get_stream(stream).await.ok()?;
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
        checker.handled(&op.op);
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
    let dead_letters = jetevents::consume::DeadLetterConfig {
        stream: format!("{stream}_DL"),
        subject_prefix: format!("dl{}", stream.to_ascii_lowercase()),
    };
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
