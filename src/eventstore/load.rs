//! Loading an aggregate: the latest snapshot, then the events after it.
//!
//! A snapshot is used only when the aggregate's event at the snapshot's
//! stream sequence is the event the snapshot ends on: the same version and,
//! when the snapshot records it, the same id. After the stream is purged or
//! recreated while the snapshot bucket stays, another event of the same
//! version may sit at that sequence; only the id tells them apart. The check
//! reads nothing more: a snapshot at the aggregate's last event is checked
//! against the last event the load reads anyway, and the replay after any
//! other snapshot starts at the snapshot's own event, in the same read.

use serde::de::DeserializeOwned;

use super::error::{LoadError, LoadErrorKind};
use super::read::{StoredEvent, Tip};
use super::snapshot::Snapshot;
use super::upcast::Upcasts;
use super::{Aggregate, EventStore, Loaded};
use crate::Error;

impl EventStore {
    /// The state of the instance `key` of `A`: from its latest usable
    /// snapshot (when the store has [snapshots](super::Snapshots)) and the
    /// events after it, or from all its events.
    ///
    /// A snapshot the aggregate's events do not continue is not used: the
    /// stream was purged or recreated since it was saved while the snapshot
    /// bucket stayed. That is one ahead of the aggregate's last event, one
    /// whose event at its sequence is another (another version, or another
    /// id than the snapshot recorded), or one followed by an event of
    /// another version than the next. The state is then replayed from all
    /// the events, and a warning logged.
    pub async fn load<A: Aggregate + DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Loaded<A>, LoadError> {
        let snapshot = match &self.snapshots {
            Some(snapshots) => snapshots
                .latest::<A>(key)
                .await
                .map_err(|err| Error::with_source(LoadErrorKind::Read, err))?,
            None => None,
        };
        let filter = self
            .aggregate_filter::<A>(key)
            .map_err(|err| Error::with_source(LoadErrorKind::Read, err))?;
        // Read after the snapshot: the events it covers were stored before
        // it was saved, so a snapshot past this tip is not of these events.
        let (until, last) = self.last_event(&filter).await?;
        if let Some(snapshot) = snapshot {
            if let Some(loaded) = self
                .load_from_snapshot(&filter, snapshot, until, last.as_ref())
                .await?
            {
                return Ok(loaded);
            }
        }
        self.replay_onto(
            &filter,
            Replaying::new(A::default(), Tip::default(), None),
            until,
        )
        .await
    }

    /// The state from `snapshot` and the events after it, up to `until`
    /// (whose event is `last`); `None`, logged, when the events do not
    /// continue the snapshot.
    async fn load_from_snapshot<A: Aggregate>(
        &self,
        filter: &str,
        snapshot: Snapshot<A>,
        until: Tip,
        last: Option<&StoredEvent>,
    ) -> Result<Option<Loaded<A>>, LoadError> {
        let from = snapshot.at;
        if from == until {
            let last_id = last.and_then(StoredEvent::id);
            // A snapshot saved before ids were recorded is taken on its
            // version and sequence, as it was then.
            let same = match &snapshot.event_id {
                Some(recorded) => last_id.as_ref() == Some(recorded),
                None => true,
            };
            if !same {
                warn_not_its_event(from, snapshot.event_id.as_deref(), last_id.as_deref());
                return Ok(None);
            }
            return Ok(Some(
                Replaying::new(snapshot.state, from, last_id).into_loaded(),
            ));
        }
        let behind = from.sequence < until.sequence && from.version < until.version;
        if !behind {
            tracing::warn!(
                snapshot_version = from.version,
                snapshot_sequence = from.sequence,
                version = until.version,
                sequence = until.sequence,
                "snapshot ahead of the aggregate's events; replaying all"
            );
            return Ok(None);
        }
        let replayed = if from.sequence == 0 {
            // At version 0: no event of its own to check.
            let replay = Replaying::new(snapshot.state, from, snapshot.event_id);
            self.replay_onto(filter, replay, until).await.map(Some)
        } else {
            self.replay_from_snapshot_event(filter, snapshot, until)
                .await
        };
        match replayed {
            Err(err) if matches!(err.kind(), LoadErrorKind::VersionGap { .. }) => {
                tracing::warn!(
                    error = %err,
                    "the events after the snapshot do not follow it; replaying all"
                );
                Ok(None)
            }
            loaded => loaded,
        }
    }

    /// Applies the events of `key` after where `loaded` stands to it.
    pub(crate) async fn load_after<A: Aggregate>(
        &self,
        key: &str,
        loaded: Loaded<A>,
    ) -> Result<Loaded<A>, LoadError> {
        let filter = self
            .aggregate_filter::<A>(key)
            .map_err(|err| Error::with_source(LoadErrorKind::Read, err))?;
        let until = self.tip(&filter).await?;
        let from = loaded.position();
        let replay = Replaying::new(loaded.state, from, loaded.last_event_id);
        self.replay_onto(&filter, replay, until).await
    }

    /// Applies the events of `filter` after where `replay` stands, up to
    /// `until`.
    async fn replay_onto<A: Aggregate>(
        &self,
        filter: &str,
        mut replay: Replaying<A>,
        until: Tip,
    ) -> Result<Loaded<A>, LoadError> {
        self.replay_range(filter, replay.at.sequence, until.sequence, |stored| {
            replay.apply(stored)
        })
        .await?;
        Ok(replay.into_loaded())
    }

    /// Reads from the snapshot's own event (one more event in the same
    /// read): when it is the snapshot's, or gone, applies the events after
    /// it up to `until`; when another event is at its sequence, `None`,
    /// logged.
    async fn replay_from_snapshot_event<A: Aggregate>(
        &self,
        filter: &str,
        snapshot: Snapshot<A>,
        until: Tip,
    ) -> Result<Option<Loaded<A>>, LoadError> {
        let from = snapshot.at;
        let mut replay = Replaying::new(snapshot.state, from, None);
        // `None` until the first event is read, then whether it is the
        // snapshot's.
        let mut its_event: Option<bool> = None;
        let mut found_id = None;
        let read = self
            .replay_range(filter, from.sequence - 1, until.sequence, |stored| {
                if its_event.is_some() {
                    return replay.apply(stored);
                }
                if stored.sequence != from.sequence {
                    // The snapshot's own event is gone (deleted alone, or
                    // removed by a retention limit): there is no event to
                    // check it against, and the events before it may be
                    // gone too, so a full replay may not be possible. As
                    // before ids were recorded, the snapshot is used when
                    // the events after it carry the next versions.
                    its_event = Some(true);
                    return replay.apply(stored);
                }
                let same = stored.version == from.version
                    && match &snapshot.event_id {
                        Some(recorded) => {
                            found_id = stored.id();
                            found_id.as_ref() == Some(recorded)
                        }
                        // Saved before ids were recorded: version and
                        // sequence alone, as then.
                        None => true,
                    };
                its_event = Some(same);
                if !same {
                    // Stops the read; told apart from a failed read below.
                    return Err(Error::new(LoadErrorKind::Read));
                }
                // Not applied: the snapshot's state already includes it.
                // The events after it set the last event's id.
                Ok(())
            })
            .await;
        if its_event == Some(false) {
            warn_not_its_event(from, snapshot.event_id.as_deref(), found_id.as_deref());
            return Ok(None);
        }
        read?;
        Ok(Some(replay.into_loaded()))
    }
}

fn warn_not_its_event(at: Tip, recorded: Option<&str>, found: Option<&str>) {
    tracing::warn!(
        snapshot_version = at.version,
        snapshot_sequence = at.sequence,
        snapshot_event_id = recorded,
        event_id = found,
        "the aggregate's event at the snapshot's sequence is not the one it ends on; \
         replaying all"
    );
}

/// A replay under way: the state, where it stands and its last event's id.
struct Replaying<A: Aggregate> {
    state: A,
    at: Tip,
    last_event_id: Option<String>,
    replayed: u64,
    upcasts: Upcasts,
}

impl<A: Aggregate> Replaying<A> {
    fn new(state: A, at: Tip, last_event_id: Option<String>) -> Replaying<A> {
        Replaying {
            state,
            at,
            last_event_id,
            replayed: 0,
            upcasts: A::upcasts(),
        }
    }

    /// Applies the next event, which must carry the next version.
    fn apply(&mut self, stored: StoredEvent) -> Result<(), LoadError> {
        let expected = self.at.version + 1;
        if stored.version != expected {
            return Err(Error::new(LoadErrorKind::VersionGap {
                sequence: stored.sequence,
                found: stored.version,
                expected,
            }));
        }
        let (id, event) = stored.decode_with_id::<A>(&self.upcasts)?;
        self.state.apply(&event);
        self.at = Tip {
            version: stored.version,
            sequence: stored.sequence,
        };
        self.last_event_id = Some(id);
        self.replayed += 1;
        Ok(())
    }

    fn into_loaded(self) -> Loaded<A> {
        Loaded {
            state: self.state,
            version: self.at.version,
            sequence: self.at.sequence,
            last_event_id: self.last_event_id,
            replayed: self.replayed,
        }
    }
}
