//! Loading an aggregate: the latest snapshot, then the events after it.

use serde::de::DeserializeOwned;

use super::error::{LoadError, LoadErrorKind};
use super::read::Tip;
use super::{Aggregate, EventStore, Loaded};
use crate::Error;

impl EventStore {
    /// The state of the instance `key` of `A`: from its latest usable
    /// snapshot (when the store has [snapshots](super::Snapshots)) and the
    /// events after it, or from all its events.
    ///
    /// A snapshot the aggregate's events do not continue (ahead of its last
    /// event, or followed by an event of another version than the next) is
    /// not used: the stream was purged or recreated since it was saved while
    /// the snapshot bucket stayed. The state is replayed from all the events.
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
        let until = self.tip(&filter).await?;
        if let Some((state, from)) = snapshot {
            let behind = from.sequence < until.sequence && from.version < until.version;
            if behind || from == until {
                match self.replay_onto(&filter, state, from, until).await {
                    Err(err) if matches!(err.kind(), LoadErrorKind::VersionGap { .. }) => {
                        tracing::warn!(
                            error = %err,
                            "the events after the snapshot do not follow it; replaying all"
                        );
                    }
                    loaded => return loaded,
                }
            } else {
                tracing::warn!(
                    snapshot_version = from.version,
                    snapshot_sequence = from.sequence,
                    version = until.version,
                    sequence = until.sequence,
                    "snapshot ahead of the aggregate's events; replaying all"
                );
            }
        }
        self.replay_onto(&filter, A::default(), Tip::default(), until)
            .await
    }

    /// Applies the events of `key` after `from` to `state`.
    pub(crate) async fn load_after<A: Aggregate>(
        &self,
        key: &str,
        state: A,
        from: Tip,
    ) -> Result<Loaded<A>, LoadError> {
        let filter = self
            .aggregate_filter::<A>(key)
            .map_err(|err| Error::with_source(LoadErrorKind::Read, err))?;
        let until = self.tip(&filter).await?;
        self.replay_onto(&filter, state, from, until).await
    }

    /// Applies the events of `filter` after `from`, up to `until`, to
    /// `state`.
    async fn replay_onto<A: Aggregate>(
        &self,
        filter: &str,
        mut state: A,
        from: Tip,
        until: Tip,
    ) -> Result<Loaded<A>, LoadError> {
        let mut at = from;
        let mut replayed = 0;
        let upcasts = A::upcasts();
        self.replay_range(filter, from.sequence, until.sequence, |stored| {
            if stored.version != at.version + 1 {
                return Err(Error::new(LoadErrorKind::VersionGap {
                    sequence: stored.sequence,
                    found: stored.version,
                    expected: at.version + 1,
                }));
            }
            state.apply(&stored.decode::<A>(&upcasts)?);
            at = Tip {
                version: stored.version,
                sequence: stored.sequence,
            };
            replayed += 1;
            Ok(())
        })
        .await?;
        Ok(Loaded {
            state,
            version: at.version,
            sequence: at.sequence,
            replayed,
        })
    }
}
