//! One active runner per projection: a lease in a KV bucket whose entries
//! expire after the lease's time to live.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;

use super::{ProjectionError, ProjectionErrorKind};
use crate::client::Client;
use crate::eventstore::bucket::Bucket;
use crate::Error;

/// The right to apply a projection's events, held by one runner at a time.
///
/// The holder creates the projection's key in a bucket whose entries expire
/// after `ttl` (the bucket's max age) and renews it every third of `ttl`,
/// by compare-and-set on its revision. The others retry the create every
/// third of `ttl` and get it once the holder's entry expired: a runner that
/// dies is replaced within about `ttl` and a third.
#[derive(Clone, Debug)]
pub struct Lease {
    bucket: Bucket,
    name: String,
    holder: String,
    ttl: Duration,
}

fn lease_error(err: impl Into<crate::error::BoxError>) -> ProjectionError {
    Error::with_source(ProjectionErrorKind::Lease, err)
}

impl Lease {
    /// A lease on projection `name` in `bucket`, whose max age must be `ttl`
    /// (see [`Lease::provision`]).
    pub fn new(bucket: kv::Store, name: impl Into<String>, ttl: Duration) -> Lease {
        Lease::in_bucket(Bucket::Nats(Box::new(bucket)), name, ttl)
    }

    fn in_bucket(bucket: Bucket, name: impl Into<String>, ttl: Duration) -> Lease {
        Lease {
            bucket,
            name: name.into(),
            holder: uuid::Uuid::now_v7().to_string(),
            ttl,
        }
    }

    /// Creates (or updates) `bucket` with entries expiring after `ttl` and
    /// returns a lease on projection `name` in it. On a client of the
    /// in-memory JetStream ([`crate::testing`]) the bucket is in memory, its
    /// entries expiring on tokio's clock.
    pub async fn provision(
        client: &Client,
        bucket: &str,
        name: impl Into<String>,
        ttl: Duration,
    ) -> Result<Lease, ProjectionError> {
        let config = kv::Config {
            bucket: bucket.to_owned(),
            history: 1,
            max_age: ttl,
            ..Default::default()
        };
        let bucket = Bucket::provision(client, config, true)
            .await
            .map_err(lease_error)?;
        Ok(Lease::in_bucket(bucket, name, ttl))
    }

    /// Who holds it when this runner does (unique per `Lease` value).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn period(&self) -> Duration {
        self.ttl / 3
    }

    /// Waits until this runner holds the lease; returns its revision.
    pub(crate) async fn acquire(&self) -> Result<u64, ProjectionError> {
        loop {
            match self
                .bucket
                .create(&self.name, self.holder.clone().into_bytes().into())
                .await
            {
                Ok(revision) => return Ok(revision),
                Err(taken) if taken.refused => {
                    tokio::time::sleep(self.period()).await;
                }
                Err(err) => return Err(lease_error(err)),
            }
        }
    }

    /// Renews the lease until a renewal fails; returns why.
    /// `revision` follows the renewals, for [`Lease::release`].
    pub(crate) async fn keep(&self, revision: &AtomicU64) -> ProjectionError {
        loop {
            tokio::time::sleep(self.period()).await;
            let last = revision.load(Ordering::Relaxed);
            match self
                .bucket
                .update(&self.name, self.holder.clone().into_bytes().into(), last)
                .await
            {
                Ok(renewed) => revision.store(renewed, Ordering::Relaxed),
                Err(err) => return Error::with_source(ProjectionErrorKind::LeaseLost, err),
            }
        }
    }

    /// Gives the lease up so a standby takes over at once.
    pub(crate) async fn release(&self, revision: u64) -> Result<(), ProjectionError> {
        self.bucket
            .delete_expect_revision(&self.name, revision)
            .await
            .map_err(lease_error)
    }
}
