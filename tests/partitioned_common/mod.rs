//! Helpers of the partitioned-group tests (`tests/partitioned_*.rs`): the
//! keyed event, members run as child processes of the test binary, and the
//! two checks of per-key consumption (handled order, no overlap).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jetevents::client::Client;
use jetevents::consume::partitioned::{partitioned_stream, PartitionedConfig, PartitionedConsumer};
use jetevents::consume::{Consumer, Context, DeadLetterConfig, HandlerError, RetryPolicy};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

use jetevents_testcontainers::NatsCluster;

use crate::checker::{eventually, read_back, Bounds, Checker};

/// Read by a child member: servers (comma-separated), subject environment,
/// stream, partitions, transient failure rate in percent.
pub const CHILD_URLS: &str = "PARTITIONED_CHILD_URLS";
pub const CHILD_ENV: &str = "PARTITIONED_CHILD_ENV";
pub const CHILD_STREAM: &str = "PARTITIONED_CHILD_STREAM";
pub const CHILD_PARTITIONS: &str = "PARTITIONED_CHILD_PARTITIONS";
pub const CHILD_FAIL_PERCENT: &str = "PARTITIONED_CHILD_FAIL_PERCENT";

/// The group every member of the tests joins.
pub const GROUP: &str = "ledger";
pub const ACK_WAIT: Duration = Duration::from_secs(2);

/// Event `seq` of `key`. Its type, `op` and `pad` are the checker's
/// [`Op`](crate::checker::Op)'s, so `read_back` reads it; its key is its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Keyed {
    pub op: String,
    pub pad: String,
    pub key: String,
    pub seq: u32,
}

impl jetevents::Event for Keyed {
    const TYPE: &'static str = <crate::checker::Op as jetevents::Event>::TYPE;
    fn key(&self) -> Option<String> {
        Some(self.key.clone())
    }
}

pub fn keyed(key: usize, seq: u32) -> Keyed {
    Keyed {
        op: format!("k{key}-{seq}"),
        pad: "x".repeat(64),
        key: format!("k{key}"),
        seq,
    }
}

/// Creates the partitioned stream `name` for `{env}.chaos` events.
pub async fn stream(client: &Client, name: &str, partitions: u16, replicas: usize) {
    let spec = partitioned_stream(client.subjects(), name, "chaos", partitions)
        .unwrap()
        .replicas(replicas);
    // Right after a cluster forms, R3 placement can be refused for a while.
    crate::support::eventually("the stream is created", Duration::from_secs(30), || async {
        client.ensure_stream(&spec).await.is_ok()
    })
    .await;
}

/// Publishes `per_key` rounds of one event per key; a round starts once the
/// previous one is acked, so each key's events are stored in publish order
/// even when publishes are retried.
pub fn publish_rounds(
    client: &Client,
    checker: &Arc<Checker>,
    keys: usize,
    per_key: u32,
) -> tokio::task::JoinHandle<()> {
    let publisher = client.publisher();
    let checker = checker.clone();
    tokio::spawn(async move {
        for seq in 0..per_key {
            let round: Vec<Keyed> = (0..keys).map(|key| keyed(key, seq)).collect();
            for (event, result) in round.iter().zip(publisher.publish_many(&round, 64).await) {
                checker.record(&event.op, &result);
            }
        }
    })
}

pub fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A partitioned member whose handler prints `PCG START|END|FAIL <op> <t>`
/// (t in Unix nanoseconds) and fails transiently at the given rate.
pub fn member_builder(
    client: &Client,
    stream: &str,
    fail_percent: u32,
    handled: impl Fn(&str) + Clone + Send + Sync + 'static,
) -> jetevents::consume::ConsumerBuilder<()> {
    Consumer::builder(client, GROUP)
        .stream(stream)
        .dead_letter(DeadLetterConfig::new(
            format!("{stream}_DL"),
            format!("dl{}", stream.to_ascii_lowercase()),
        ))
        .ack_wait(ACK_WAIT)
        .shutdown_grace(Duration::from_secs(1))
        .retry(
            RetryPolicy::exponential(Duration::from_millis(10), Duration::from_millis(100))
                .max_attempts(30),
        )
        .handle(move |event: Keyed, _ctx: Context| {
            let handled = handled.clone();
            async move {
                println!("PCG START {} {}", event.op, now_nanos());
                // Long enough that two handlers of a key would overlap.
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2))).await;
                if fastrand::u32(0..100) < fail_percent {
                    println!("PCG FAIL {} {}", event.op, now_nanos());
                    return Err(HandlerError::transient("injected failure"));
                }
                handled(&event.op);
                println!("PCG END {} {}", event.op, now_nanos());
                Ok::<_, HandlerError>(())
            }
        })
}

/// The timing of a partitioned config for the tests: fast failover.
pub fn config(partitions: u16) -> PartitionedConfig {
    PartitionedConfig::new(partitions)
        .member_ttl(Duration::from_secs(3))
        .pinned_ttl(Duration::from_secs(3))
}

/// The body of the child test of each binary: one member until killed.
pub async fn child_member() {
    let vars = [
        CHILD_URLS,
        CHILD_ENV,
        CHILD_STREAM,
        CHILD_PARTITIONS,
        CHILD_FAIL_PERCENT,
    ]
    .map(std::env::var);
    let [Ok(urls), Ok(env), Ok(stream), Ok(partitions), Ok(fail)] = vars else {
        // Run on its own (`--ignored`) it has nothing to do: fail rather
        // than pass without running.
        panic!("the parent test sets the PARTITIONED_CHILD_* variables");
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let client = crate::support::connect(&urls[0], &env, |config| {
        config.servers = urls.clone();
    })
    .await;
    // Started during a leader election, building may time out: retried as a
    // service's start-up would be.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let member = loop {
        let builder = member_builder(&client, &stream, fail.parse().unwrap(), |_| {});
        match PartitionedConsumer::build(builder, config(partitions.parse().unwrap())).await {
            Ok(member) => break member,
            Err(err) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "member not built: {err:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    member.run_until(std::future::pending()).await.unwrap();
}

/// One line a member printed (or the parent wrote at a kill).
#[derive(Clone, Debug)]
pub struct Line {
    pub member: String,
    pub kind: String,
    pub op: String,
    pub at: u128,
}

/// Members running as child processes, and everything they printed.
pub struct Members {
    exe: std::path::PathBuf,
    child_test: &'static str,
    env: Vec<(&'static str, String)>,
    children: BTreeMap<String, tokio::process::Child>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    pub lines: Arc<Mutex<Vec<Line>>>,
    pub checker: Arc<Checker>,
}

impl Members {
    pub fn new(
        child_test: &'static str,
        urls: &[String],
        env: &str,
        stream: &str,
        partitions: u16,
        fail_percent: u32,
        checker: &Arc<Checker>,
    ) -> Members {
        Members {
            exe: std::env::current_exe().unwrap(),
            child_test,
            env: vec![
                (CHILD_URLS, urls.join(",")),
                (CHILD_ENV, env.to_owned()),
                (CHILD_STREAM, stream.to_owned()),
                (CHILD_PARTITIONS, partitions.to_string()),
                (CHILD_FAIL_PERCENT, fail_percent.to_string()),
            ],
            children: BTreeMap::new(),
            readers: Vec::new(),
            lines: Arc::default(),
            checker: checker.clone(),
        }
    }

    /// Starts member `name`: this test binary re-executed on its child test.
    pub fn start(&mut self, name: &str) {
        let mut child = tokio::process::Command::new(&self.exe)
            .args([
                "--exact",
                self.child_test,
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            // A member that fails says why in the test's output.
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = self.lines.clone();
        let checker = self.checker.clone();
        let member = name.to_owned();
        self.readers.push(tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                // The harness's own output may share the line.
                let Some((_, rest)) = line.split_once("PCG ") else {
                    continue;
                };
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let [kind, op, at] = parts[..] else { continue };
                if kind == "END" {
                    checker.handled(op);
                }
                lines.lock().unwrap().push(Line {
                    member: member.clone(),
                    kind: kind.to_owned(),
                    op: op.to_owned(),
                    at: at.parse().unwrap(),
                });
            }
        }));
        self.children.insert(name.to_owned(), child);
    }

    /// SIGKILLs member `name`: no Nak, no release, no leave. Its handler
    /// running then, if any, ends at the kill for the overlap check.
    pub async fn kill(&mut self, name: &str) {
        let mut child = self.children.remove(name).unwrap();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        self.lines.lock().unwrap().push(Line {
            member: name.to_owned(),
            kind: "KILLED".to_owned(),
            op: String::new(),
            at: now_nanos(),
        });
    }

    pub fn handled_ends(&self) -> usize {
        self.handled_ends_by(None)
    }

    /// Handled events (END lines), of one member or of all.
    pub fn handled_ends_by(&self, member: Option<&str>) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line.kind == "END" && member.is_none_or(|m| line.member == m))
            .count()
    }

    /// Kills every member left and waits for their output.
    pub async fn kill_all(mut self) -> Vec<Line> {
        let names: Vec<String> = self.children.keys().cloned().collect();
        for name in names {
            self.kill(&name).await;
        }
        for reader in self.readers.drain(..) {
            reader.await.unwrap();
        }
        let lines = self.lines.lock().unwrap().clone();
        lines
    }
}

/// The op's key and sequence (`k{key}-{seq}`).
fn key_and_seq(op: &str) -> (String, u32) {
    let (key, seq) = op.rsplit_once('-').unwrap();
    (key.to_owned(), seq.parse().unwrap())
}

/// Per key, the sequence numbers in the order of their first successful
/// handling, and the handlings of an event again after a later one of its
/// key ("late": an ack lost with a stream leader, so the server redelivers
/// an event already handled). A handling again right after the first (a
/// member killed between handling and acking) is neither.
pub fn handled_order(lines: &[Line]) -> (BTreeMap<String, Vec<u32>>, Vec<String>) {
    let mut ends: Vec<&Line> = lines.iter().filter(|line| line.kind == "END").collect();
    ends.sort_by_key(|line| line.at);
    let mut order: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut late = Vec::new();
    for line in ends {
        let (key, seq) = key_and_seq(&line.op);
        let seqs = order.entry(key).or_default();
        if !seqs.contains(&seq) {
            seqs.push(seq);
        } else if seqs.last() != Some(&seq) {
            late.push(line.op.clone());
        }
    }
    (order, late)
}

/// Pairs of handler runs of one key that overlapped in time: a run lasts
/// from its START to its END or FAIL, or to its member's kill.
pub fn overlaps(lines: &[Line]) -> Vec<String> {
    let killed: BTreeMap<&str, u128> = lines
        .iter()
        .filter(|line| line.kind == "KILLED")
        .map(|line| (line.member.as_str(), line.at))
        .collect();
    let mut open: BTreeMap<(&str, &str), u128> = BTreeMap::new();
    let mut runs: BTreeMap<String, Vec<(u128, u128, String)>> = BTreeMap::new();
    let mut ordered: Vec<&Line> = lines.iter().filter(|line| line.kind != "KILLED").collect();
    ordered.sort_by_key(|line| line.at);
    for line in ordered {
        let slot = (line.member.as_str(), line.op.as_str());
        match line.kind.as_str() {
            "START" => {
                open.insert(slot, line.at);
            }
            _ => {
                let start = open.remove(&slot).unwrap_or(line.at);
                let (key, _) = key_and_seq(&line.op);
                runs.entry(key).or_default().push((
                    start,
                    line.at,
                    format!("{} {}", line.member, line.op),
                ));
            }
        }
    }
    for ((member, op), start) in open {
        let end = killed.get(member).copied().unwrap_or(u128::MAX);
        let (key, _) = key_and_seq(op);
        runs.entry(key)
            .or_default()
            .push((start, end, format!("{member} {op} (killed)")));
    }
    let mut found = Vec::new();
    for (key, mut runs) in runs {
        runs.sort();
        // The run that ends last so far: any run starting before its end
        // overlaps it.
        let mut latest: Option<&(u128, u128, String)> = None;
        for run in &runs {
            if let Some(previous) = latest {
                if run.0 < previous.1 {
                    found.push(format!("{key}: {} overlaps {}", previous.2, run.2));
                }
            }
            if latest.is_none_or(|previous| run.1 > previous.1) {
                latest = Some(run);
            }
        }
    }
    found
}

/// Every key's events were first handled in publish order; returns the
/// late handlings again (see [`handled_order`]).
pub fn assert_publish_order(lines: &[Line], keys: usize, per_key: u32) -> Vec<String> {
    let (order, late) = handled_order(lines);
    let expected: Vec<u32> = (0..per_key).collect();
    let wrong: Vec<(String, Vec<u32>)> = (0..keys)
        .map(|key| format!("k{key}"))
        .filter_map(|key| {
            let seqs = order.get(&key).cloned().unwrap_or_default();
            (seqs != expected).then_some((key, seqs))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} keys handled out of publish order, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
    late
}

/// The run of "Done when": members as child processes, events published in
/// rounds, transient failures at 5 %, three members SIGKILLed and three
/// added while events flow (and, on a cluster, the stream leader killed
/// after the first); then per key publish order, no overlap, nothing lost.
pub struct Scenario {
    pub name: &'static str,
    pub child_test: &'static str,
    pub urls: Vec<String>,
    pub env: String,
    pub stream: String,
    pub partitions: u16,
    pub keys: usize,
    pub per_key: u32,
}

impl Scenario {
    pub async fn members_killed_and_added(
        &self,
        client: &Client,
        mut cluster: Option<&mut NatsCluster>,
    ) {
        let started = std::time::Instant::now();
        let checker = Checker::new(self.name);
        let mut members = Members::new(
            self.child_test,
            &self.urls,
            &self.env,
            &self.stream,
            self.partitions,
            5,
            &checker,
        );
        for name in ["m1", "m2", "m3"] {
            members.start(name);
        }
        let publishing = publish_rounds(client, &checker, self.keys, self.per_key);
        let total = self.keys * self.per_key as usize;
        let mut faults = Vec::new();
        for (round, (victim, newcomer)) in [("m1", "m4"), ("m2", "m5"), ("m4", "m6")]
            .into_iter()
            .enumerate()
        {
            let target = (round + 1) * total / 4;
            // A victim is killed while it consumes: a member that joined
            // just before may not own a partition yet (rebalancing waits
            // for heartbeats), and killing it then would test nothing.
            eventually(
                "members handle events",
                Duration::from_secs(600),
                || async {
                    members.handled_ends() >= target && members.handled_ends_by(Some(victim)) > 0
                },
            )
            .await;
            members.kill(victim).await;
            members.start(newcomer);
            faults.push(format!("SIGKILL {victim}, add {newcomer}"));
            if let (0, Some(cluster)) = (round, cluster.as_deref_mut()) {
                let leader = cluster.stream_leader(&self.stream).await.unwrap();
                cluster.kill(leader).await.unwrap();
                cluster
                    .wait_for_new_stream_leader(&self.stream, leader)
                    .await
                    .unwrap();
                cluster.restart(leader).await.unwrap();
                cluster.wait_for_cluster_ready().await.unwrap();
                faults.push("stream leader SIGKILL".to_owned());
            }
        }
        tokio::time::timeout(Duration::from_secs(600), publishing)
            .await
            .unwrap()
            .unwrap();
        eventually("every event handled", Duration::from_secs(600), || async {
            checker.all_acked_handled()
        })
        .await;
        let lines = members.kill_all().await;
        read_back(client, &self.stream, &checker).await;

        let mut by_member: BTreeMap<&str, usize> = BTreeMap::new();
        for line in lines.iter().filter(|line| line.kind == "END") {
            *by_member.entry(line.member.as_str()).or_default() += 1;
        }
        println!("{}: handled by member {by_member:?}", self.name);
        // Each kill hit a member that was consuming.
        for victim in ["m1", "m2", "m4"] {
            assert!(
                by_member.get(victim).is_some_and(|n| *n > 0),
                "{victim} handled nothing: {by_member:?}"
            );
        }

        let overlapping = overlaps(&lines);
        assert!(
            overlapping.is_empty(),
            "{} overlapping runs of a key, e.g. {:?}",
            overlapping.len(),
            &overlapping[..overlapping.len().min(5)]
        );
        let late = assert_publish_order(&lines, self.keys, self.per_key);
        println!(
            "{}: handled again after a later event of their key: {late:?}",
            self.name
        );
        // Only a lost ack explains one, and only a stream leader kill loses
        // acks (its followers may not have them yet).
        if cluster.is_none() {
            assert!(late.is_empty(), "handled again out of order: {late:?}");
        }
        let kills = 3 + u64::from(cluster.is_some());
        checker.report().assert_holds(&Bounds {
            faults: faults.join(", "),
            // Per kill, an event handled and not yet acked comes back: one
            // per partition (a member's or, at a leader kill, any whose ack
            // the old leader had not replicated).
            extra_handlings: u64::from(self.partitions) * kills,
            unknown: usize::from(cluster.is_some()),
            refused: 0,
        });
        println!(
            "{}: {} keys x {} events over {} partitions in {:?}",
            self.name,
            self.keys,
            self.per_key,
            self.partitions,
            started.elapsed()
        );
    }
}

/// A member running on a task of the test until [`RunningMember::stop`].
pub struct RunningMember {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), jetevents::consume::partitioned::PartitionedError>>,
}

impl RunningMember {
    pub fn start<S: Clone + Send + Sync + 'static>(member: PartitionedConsumer<S>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(member.run_until(async move {
            let _ = stopped.await;
        }));
        RunningMember { stop, task }
    }

    /// Ends it as if its process died: it neither releases its partitions
    /// nor leaves the group (its partitions' runners stop, their stop signal
    /// dropped), so the others notice only when its entry expires.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Stops it: it releases its partitions and leaves the group.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("member did not stop")
            .unwrap()
            .unwrap();
    }
}
