//! Connection limits, in total and per token (its `sub`, else its signature):
//! a slot is taken before a stream starts and given back when it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_token: HashMap<String, usize>,
}

/// The limits and what is open now.
#[derive(Debug)]
pub(crate) struct Limits {
    max_total: usize,
    max_per_token: usize,
    counts: Arc<Mutex<Counts>>,
}

/// Which limit refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Total,
    PerToken,
}

/// An open connection's slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    token: String,
    counts: Arc<Mutex<Counts>>,
}

impl Limits {
    pub(crate) fn new(max_total: usize, max_per_token: usize) -> Self {
        Self {
            max_total,
            max_per_token,
            counts: Arc::default(),
        }
    }

    pub(crate) fn acquire(&self, token: &str) -> Result<Slot, LimitHit> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(LimitHit::Total);
        }
        let open = counts.per_token.entry(token.to_owned()).or_default();
        if *open >= self.max_per_token {
            return Err(LimitHit::PerToken);
        }
        *open += 1;
        counts.total += 1;
        Ok(Slot {
            token: token.to_owned(),
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(open) = counts.per_token.get_mut(&self.token) {
            *open -= 1;
            if *open == 0 {
                counts.per_token.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn slots_are_counted_and_given_back() {
        let limits = Limits::new(2, 1);
        let a = limits.acquire("a").unwrap();
        assert_eq!(limits.acquire("a").unwrap_err(), LimitHit::PerToken);
        let _b = limits.acquire("b").unwrap();
        assert_eq!(limits.acquire("c").unwrap_err(), LimitHit::Total);
        drop(a);
        assert!(limits.acquire("a").is_ok());
    }
}
