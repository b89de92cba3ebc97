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

/// The filters of one partition: the group's filters that can match a
/// keyed subject (the stream holds no other), under the partition's token.
///
/// Dropping the others (a type's filter without the key token) matters for
/// speed, not only tidiness: with one filter the server finds a partition's
/// next event among the subjects of that partition, with several it
/// intersects them with every subject of the stream's block, one per key.
/// That cost is the server's, paid for every event (a partition has one
/// event out at a time), and it does not shrink as partitions are added.
pub(super) fn partition_filters(filters: &[String], partition: u16) -> Vec<String> {
    filters
        .iter()
        .filter(|filter| matches_keyed(filter))
        .map(|filter| format!("{partition}.{filter}"))
        .collect()
}

/// Whether `filter` can match `{env}.{domain}.{entity}.{action}.{version}.{key}`.
pub(super) fn matches_keyed(filter: &str) -> bool {
    let tokens = filter.split('.').count();
    if filter == ">" || filter.ends_with(".>") {
        // `>` stands for one token or more.
        tokens <= KEYED_TOKENS
    } else {
        tokens == KEYED_TOKENS
    }
}

/// Tokens of a keyed subject.
const KEYED_TOKENS: usize = 6;

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

    #[test]
    fn partition_filters_keep_only_what_a_keyed_subject_can_match() {
        let subjects = Subjects::new("dev").unwrap();
        let event_type = crate::event::EventType::parse("bank.account.opened.v1").unwrap();
        // A type's filters: without and with the key token.
        let mut filters = subjects.filters_for_type(&event_type);
        filters.extend(subjects.filters_for_pattern("bank.account.*").unwrap());
        filters.extend(subjects.filters_for_pattern("bank.>").unwrap());
        assert_eq!(
            partition_filters(&filters, 0),
            [
                "0.dev.bank.account.opened.v1.*",
                "0.dev.bank.account.*.*.*",
                "0.dev.bank.>"
            ]
        );
    }
}
