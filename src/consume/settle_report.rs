//! Reporting what the consumer failed to send about an event (an ack, a
//! Nak, a dead letter): the runner and the dead-letter watcher both report
//! through it.

use std::sync::Arc;

use opentelemetry::KeyValue;

use crate::client::Client;
use crate::semconv::{MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_SYSTEM, NATS, SETTLE_OPERATION};

/// What the runner sends about an event, as the settle-failure metric
/// names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::consume) enum SettleOperation {
    Ack,
    Nak,
    Term,
    Progress,
    DeadLetter,
}

impl SettleOperation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Term => "term",
            Self::Progress => "progress",
            Self::DeadLetter => "dead_letter",
        }
    }
}

/// Reports what the runner failed to send about an event: at `WARN` with
/// the group and the stream sequence, and in
/// `jetevents.consume.settle_failures`. None may fail silently: each
/// changes what happens to the event next.
#[derive(Clone)]
pub(in crate::consume) struct SettleReporter {
    metrics: crate::metrics::Metrics,
    group: Arc<str>,
}

impl SettleReporter {
    pub(in crate::consume) fn new(client: &Client, group: &str) -> Self {
        Self {
            metrics: client.metrics().clone(),
            group: Arc::from(group),
        }
    }

    pub(in crate::consume) fn failed(
        &self,
        stream_sequence: u64,
        operation: SettleOperation,
        error: &dyn std::fmt::Display,
        consequence: &str,
    ) {
        let operation = operation.as_str();
        tracing::warn!(
            consumer = %self.group,
            stream_sequence,
            operation,
            error = %error,
            "{operation} failed; {consequence}"
        );
        self.metrics.settle_failures.add(
            1,
            &[
                KeyValue::new(MESSAGING_SYSTEM, NATS),
                KeyValue::new(MESSAGING_CONSUMER_GROUP_NAME, self.group.to_string()),
                KeyValue::new(SETTLE_OPERATION, operation),
            ],
        );
    }
}
