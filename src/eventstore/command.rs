//! Command handling with optimistic concurrency: load, decide, append at
//! the loaded version; when another writer got there first, catch up on
//! its events and decide again, a bounded number of times.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{AppendErrorKind, CommandError, CommandErrorKind};
use super::read::Tip;
use super::{Aggregate, Appended, EventStore};
use crate::Error;

/// What a command did.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Executed<A> {
    /// The state after the command's events.
    pub state: A,
    /// The aggregate's version after them.
    pub version: u64,
    /// Where they were stored; `None` when the command caused no events.
    pub appended: Option<Appended>,
    /// Decisions taken (1 without conflicts).
    pub attempts: u32,
}

impl EventStore {
    /// Runs `command` on the instance `key` of `A`, deciding at most
    /// `max_attempts` times (at least once) when other writers overtake it.
    /// Saves a snapshot when the store's policy says so.
    pub async fn execute<A: Aggregate + Serialize + DeserializeOwned>(
        &self,
        key: &str,
        command: &A::Command,
        max_attempts: u32,
    ) -> Result<Executed<A>, CommandError<A::Error>> {
        let mut loaded = self
            .load::<A>(key)
            .await
            .map_err(|err| err.map_kind(CommandErrorKind::Load))?;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let events = loaded
                .state
                .handle(command)
                .map_err(|err| Error::new(CommandErrorKind::Refused(err)))?;
            if events.is_empty() {
                return Ok(Executed {
                    version: loaded.version,
                    state: loaded.state,
                    appended: None,
                    attempts,
                });
            }
            let tip = Tip {
                version: loaded.version,
                sequence: loaded.sequence,
            };
            match self.append_at::<A>(key, &events, tip).await {
                Ok(appended) => {
                    let mut state = loaded.state;
                    for event in &events {
                        state.apply(event);
                    }
                    self.snapshot_if_due(key, &state, tip.version, &appended, events.len())
                        .await;
                    return Ok(Executed {
                        version: appended.version,
                        state,
                        appended: Some(appended),
                        attempts,
                    });
                }
                Err(err) if matches!(err.kind(), AppendErrorKind::Conflict { .. }) => {
                    if attempts >= max_attempts.max(1) {
                        return Err(Error::with_source(
                            CommandErrorKind::Conflict { attempts },
                            err,
                        ));
                    }
                    // Catch up on the other writers' events only.
                    loaded = self
                        .load_after(key, loaded)
                        .await
                        .map_err(|err| err.map_kind(CommandErrorKind::Load))?;
                }
                Err(err) => return Err(err.map_kind(CommandErrorKind::Append)),
            }
        }
    }

    async fn snapshot_if_due<A: Aggregate + Serialize>(
        &self,
        key: &str,
        state: &A,
        before: u64,
        appended: &Appended,
        count: usize,
    ) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        if !snapshots.is_due(before, appended.version) {
            return;
        }
        // The snapshot ends on the last of the `count` events appended,
        // whose id derives from the append's.
        let event_id = super::append::event_id(&appended.append_id, count.saturating_sub(1));
        // The events are stored: a failed snapshot only makes later loads
        // replay more.
        if let Err(err) = snapshots
            .save(key, state, appended.version, appended.sequence, &event_id)
            .await
        {
            tracing::warn!(error = %err, "saving a snapshot failed");
        }
    }
}
