//! NATS permissions for one service, generated from what it declares: the
//! event types it publishes, the consumer groups it reads, the streams it
//! provisions and its dead-letter stream.
//!
//! The result allows exactly the subjects the library uses for those, and
//! nothing else, so a service that publishes another service's event type
//! or reads another group is refused by the server (the library reports it
//! as a typed `PermissionDenied`):
//!
//! | for                       | publish                                                        |
//! |---------------------------|----------------------------------------------------------------|
//! | each event type           | `{env}.{type}`, `{env}.{type}.*` (keyed)                        |
//! | each group `c` of `s`     | `$JS.API.CONSUMER.{INFO,CREATE,DURABLE.CREATE}.s.c[.>]`, `$JS.API.CONSUMER.MSG.NEXT.s.c`, `$JS.ACK.s.c.>`, `$JS.API.STREAM.{INFO,MSG.GET}.s` |
//! | its failed runs           | `$KV.jetevents_attempts.c.s.>`, its direct gets, the bucket's info and creation |
//! | dead letters of group `c` | `{prefix}.c.>`, `$JS.API.STREAM.INFO.{dead-letter stream}`      |
//! | each stream it provisions | `$JS.API.STREAM.{INFO,CREATE,UPDATE}.s`                         |
//! | each claim-check bucket `b` | `$O.b.>` (chunks, metadata), `$JS.API.STREAM.{INFO,CREATE,MSG.GET}.OBJ_b`, `$JS.API.DIRECT.GET.OBJ_b.>`, `$JS.API.CONSUMER.CREATE.OBJ_b[.>]` (reads), `$JS.FC.OBJ_b.>` (flow control) |
//! | always                    | `$JS.API.INFO`, `$JS.API.STREAM.NAMES` (read only), `_INBOX.>` (replies) |
//!
//! It subscribes to `_INBOX.>` (publish acks, API replies and pulled
//! messages all arrive on inboxes) and, per group, to the server's
//! advisory of events that ran out of deliveries
//! (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.s.c`), which the runner
//! dead-letters.
//!
//! ```
//! use jetevents::event::EventType;
//! use jetevents::permissions::ServiceAccess;
//!
//! let access = ServiceAccess::new("dev")?
//!     .publishes(EventType::parse("billing.invoice.issued.v1")?)
//!     .consumes("BOOKING", "billing")?;
//! let permissions = access.permissions();
//! assert!(permissions.publish.contains(&"dev.billing.invoice.issued.v1.*".to_owned()));
//! assert!(permissions.publish.contains(&"$JS.API.CONSUMER.MSG.NEXT.BOOKING.billing".to_owned()));
//! println!("{}", permissions.user_entry("billing", "$BILLING_PASSWORD"));
//! # Ok::<_, jetevents::subject::SubjectError>(())
//! ```

use std::collections::BTreeSet;

use crate::consume::{DeadLetterConfig, ATTEMPTS_BUCKET};
use crate::event::EventType;
use crate::subject::{SubjectError, Subjects};
use crate::token::validate_token;

/// Where replies come back: publish acks, JetStream API replies, pulls.
const INBOXES: &str = "_INBOX.>";

/// What a service publishes, reads and provisions.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceAccess {
    subjects: Subjects,
    publishes: Vec<EventType>,
    groups: Vec<(String, String)>,
    streams: Vec<String>,
    dead_letters: Option<DeadLetterConfig>,
    claim_check_buckets: Vec<String>,
}

impl ServiceAccess {
    /// A service of subject environment `env` that does nothing yet.
    pub fn new(env: &str) -> Result<ServiceAccess, SubjectError> {
        Ok(ServiceAccess {
            subjects: Subjects::new(env)?,
            publishes: Vec::new(),
            groups: Vec::new(),
            streams: Vec::new(),
            dead_letters: None,
            claim_check_buckets: Vec::new(),
        })
    }

    /// It publishes events of `event_type`.
    pub fn publishes(mut self, event_type: EventType) -> ServiceAccess {
        self.publishes.push(event_type);
        self
    }

    /// It reads (and creates or updates) consumer group `group` of `stream`.
    /// Both become subject tokens, so both must be valid tokens.
    pub fn consumes(mut self, stream: &str, group: &str) -> Result<ServiceAccess, SubjectError> {
        validate_token(stream)?;
        validate_token(group)?;
        self.groups.push((stream.to_owned(), group.to_owned()));
        Ok(self)
    }

    /// It creates and updates `stream` (with `Client::ensure_stream`).
    pub fn provisions(mut self, stream: &str) -> Result<ServiceAccess, SubjectError> {
        validate_token(stream)?;
        self.streams.push(stream.to_owned());
        Ok(self)
    }

    /// Its groups dead-letter to `config`'s stream.
    pub fn dead_letters(mut self, config: DeadLetterConfig) -> Result<ServiceAccess, SubjectError> {
        validate_token(&config.stream)?;
        validate_token(&config.subject_prefix)?;
        self.dead_letters = Some(config);
        Ok(self)
    }

    /// It stores and reads claim-checked event data in Object Store bucket
    /// `bucket` (`ClaimCheck::open`, publishers with a claim check and
    /// consumers of their events). `ClaimCheck::remove_orphans` reads whole
    /// streams and deletes objects: run it as an operator, not with these.
    pub fn claim_checks(mut self, bucket: &str) -> Result<ServiceAccess, SubjectError> {
        validate_token(bucket)?;
        self.claim_check_buckets.push(bucket.to_owned());
        Ok(self)
    }

    /// The permissions it needs.
    pub fn permissions(&self) -> Permissions {
        let mut publish = BTreeSet::new();
        let mut subscribe = vec![INBOXES.to_owned()];
        for event_type in &self.publishes {
            publish.extend(self.subjects.filters_for_type(event_type));
        }
        for (stream, group) in &self.groups {
            publish.extend(group_subjects(stream, group));
            subscribe.push(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{group}"
            ));
            if let Some(dead_letters) = &self.dead_letters {
                publish.insert(format!("{}.{group}.>", dead_letters.subject_prefix));
            }
        }
        if let Some(dead_letters) = &self.dead_letters {
            publish.insert(format!("$JS.API.STREAM.INFO.{}", dead_letters.stream));
        }
        for bucket in &self.claim_check_buckets {
            publish.extend(claim_check_subjects(bucket));
        }
        for stream in &self.streams {
            for call in ["INFO", "CREATE", "UPDATE"] {
                publish.insert(format!("$JS.API.STREAM.{call}.{stream}"));
            }
        }
        // Read-only calls: the account's limits, and which stream stores a
        // subject (asked when a publish finds no stream).
        publish.insert("$JS.API.INFO".to_owned());
        publish.insert("$JS.API.STREAM.NAMES".to_owned());
        publish.insert(INBOXES.to_owned());
        Permissions {
            publish: publish.into_iter().collect(),
            subscribe,
        }
    }
}

/// Reading group `group` of `stream`: the JetStream API calls of its
/// consumer, its acks, and its records of failed runs.
fn group_subjects(stream: &str, group: &str) -> Vec<String> {
    let api = "$JS.API.CONSUMER";
    let attempts = format!("{group}.{stream}.>");
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("{api}.INFO.{stream}.{group}"),
        format!("{api}.CREATE.{stream}.{group}"),
        // Created with its filter subject in the API subject.
        format!("{api}.CREATE.{stream}.{group}.>"),
        format!("{api}.DURABLE.CREATE.{stream}.{group}"),
        format!("{api}.MSG.NEXT.{stream}.{group}"),
        // Ack, Nak, Term and in-progress are replies to the message's
        // `$JS.ACK.{stream}.{group}...` subject.
        format!("$JS.ACK.{stream}.{group}.>"),
        // An event that ran out of deliveries is read back to dead-letter it.
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.STREAM.INFO.KV_{ATTEMPTS_BUCKET}"),
        // The first group of the account to need the bucket creates it.
        format!("$JS.API.STREAM.CREATE.KV_{ATTEMPTS_BUCKET}"),
        format!("$JS.API.DIRECT.GET.KV_{ATTEMPTS_BUCKET}.$KV.{ATTEMPTS_BUCKET}.{attempts}"),
        format!("$KV.{ATTEMPTS_BUCKET}.{attempts}"),
    ]
}

/// Using claim-check bucket `bucket`: the Object Store's stream `OBJ_{bucket}`
/// as async-nats drives it (opened by its info, created when missing,
/// written on `$O.{bucket}.C.*` and `.M.*`, an object's metadata read by a
/// direct get, its chunks by an ordered consumer whose flow-control
/// requests are answered on `$JS.FC`).
fn claim_check_subjects(bucket: &str) -> Vec<String> {
    let stream = format!("OBJ_{bucket}");
    vec![
        format!("$O.{bucket}.>"),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// Subjects a NATS user may publish to and subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Permissions {
    /// Subjects it may publish to (requests included), sorted.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

impl Permissions {
    /// The `permissions` block of a user in a nats-server config.
    pub fn config_block(&self) -> String {
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|subject| format!("        {}", quoted(subject)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        format!(
            "permissions: {{\n    publish: {{\n      allow: [\n{}\n      ]\n    }}\n    \
             subscribe: {{\n      allow: [\n{}\n      ]\n    }}\n  }}",
            list(&self.publish),
            list(&self.subscribe)
        )
    }

    /// An entry of `authorization { users: [...] }` for user `user` whose
    /// password is `password`: write a variable reference such as
    /// `$BILLING_PASSWORD` (resolved by the server from its environment) to
    /// keep the secret out of the file.
    pub fn user_entry(&self, user: &str, password: &str) -> String {
        let password = if password.starts_with('$') {
            password.to_owned()
        } else {
            quoted(password)
        };
        format!(
            "{{\n  user: {}\n  password: {password}\n  {}\n}}",
            quoted(user),
            self.config_block()
        )
    }

    /// An entry of `authorization { users: [...] }` for the nkey user
    /// `public_key` (starts with `U`).
    pub fn nkey_entry(&self, public_key: &str) -> String {
        format!(
            "{{\n  nkey: {}\n  {}\n}}",
            quoted(public_key),
            self.config_block()
        )
    }
}

/// A double-quoted config string: `$` inside quotes is not a variable.
fn quoted(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests;
