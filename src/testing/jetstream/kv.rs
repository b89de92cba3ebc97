//! A key-value bucket in memory: the latest value of each key, put and get,
//! which is what the event store's snapshots ask of a KV bucket (no
//! history, revisions, watches or TTL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// One bucket; clones are the same bucket.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryKeyValue {
    entries: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl MemoryKeyValue {
    pub(crate) fn put(&self, key: String, value: Bytes) {
        self.entries().insert(key, value);
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        self.entries().get(key).cloned()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bytes>> {
        // Every change is one insert: a panic elsewhere leaves it consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
