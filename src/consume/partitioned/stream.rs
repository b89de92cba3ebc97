//! The partitioned stream: a subject transform puts each event's partition,
//! a hash of its key, in front of its subject as it is stored.

use crate::provision::StreamSpec;
use crate::subject::{SubjectError, Subjects};

/// The stream of one domain whose events are stored under
/// `{partition}.{env}.{domain}.{entity}.{action}.{version}.{key}`, the
/// partition being `{{partition(P, key)}}`: a hash of the key modulo P, so
/// every event of a key, whatever its type, is in one partition.
///
/// It captures keyed events only (`{env}.{domain}.*.*.*.*`): an event
/// without a key has no order to keep and belongs in another stream.
/// Declare it with [`Client::ensure_stream`](crate::client::Client::ensure_stream);
/// the partition count cannot change afterwards (it is reported as drift).
///
/// ```
/// use jetevents::consume::partitioned::partitioned_stream;
/// use jetevents::subject::Subjects;
///
/// let spec = partitioned_stream(&Subjects::new("dev").unwrap(), "LEDGER", "ledger", 4).unwrap();
/// assert_eq!(spec.subjects, ["dev.ledger.*.*.*.*"]);
/// let transform = spec.subject_transform.unwrap();
/// assert_eq!(
///     transform.destination,
///     "{{partition(4,4)}}.dev.ledger.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.{{wildcard(4)}}"
/// );
/// ```
pub fn partitioned_stream(
    subjects: &Subjects,
    name: impl Into<String>,
    domain: &str,
    partitions: u16,
) -> Result<StreamSpec, SubjectError> {
    crate::token::validate_token(domain)?;
    let keyed = format!("{}.{domain}.*.*.*.*", subjects.env());
    let destination = format!(
        "{}.{}.{domain}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}.{{{{wildcard(4)}}}}",
        partition_function(partitions),
        subjects.env(),
    );
    Ok(StreamSpec::new(name, vec![keyed.clone()]).subject_transform(keyed, destination))
}

/// The transform's partition token: the fourth wildcard is the key.
fn partition_function(partitions: u16) -> String {
    format!("{{{{partition({partitions},4)}}}}")
}

/// Whether a stream's transform partitions keys into `partitions`.
pub(super) fn partitions_keys(
    transform: Option<&async_nats::jetstream::stream::SubjectTransform>,
    partitions: u16,
) -> bool {
    transform.is_some_and(|transform| {
        transform
            .destination
            .starts_with(&partition_function(partitions))
    })
}

/// The filters of one partition: the group's filters under its token.
pub(super) fn partition_filters(filters: &[String], partition: u16) -> Vec<String> {
    filters
        .iter()
        .map(|filter| format!("{partition}.{filter}"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_partitioned_stream_is_recognised_by_its_count() {
        let spec = partitioned_stream(&Subjects::new("dev").unwrap(), "S", "bank", 8).unwrap();
        assert!(partitions_keys(spec.subject_transform.as_ref(), 8));
        assert!(!partitions_keys(spec.subject_transform.as_ref(), 4));
        assert!(!partitions_keys(None, 8));
    }

    #[test]
    fn partition_filters_put_the_partition_first() {
        let filters = vec!["dev.bank.account.opened.v1.*".to_owned()];
        assert_eq!(
            partition_filters(&filters, 3),
            ["3.dev.bank.account.opened.v1.*"]
        );
    }
}
