//! A key-value bucket in memory: the latest value of each key with its
//! revision, put, get, create, compare-and-set update and delete, and
//! entries that expire after the bucket's max age on tokio's clock. That is
//! what the event store asks of a KV bucket (snapshots, projection
//! checkpoints and leases); no history or watches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// A key's latest entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KvEntry {
    /// `None`: the key was deleted (a delete marker, as JetStream keeps).
    pub(crate) value: Option<Bytes>,
    /// The bucket-wide revision of this write (JetStream: its stream
    /// sequence).
    pub(crate) revision: u64,
}

/// Why a conditional write was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KvRefusal {
    /// `create` of a key that has a value.
    #[error("key exists")]
    AlreadyExists,
    /// The key's revision is not the one named.
    #[error("wrong last revision")]
    WrongLastRevision,
}

/// One bucket; clones are the same bucket.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryKeyValue {
    shared: Arc<Mutex<Bucket>>,
}

#[derive(Debug, Default)]
struct Bucket {
    entries: HashMap<String, Written>,
    last_revision: u64,
    /// Entries older than this are gone (JetStream: the stream's max age).
    max_age: Option<Duration>,
}

#[derive(Debug)]
struct Written {
    entry: KvEntry,
    at: Instant,
}

impl Bucket {
    /// The key's entry unless it expired.
    fn live(&mut self, key: &str) -> Option<&KvEntry> {
        let expired = match (self.entries.get(key), self.max_age) {
            (Some(written), Some(max_age)) => written.at + max_age <= Instant::now(),
            _ => false,
        };
        if expired {
            self.entries.remove(key);
        }
        self.entries.get(key).map(|written| &written.entry)
    }

    fn write(&mut self, key: String, value: Option<Bytes>) -> u64 {
        self.last_revision += 1;
        let revision = self.last_revision;
        let entry = KvEntry { value, revision };
        self.entries.insert(
            key,
            Written {
                entry,
                at: Instant::now(),
            },
        );
        revision
    }

    /// Refuses unless the key's revision is `revision` (0: no entry).
    fn expect(&mut self, key: &str, revision: u64) -> Result<(), KvRefusal> {
        let current = self.live(key).map_or(0, |entry| entry.revision);
        if current == revision {
            Ok(())
        } else {
            Err(KvRefusal::WrongLastRevision)
        }
    }
}

impl MemoryKeyValue {
    /// A bucket whose entries expire `max_age` after their write.
    pub(crate) fn with_max_age(max_age: Option<Duration>) -> MemoryKeyValue {
        let bucket = Bucket {
            max_age,
            ..Bucket::default()
        };
        MemoryKeyValue {
            shared: Arc::new(Mutex::new(bucket)),
        }
    }

    pub(crate) fn set_max_age(&self, max_age: Option<Duration>) {
        self.bucket().max_age = max_age;
    }

    /// The key's value, `None` when it has none (never written, deleted or
    /// expired).
    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.entry(key).and_then(|entry| entry.value)
    }

    /// The key's latest entry, a delete marker included.
    pub(crate) fn entry(&self, key: &str) -> Option<KvEntry> {
        self.bucket().live(key).cloned()
    }

    /// Writes the key if it has no value (never written, deleted or
    /// expired), as JetStream's KV `create`.
    pub(crate) fn create(&self, key: String, value: Bytes) -> Result<u64, KvRefusal> {
        let mut bucket = self.bucket();
        if bucket.live(&key).is_some_and(|entry| entry.value.is_some()) {
            return Err(KvRefusal::AlreadyExists);
        }
        Ok(bucket.write(key, Some(value)))
    }

    /// Writes the key if its latest revision is `revision`.
    pub(crate) fn update(
        &self,
        key: String,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, KvRefusal> {
        let mut bucket = self.bucket();
        bucket.expect(&key, revision)?;
        Ok(bucket.write(key, Some(value)))
    }

    /// Deletes the key if its latest revision is `revision`.
    pub(crate) fn delete_expect_revision(&self, key: &str, revision: u64) -> Result<(), KvRefusal> {
        let mut bucket = self.bucket();
        bucket.expect(key, revision)?;
        bucket.write(key.to_owned(), None);
        Ok(())
    }

    fn bucket(&self) -> MutexGuard<'_, Bucket> {
        // Every change is one insert or remove: a panic elsewhere leaves it
        // consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn bytes(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn writes_are_compared_and_set_on_the_revision() {
        let bucket = MemoryKeyValue::default();
        let first = bucket.create("k".into(), bytes("1")).unwrap();
        assert_eq!(
            bucket.create("k".into(), bytes("2")),
            Err(KvRefusal::AlreadyExists)
        );
        let second = bucket.update("k".into(), bytes("2"), first).unwrap();
        assert_eq!(
            bucket.update("k".into(), bytes("3"), first),
            Err(KvRefusal::WrongLastRevision),
            "a stale revision"
        );
        assert_eq!(bucket.get("k"), Some(bytes("2")));
        assert_eq!(
            bucket.delete_expect_revision("k", first),
            Err(KvRefusal::WrongLastRevision)
        );
        bucket.delete_expect_revision("k", second).unwrap();
        assert_eq!(bucket.get("k"), None);
        assert!(bucket.entry("k").is_some(), "a delete marker stays");
        bucket.create("k".into(), bytes("4")).unwrap();
        assert_eq!(
            bucket.update("other".into(), bytes("x"), 1),
            Err(KvRefusal::WrongLastRevision),
            "no entry is revision 0"
        );
        bucket.update("other".into(), bytes("x"), 0).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_max_age() {
        let bucket = MemoryKeyValue::with_max_age(Some(Duration::from_secs(3)));
        let revision = bucket.create("lease".into(), bytes("a")).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        let revision = bucket.update("lease".into(), bytes("a"), revision).unwrap();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(bucket.get("lease"), Some(bytes("a")), "renewed");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(bucket.entry("lease"), None, "expired");
        assert_eq!(
            bucket.update("lease".into(), bytes("a"), revision),
            Err(KvRefusal::WrongLastRevision),
            "an expired holder cannot renew"
        );
        bucket.create("lease".into(), bytes("b")).unwrap();
    }
}
