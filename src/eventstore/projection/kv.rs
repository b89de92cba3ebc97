//! Checkpoints in a KV bucket, moved by compare-and-set on their revision.

use async_nats::jetstream::kv;

use super::{Checkpoints, Projected, Projection, ProjectionError, ProjectionErrorKind};
use crate::client::Client;
use crate::eventstore::bucket::{Bucket, WriteFailure};
use crate::Error;

/// A projection's checkpoint in a KV bucket (key: the projection's name),
/// with a model of yours that it hands to the projection.
///
/// Every write names the revision it read, so a runner that is not the last
/// to have written fails with [`ProjectionErrorKind::CheckpointMoved`]
/// instead of moving the checkpoint back. Events at or below the checkpoint
/// are skipped. The model is written before the checkpoint: a runner stopped
/// in between applies that batch again.
#[derive(Debug)]
pub struct KvCheckpoints<M> {
    bucket: Bucket,
    name: String,
    model: M,
    read: Option<Read>,
}

/// The checkpoint and the revision it was read at (0: no entry).
#[derive(Clone, Copy, Debug)]
struct Read {
    checkpoint: u64,
    revision: u64,
}

fn store_error(err: impl Into<crate::error::BoxError>) -> ProjectionError {
    Error::with_source(ProjectionErrorKind::Checkpoint, err)
}

impl<M> KvCheckpoints<M> {
    /// The checkpoint of projection `name` in `bucket`, and its model.
    pub fn new(bucket: kv::Store, name: impl Into<String>, model: M) -> KvCheckpoints<M> {
        KvCheckpoints::in_bucket(Bucket::Nats(Box::new(bucket)), name, model)
    }

    /// The checkpoint of projection `name` in the KV bucket `bucket` of
    /// `client`'s JetStream (created if missing), and its model. On a
    /// client of the in-memory JetStream ([`crate::testing`]) the bucket is
    /// in memory too.
    pub async fn provision(
        client: &Client,
        bucket: &str,
        name: impl Into<String>,
        model: M,
    ) -> Result<KvCheckpoints<M>, ProjectionError> {
        let config = kv::Config {
            bucket: bucket.to_owned(),
            ..Default::default()
        };
        let bucket = Bucket::provision(client, config, false)
            .await
            .map_err(store_error)?;
        Ok(KvCheckpoints::in_bucket(bucket, name, model))
    }

    fn in_bucket(bucket: Bucket, name: impl Into<String>, model: M) -> KvCheckpoints<M> {
        KvCheckpoints {
            bucket,
            name: name.into(),
            model,
            read: None,
        }
    }

    /// The model.
    pub fn model(&self) -> &M {
        &self.model
    }

    async fn read(&mut self) -> Result<Read, ProjectionError> {
        let read = match self.bucket.entry(&self.name).await.map_err(store_error)? {
            Some(entry) => Read {
                checkpoint: match entry.value {
                    Some(value) => std::str::from_utf8(&value)
                        .ok()
                        .and_then(|text| text.parse().ok())
                        .ok_or_else(|| store_error("the checkpoint is not a number"))?,
                    None => 0,
                },
                revision: entry.revision,
            },
            None => Read {
                checkpoint: 0,
                revision: 0,
            },
        };
        self.read = Some(read);
        Ok(read)
    }

    async fn write(&mut self, checkpoint: u64, revision: u64) -> Result<(), ProjectionError> {
        let failed = |failure: WriteFailure| {
            let kind = if failure.refused {
                ProjectionErrorKind::CheckpointMoved
            } else {
                ProjectionErrorKind::Checkpoint
            };
            Error::with_source(kind, failure)
        };
        let value = checkpoint.to_string().into_bytes().into();
        let revision = if revision == 0 {
            self.bucket.create(&self.name, value).await
        } else {
            self.bucket.update(&self.name, value, revision).await
        }
        .map_err(failed)?;
        self.read = Some(Read {
            checkpoint,
            revision,
        });
        Ok(())
    }
}

impl<P, M> Checkpoints<P> for KvCheckpoints<M>
where
    P: Projection<Model = M>,
    M: Send + Sync,
{
    async fn checkpoint(&mut self) -> Result<u64, ProjectionError> {
        Ok(self.read().await?.checkpoint)
    }

    async fn commit(
        &mut self,
        projection: &mut P,
        events: &[Projected<P::Aggregate>],
    ) -> Result<u64, ProjectionError> {
        let read = match self.read {
            Some(read) => read,
            None => self.read().await?,
        };
        let mut checkpoint = read.checkpoint;
        for event in events
            .iter()
            .filter(|event| event.sequence > read.checkpoint)
        {
            projection
                .apply(&mut self.model, event)
                .await
                .map_err(|err| {
                    Error::with_source(
                        ProjectionErrorKind::Apply {
                            sequence: event.sequence,
                        },
                        err,
                    )
                })?;
            checkpoint = event.sequence;
        }
        if checkpoint != read.checkpoint {
            self.write(checkpoint, read.revision).await?;
        }
        Ok(checkpoint)
    }

    async fn reset(&mut self, projection: &mut P) -> Result<(), ProjectionError> {
        let read = self.read().await?;
        projection
            .clear(&mut self.model)
            .await
            .map_err(store_error)?;
        if read.checkpoint != 0 {
            self.write(0, read.revision).await?;
        }
        Ok(())
    }
}
