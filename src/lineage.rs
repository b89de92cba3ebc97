//! The event a handler is handling, carried on its task, and the ids of the
//! follow-up events the handler publishes.
//!
//! The consumer runtime runs every handler call inside [`with_lineage`].
//! What is published there, through the handler's
//! [`Context`](crate::consume::Context) or through any
//! [`Publisher`](crate::publish::Publisher) awaited on the handler's own task, gets
//! `causationid` and `correlationid` from the handled event, and a derived id
//! instead of a fresh UUIDv7 (see [`Lineage`]).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use uuid::Uuid;

/// The namespace of follow-up ids (a random UUID, fixed forever: changing it
/// changes every derived id).
const FOLLOW_UP_NAMESPACE: Uuid = Uuid::from_u128(0x9092_9b7d_5f52_461a_82db_4746_669a_12c4);

/// The event being handled on this task, so events published while handling
/// it get `causationid`, `correlationid` and a derived id without the handler
/// passing them. Cheap to clone: clones share the ordinal counters.
///
/// # Follow-up ids
///
/// A follow-up's id is a UUIDv5 (RFC 9562: SHA-1 of a name in a fixed
/// jetevents namespace) of the consumer group, the cause's id, the
/// follow-up's CloudEvents type and its ordinal: 0 for the first event of
/// that type published in this handler run, 1 for the second, and so on. A
/// run that fails after publishing, or whose process dies before the ack,
/// publishes the same follow-ups again when the event is redelivered; they get
/// the same ids, and JetStream's `Nats-Msg-Id` dedup stores each one once.
///
/// - Only within the stream's duplicate window
///   ([`StreamSpec::duplicate_window`](crate::provision::StreamSpec::duplicate_window), 2 minutes
///   by default): a redelivery later than that stores the follow-ups again.
/// - Only for the same follow-ups in the same order: publish them one after
///   another. Events of one type published concurrently get their ordinals in
///   the order they are first polled.
/// - The ordinal counts per type, not overall, so a retry that publishes an
///   extra event of another type (a branch on outside state) does not shift
///   the ids of the rest.
/// - The group is part of the name: two services handling the same event and
///   publishing the same type must not dedup each other's events away.
/// - Ordinals restart at 0 on every handler run: the runtime makes a new
///   [`Lineage`] (with the handler's `Context`) for each call.
/// - v5 rather than v8: any UUID library recomputes it. Unlike v7 it is not
///   time-ordered; the stream sequence orders events.
///
/// Typed publishes get a derived id: `publish`, `publish_with` and each event
/// of `publish_many`. An id set with
/// [`PublishOptions::id`](crate::publish::PublishOptions::id) wins and takes no
/// ordinal. `publish_envelope` keeps the envelope's id (relays and redrives
/// must keep theirs) and takes no ordinal either.
///
/// A task spawned by the handler does not inherit the task-local lineage:
/// `ctx.publish` there enters the same lineage again (same counter), a bare
/// `Publisher` there publishes with fresh ids and no causation.
#[derive(Clone)]
pub struct Lineage {
    run: Arc<dyn Cause>,
}

// By hand: a cause may be a whole handler context, event data included.
impl std::fmt::Debug for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lineage")
            .field("event_id", &self.run.event_id())
            .field("correlation_id", &self.run.correlation_id())
            .field("group", &self.run.group())
            .finish_non_exhaustive()
    }
}

/// What a handler run's follow-ups derive from. The consumer's handler
/// context is one: its lineage shares the context's allocation rather than
/// copying the ids into one of its own for every delivery.
pub(crate) trait Cause: Send + Sync {
    /// Id of the event being handled.
    fn event_id(&self) -> &str;
    /// Its correlation id (its own id when it has none).
    fn correlation_id(&self) -> &str;
    /// The consumer group handling it.
    fn group(&self) -> &str;
    /// The run's ordinal counters.
    fn ordinals(&self) -> &Ordinals;
}

/// The next ordinal per follow-up type of one handler run.
#[derive(Debug, Default)]
pub(crate) struct Ordinals {
    /// A handler publishes few types: a short list beats a map, and stays
    /// unallocated until the first one.
    next: Mutex<Vec<(&'static str, u32)>>,
}

impl Ordinals {
    /// The ordinal of the next follow-up of `event_type`.
    fn take(&self, event_type: &'static str) -> u32 {
        // A panic elsewhere cannot leave the list half-updated.
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        match next.iter_mut().find(|(name, _)| *name == event_type) {
            Some((_, ordinal)) => {
                let this = *ordinal;
                *ordinal = ordinal.saturating_add(1);
                this
            }
            None => {
                next.push((event_type, 1));
                0
            }
        }
    }

    fn clear(&self) {
        self.next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// One handler call: what its follow-ups derive from.
struct HandlerRun {
    event_id: String,
    correlation_id: String,
    group: Arc<str>,
    ordinals: Ordinals,
}

impl Cause for HandlerRun {
    fn event_id(&self) -> &str {
        &self.event_id
    }

    fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    fn group(&self) -> &str {
        &self.group
    }

    fn ordinals(&self) -> &Ordinals {
        &self.ordinals
    }
}

impl Lineage {
    /// A handler run of the event `event_id` (with `correlation_id`) in the
    /// consumer group `group`, its ordinals at 0. Make one per handler call.
    pub fn new(
        event_id: impl Into<String>,
        correlation_id: impl Into<String>,
        group: impl Into<Arc<str>>,
    ) -> Self {
        Self::of(Arc::new(HandlerRun {
            event_id: event_id.into(),
            correlation_id: correlation_id.into(),
            group: group.into(),
            ordinals: Ordinals::default(),
        }))
    }

    /// The lineage of a run described by `cause`, sharing it. Make one
    /// `cause` per handler call: its ordinals start at 0.
    pub(crate) fn of(cause: Arc<dyn Cause>) -> Self {
        Self { run: cause }
    }

    /// Id of the event being handled: the causation id of what it publishes.
    pub fn event_id(&self) -> &str {
        self.run.event_id()
    }

    /// Its correlation id (its own id when it has none).
    pub fn correlation_id(&self) -> &str {
        self.run.correlation_id()
    }

    /// Ordinals back to 0: the handler runs again within the same call (a
    /// breaker's failed probe), and its follow-ups must get the ids they got
    /// the first time, as on a redelivery.
    pub(crate) fn restart(&self) {
        self.run.ordinals().clear();
    }

    /// The id of the next follow-up of `event_type` in this run.
    fn next_follow_up_id(&self, event_type: &'static str) -> String {
        let ordinal = self.run.ordinals().take(event_type);
        follow_up_id(self.run.group(), self.run.event_id(), event_type, ordinal)
    }
}

tokio::task_local! {
    static HANDLING: Lineage;
}

/// Runs `future` with `lineage` as the event being handled. The consumer
/// runtime wraps every handler call in this.
pub fn with_lineage<F: Future>(lineage: Lineage, future: F) -> impl Future<Output = F::Output> {
    HANDLING.scope(lineage, future)
}

/// `f` of the event being handled on this task, if any.
pub(crate) fn handled<T>(f: impl FnOnce(&Lineage) -> T) -> Option<T> {
    HANDLING.try_with(f).ok()
}

/// The id of the next follow-up of `event_type`, when a handler is running
/// on this task.
pub(crate) fn next_follow_up_id(event_type: &'static str) -> Option<String> {
    handled(|lineage| lineage.next_follow_up_id(event_type))
}

/// The UUIDv5 of a follow-up. Each part is length-prefixed, so no two
/// different inputs make the same name.
fn follow_up_id(group: &str, cause_id: &str, event_type: &str, ordinal: u32) -> String {
    let mut name = Vec::with_capacity(group.len() + cause_id.len() + event_type.len() + 28);
    for part in [group, cause_id, event_type] {
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part.as_bytes());
    }
    name.extend_from_slice(&ordinal.to_be_bytes());
    let mut buffer = Uuid::encode_buffer();
    Uuid::new_v5(&FOLLOW_UP_NAMESPACE, &name)
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAUSE: &str = "0190d5c4-7b1e-7c3a-9f00-000000000001";
    const TYPE: &str = "notify.reminder.scheduled.v1";

    #[test]
    fn a_follow_up_id_is_stable_for_the_same_inputs() {
        let id = follow_up_id("workers", CAUSE, TYPE, 0);
        assert_eq!(id, follow_up_id("workers", CAUSE, TYPE, 0));
        let parsed = Uuid::parse_str(&id).unwrap_or_default();
        assert_eq!(parsed.get_version_num(), 5);
        // Fixed forever: a change here re-ids every follow-up of every
        // deployed handler, and retries across an upgrade store twice. The
        // value is Python's `uuid` module's for the same name.
        assert_eq!(id, "c1ddb595-5370-5300-899d-7d6ffb717b09");
    }

    #[test]
    fn a_follow_up_id_differs_per_group_cause_type_and_ordinal() {
        let base = follow_up_id("workers", CAUSE, TYPE, 0);
        for other in [
            follow_up_id("auditors", CAUSE, TYPE, 0),
            follow_up_id("workers", "0190d5c4-7b1e-7c3a-9f00-000000000002", TYPE, 0),
            follow_up_id("workers", CAUSE, "notify.reminder.cancelled.v1", 0),
            follow_up_id("workers", CAUSE, TYPE, 1),
            // Parts do not run into each other.
            follow_up_id("worker", &format!("s{CAUSE}"), TYPE, 0),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn ordinals_count_per_type_and_restart_with_each_run() {
        let run = Lineage::new(CAUSE, CAUSE, "workers");
        let ids = [
            run.next_follow_up_id(TYPE),
            run.clone().next_follow_up_id("notify.email.queued.v1"),
            run.next_follow_up_id(TYPE),
        ];
        assert_eq!(ids[0], follow_up_id("workers", CAUSE, TYPE, 0));
        assert_eq!(
            ids[1],
            follow_up_id("workers", CAUSE, "notify.email.queued.v1", 0)
        );
        assert_eq!(ids[2], follow_up_id("workers", CAUSE, TYPE, 1));

        let retry = Lineage::new(CAUSE, CAUSE, "workers");
        assert_eq!(retry.next_follow_up_id(TYPE), ids[0]);
    }
}
