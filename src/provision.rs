//! Declaring streams: create what is missing, update what may change, and report
//! what differs but cannot be changed instead of silently ignoring it.

use std::time::Duration;

use async_nats::jetstream::stream;

use crate::client::Client;
use crate::error::Error;
use crate::nats::jetstream::stream::{RetentionPolicy, StorageType};
use crate::subject::{SubjectError, Subjects};

/// A stream as a service declares it.
///
/// ```
/// use jetevents::provision::StreamSpec;
/// use jetevents::subject::Subjects;
///
/// let subjects = Subjects::new("dev").unwrap();
/// let spec = StreamSpec::for_domain(&subjects, "BOOKING", "booking").unwrap();
/// assert_eq!(spec.subjects, vec!["dev.booking.>".to_string()]);
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamSpec {
    /// Stream name (no `.`, `*`, `>` or whitespace).
    pub name: String,
    /// Subjects the stream captures: build them with [`Subjects`].
    pub subjects: Vec<String>,
    /// File (default: survives restarts) or memory.
    pub storage: StorageType,
    /// Replicas: 1, or 3 in a cluster for events you cannot lose.
    pub replicas: usize,
    /// Limits (default), interest or work-queue retention.
    pub retention: RetentionPolicy,
    /// Window in which a repeated `Nats-Msg-Id` (the event id) is stored once.
    pub duplicate_window: Duration,
    /// Largest event the stream accepts, in bytes; `None`: the server's limit.
    pub max_message_size: Option<i32>,
    /// How long events are kept; `None`: forever.
    pub max_age: Option<Duration>,
    /// Free text shown in the server's monitoring.
    pub description: Option<String>,
    /// Rewrites subjects as they are stored, e.g. to add the partition token
    /// of a [partitioned group](crate::consume::partitioned). Set once: a
    /// stream whose transform differs is reported as drift, not changed,
    /// since a new transform would move keys to other partitions with events
    /// still queued in the old ones.
    pub subject_transform: Option<stream::SubjectTransform>,
    /// Whether the stream runs message schedules (nats-server 2.12+): what
    /// saga timeouts are. Once on, the server keeps it on.
    pub allow_message_schedules: bool,
    /// Whether the stream takes fast-ingest batches (nats-server 2.14+),
    /// what [`Publisher::ingest`](crate::publish::Publisher::ingest) uses.
    /// Changed in place either way.
    pub allow_batch_publish: bool,
}

impl StreamSpec {
    /// A file-backed, single-replica stream for `subjects` with a two-minute
    /// duplicate window.
    pub fn new(name: impl Into<String>, subjects: Vec<String>) -> Self {
        Self {
            name: name.into(),
            subjects,
            storage: StorageType::File,
            replicas: 1,
            retention: RetentionPolicy::Limits,
            duplicate_window: Duration::from_secs(120),
            max_message_size: None,
            max_age: None,
            description: None,
            subject_transform: None,
            allow_message_schedules: false,
            allow_batch_publish: false,
        }
    }

    /// The stream of one domain: every subject `{env}.{domain}.>`.
    pub fn for_domain(
        subjects: &Subjects,
        name: impl Into<String>,
        domain: &str,
    ) -> Result<Self, SubjectError> {
        Ok(Self::new(name, vec![subjects.domain(domain)?]))
    }

    /// Sets the number of replicas.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the storage type.
    pub fn storage(mut self, storage: StorageType) -> Self {
        self.storage = storage;
        self
    }

    /// Sets the retention policy.
    pub fn retention(mut self, retention: RetentionPolicy) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the duplicate window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets the largest accepted event size.
    pub fn max_message_size(mut self, bytes: i32) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Sets how long events are kept.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Sets the subject transform applied to stored events.
    pub fn subject_transform(
        mut self,
        source: impl Into<String>,
        destination: impl Into<String>,
    ) -> Self {
        self.subject_transform = Some(stream::SubjectTransform {
            source: source.into(),
            destination: destination.into(),
        });
        self
    }

    /// Lets the stream run message schedules (see
    /// [`allow_message_schedules`](Self::allow_message_schedules)).
    pub fn allow_message_schedules(mut self, allow: bool) -> Self {
        self.allow_message_schedules = allow;
        self
    }

    /// Lets the stream take fast-ingest batches (see
    /// [`allow_batch_publish`](Self::allow_batch_publish)).
    pub fn allow_batch_publish(mut self, allow: bool) -> Self {
        self.allow_batch_publish = allow;
        self
    }

    fn to_config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            storage: self.storage,
            num_replicas: self.replicas,
            retention: self.retention,
            duplicate_window: self.duplicate_window,
            max_message_size: self.max_message_size.unwrap_or(-1),
            max_age: self.max_age.unwrap_or_default(),
            description: self.description.clone(),
            subject_transform: self.subject_transform.clone(),
            allow_message_schedules: self.allow_message_schedules,
            allow_batch_publish: self.allow_batch_publish,
            ..Default::default()
        }
    }
}

/// A setting on the server that differs from the declaration and that
/// provisioning did not change (the server forbids it).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Drift {
    /// Which setting.
    pub field: &'static str,
    /// What the declaration says.
    pub declared: String,
    /// What the server has.
    pub actual: String,
}

/// What [`Client::ensure_stream`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamReport {
    /// The stream did not exist and was created.
    pub created: bool,
    /// Settings that differed and were updated on the server.
    pub updated: Vec<&'static str>,
    /// Settings that differ and cannot be changed in place.
    pub drift: Vec<Drift>,
}

impl StreamReport {
    /// True when the server now matches the declaration exactly.
    pub fn is_in_sync(&self) -> bool {
        self.drift.is_empty()
    }
}

/// What went wrong provisioning.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionErrorKind {
    /// The declaration itself is invalid (name, subjects).
    #[error("invalid stream declaration: {0}")]
    InvalidSpec(String),
    /// JetStream is not enabled for this account or server.
    #[error("JetStream unavailable")]
    JetStreamUnavailable,
    /// The server refused the request (subjects overlap another stream,
    /// permissions, limits); the source has its description.
    #[error("server refused the stream: {0}")]
    Refused(String),
    /// No answer in time.
    #[error("timed out")]
    TimedOut,
    /// The connection's user may not make this JetStream API request (its
    /// permissions lack `subject`); reported at once instead of waiting for
    /// a reply that never comes.
    #[error("permission denied for {subject}")]
    PermissionDenied {
        /// The API subject the server refused.
        subject: String,
    },
}

/// Error of [`Client::ensure_stream`].
pub type ProvisionError = Error<ProvisionErrorKind>;

impl Client {
    /// Creates the stream if missing, otherwise updates the settings that may
    /// change (subjects, replicas, duplicate window, size and age limits,
    /// description, turning message schedules on) and reports the ones that
    /// may not (storage, retention, turning message schedules off) as
    /// drift. Safe to call at every start of every instance.
    ///
    /// ```no_run
    /// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use jetevents::provision::StreamSpec;
    /// let spec = StreamSpec::for_domain(client.subjects(), "BOOKING", "booking")?;
    /// let report = client.ensure_stream(&spec).await?;
    /// if !report.is_in_sync() {
    ///     eprintln!("stream differs from its declaration: {:?}", report.drift);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// While a cluster is electing its leaders or still gathering peers
    /// (no responders, "cluster not available", "no suitable peers"), the
    /// request is repeated for a few seconds before the error is returned.
    /// A request the connection's user may not make fails at once with
    /// [`ProvisionErrorKind::PermissionDenied`].
    pub async fn ensure_stream(&self, spec: &StreamSpec) -> Result<StreamReport, ProvisionError> {
        self.fail_fast_on_api_denial(self.ensure_stream_retrying(spec))
            .await
            .unwrap_or_else(|violation| {
                Err(Error::new(ProvisionErrorKind::PermissionDenied {
                    subject: violation.subject,
                }))
            })
    }

    async fn ensure_stream_retrying(
        &self,
        spec: &StreamSpec,
    ) -> Result<StreamReport, ProvisionError> {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1;
        loop {
            match self.ensure_stream_once(spec).await {
                Err(err) if attempt < ATTEMPTS && is_transient(&err) => {
                    tracing::debug!(
                        stream = %spec.name,
                        attempt,
                        error = %err,
                        "stream request refused while the cluster settles; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn ensure_stream_once(&self, spec: &StreamSpec) -> Result<StreamReport, ProvisionError> {
        if spec.name.is_empty()
            || spec.name.chars().any(|c| {
                matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
            })
        {
            return Err(Error::new(ProvisionErrorKind::InvalidSpec(format!(
                "stream name {:?}",
                spec.name
            ))));
        }
        #[cfg(feature = "testing")]
        if let Some(memory) = self.memory() {
            return ensure_in_memory(memory, spec);
        }
        let jetstream = self
            .jetstream()
            .ok_or_else(|| Error::new(ProvisionErrorKind::JetStreamUnavailable))?;
        let wanted = spec.to_config();
        let existing = match jetstream.get_stream(&spec.name).await {
            Ok(mut stream) => Some(stream.info().await.map_err(request_failed)?.config.clone()),
            Err(err) => match err.kind() {
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                _ => return Err(request_failed(err)),
            },
        };
        let Some(actual) = existing else {
            jetstream
                .create_stream(wanted)
                .await
                .map_err(request_failed)?;
            return Ok(StreamReport {
                created: true,
                updated: Vec::new(),
                drift: Vec::new(),
            });
        };

        let mut drift = Vec::new();
        if actual.storage != wanted.storage {
            drift.push(Drift {
                field: "storage",
                declared: format!("{:?}", wanted.storage),
                actual: format!("{:?}", actual.storage),
            });
        }
        if actual.retention != wanted.retention {
            drift.push(Drift {
                field: "retention",
                declared: format!("{:?}", wanted.retention),
                actual: format!("{:?}", actual.retention),
            });
        }
        if wanted.subject_transform.is_some()
            && actual.subject_transform != wanted.subject_transform
        {
            let shown = |transform: &Option<stream::SubjectTransform>| {
                transform.as_ref().map_or_else(
                    || "none".to_owned(),
                    |t| format!("{} -> {}", t.source, t.destination),
                )
            };
            drift.push(Drift {
                field: "subject_transform",
                declared: shown(&wanted.subject_transform),
                actual: shown(&actual.subject_transform),
            });
        }
        // The server turns schedules on in place but never off again.
        if actual.allow_message_schedules && !wanted.allow_message_schedules {
            drift.push(Drift {
                field: "allow_message_schedules",
                declared: "false".to_owned(),
                actual: "true".to_owned(),
            });
        }
        let mut updated = Vec::new();
        let mut next = actual.clone();
        if wanted.allow_message_schedules && !actual.allow_message_schedules {
            next.allow_message_schedules = true;
            updated.push("allow_message_schedules");
        }
        if wanted.allow_batch_publish != actual.allow_batch_publish {
            next.allow_batch_publish = wanted.allow_batch_publish;
            updated.push("allow_batch_publish");
        }
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        if sorted(&actual.subjects) != sorted(&wanted.subjects) {
            next.subjects = wanted.subjects.clone();
            updated.push("subjects");
        }
        if actual.num_replicas != wanted.num_replicas {
            next.num_replicas = wanted.num_replicas;
            updated.push("replicas");
        }
        if actual.duplicate_window != wanted.duplicate_window {
            next.duplicate_window = wanted.duplicate_window;
            updated.push("duplicate_window");
        }
        if actual.max_message_size != wanted.max_message_size {
            next.max_message_size = wanted.max_message_size;
            updated.push("max_message_size");
        }
        if actual.max_age != wanted.max_age {
            next.max_age = wanted.max_age;
            updated.push("max_age");
        }
        if wanted.description.is_some() && actual.description != wanted.description {
            next.description = wanted.description.clone();
            updated.push("description");
        }
        if !updated.is_empty() {
            jetstream
                .update_stream(next)
                .await
                .map_err(request_failed)?;
        }
        if !drift.is_empty() {
            tracing::warn!(stream = %spec.name, ?drift, "stream differs from its declaration");
        }
        Ok(StreamReport {
            created: false,
            updated,
            drift,
        })
    }
}

/// Attempts of [`Client::ensure_stream`] while the cluster settles: about
/// 4.5 s in all.
const ATTEMPTS: u32 = 8;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// JetStream errors that describe the cluster's state, not the request:
/// cluster not available (10008), not leader (10009), not active (10006),
/// no suitable peers yet (10005), insufficient resources (10023), stream
/// offline (10118).
const TRANSIENT_CODES: [u16; 6] = [10008, 10009, 10006, 10005, 10023, 10118];

/// Whether repeating the request can help. Timeouts are not repeated: a
/// request the account may not make also times out, and each try would cost
/// the whole timeout again.
/// Declares `spec` on the in-memory JetStream: what it keeps of a stream is
/// its subjects and duplicate window; the rest is the server's business.
#[cfg(feature = "testing")]
fn ensure_in_memory(
    memory: &crate::testing::MemoryJetStream,
    spec: &StreamSpec,
) -> Result<StreamReport, ProvisionError> {
    if spec.subject_transform.is_some() {
        return Err(Error::new(ProvisionErrorKind::InvalidSpec(
            "subject transforms need a NATS server; the in-memory JetStream has none".to_owned(),
        )));
    }
    let mut config = crate::testing::StreamConfig::new(spec.name.clone(), spec.subjects.clone());
    config.duplicate_window = spec.duplicate_window;
    let refused = |err: crate::testing::MemoryError| {
        let text = err.to_string();
        Error::with_source(ProvisionErrorKind::Refused(text), err)
    };
    let Some(existing) = memory.stream_info(&spec.name) else {
        memory.create_stream(config).map_err(refused)?;
        return Ok(StreamReport {
            created: true,
            updated: Vec::new(),
            drift: Vec::new(),
        });
    };
    let mut updated = Vec::new();
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    if sorted(&existing.config.subjects) != sorted(&config.subjects) {
        updated.push("subjects");
    }
    if existing.config.duplicate_window != config.duplicate_window {
        updated.push("duplicate_window");
    }
    if !updated.is_empty() {
        memory.update_stream(config).map_err(refused)?;
    }
    Ok(StreamReport {
        created: false,
        updated,
        drift: Vec::new(),
    })
}

fn is_transient(err: &ProvisionError) -> bool {
    match err.kind() {
        ProvisionErrorKind::JetStreamUnavailable => {
            // No responders: no meta leader (an election), or no JetStream
            // at all, which the retries only delay.
            crate::error::error_chain(err)
                .to_ascii_lowercase()
                .contains("no responders")
        }
        ProvisionErrorKind::Refused(text) => TRANSIENT_CODES
            .iter()
            .any(|code| text.contains(&format!("error code {code})"))),
        _ => false,
    }
}

fn request_failed(err: impl std::error::Error + Send + Sync + 'static) -> ProvisionError {
    let text = err.to_string();
    let lower = text.to_ascii_lowercase();
    let kind = if lower.contains("timed out") || lower.contains("timeout") {
        ProvisionErrorKind::TimedOut
    } else if lower.contains("jetstream not enabled") || lower.contains("no responders") {
        ProvisionErrorKind::JetStreamUnavailable
    } else {
        ProvisionErrorKind::Refused(text)
    };
    Error::with_source(kind, err)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn only_cluster_state_errors_are_retried() {
        let refused = |text: &str| Error::new(ProvisionErrorKind::Refused(text.to_owned()));
        assert!(is_transient(&refused(
            "JetStream cluster not available (code 503, error code 10008)"
        )));
        assert!(is_transient(&refused(
            "insufficient resources (code 503, error code 10023)"
        )));
        assert!(!is_transient(&refused(
            "subjects overlap with an existing stream (code 400, error code 10065)"
        )));
        // 100080 is not 10008.
        assert!(!is_transient(&refused(
            "other (code 400, error code 100080)"
        )));
        assert!(!is_transient(&Error::new(ProvisionErrorKind::TimedOut)));
        let no_responders = Error::with_source(
            ProvisionErrorKind::JetStreamUnavailable,
            std::io::Error::other("no responders"),
        );
        assert!(is_transient(&no_responders));
        let disabled = Error::with_source(
            ProvisionErrorKind::JetStreamUnavailable,
            std::io::Error::other("jetstream not enabled for account"),
        );
        assert!(!is_transient(&disabled));
    }
}
