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
        let (state, from) = snapshot.unwrap_or_default();
        self.load_after(key, state, from).await
    }

    /// Applies the events of `key` after `from` to `state`.
    pub(crate) async fn load_after<A: Aggregate>(
        &self,
        key: &str,
        mut state: A,
        from: Tip,
    ) -> Result<Loaded<A>, LoadError> {
        let filter = self
            .aggregate_filter::<A>(key)
            .map_err(|err| Error::with_source(LoadErrorKind::Read, err))?;
        let until = self.tip(&filter).await?;
        let mut at = from;
        let mut replayed = 0;
        let upcasts = A::upcasts();
        self.replay_range(&filter, from.sequence, until.sequence, |stored| {
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
