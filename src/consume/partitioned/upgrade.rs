//! Partition consumers made by an older version. Before keyed-only filters
//! a partition's consumer also filtered on each handled type's unkeyed
//! subject (`{partition}.{env}.{type}`), which the stream never holds. A
//! group's filter only ever widens (see `group_filter`), so an upgraded
//! member would keep that filter for good, and with it the server's slow
//! next-event lookup over every key of the stream, and the drift warning.
//!
//! So a member drops such filters before it attaches to a partition: they
//! match nothing, so no event is skipped by dropping them. The rest of the
//! server's filter stays (another version may handle more types). An older
//! member still running may write them back when it checks its filter; the
//! next member of this version to take the partition drops them again.

use super::stream::matches_keyed;
use crate::client::Client;
use crate::consume::group_filter::filters_of;
use crate::error::BoxError;

/// Drops the filters of partition `partition`'s consumer `name` on
/// `stream` that cannot match a keyed subject; `mine` are this member's
/// filters of the partition, written instead when none would remain.
pub(super) async fn drop_unkeyed_filters(
    client: &Client,
    stream: &str,
    name: &str,
    partition: u16,
    mine: &[String],
) -> Result<(), BoxError> {
    let jetstream = &client.nats_transport("a partition's consumer")?.jetstream;
    let stream = jetstream.get_stream(stream).await?;
    let mut config = match stream.consumer_info(name).await {
        Ok(info) => info.config.clone(),
        // Not made yet: attaching makes it with this version's filter.
        Err(err) if is_not_found(&err) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    let on_server = filters_of(&config);
    let Some(kept) = keyed_only(&on_server, partition) else {
        return Ok(());
    };
    let kept = if kept.is_empty() { mine.to_vec() } else { kept };
    match kept.as_slice() {
        [single] => {
            config.filter_subject = single.clone();
            config.filter_subjects = Vec::new();
        }
        many => {
            config.filter_subject = String::new();
            config.filter_subjects = many.to_vec();
        }
    }
    tracing::info!(
        consumer = %name,
        old = ?on_server,
        new = ?kept,
        "dropping a partition consumer's unkeyed filters (made by an older version)"
    );
    stream.update_consumer(config).await?;
    Ok(())
}

/// `filters` without those of `partition` that cannot match a keyed
/// subject; `None` when there are none such. Filters of another shape are
/// not this version's to judge: they stay.
fn keyed_only(filters: &[String], partition: u16) -> Option<Vec<String>> {
    let prefix = format!("{partition}.");
    let unkeyed = |filter: &String| {
        filter
            .strip_prefix(&prefix)
            .is_some_and(|filter| !matches_keyed(filter))
    };
    if !filters.iter().any(unkeyed) {
        return None;
    }
    Some(filters.iter().filter(|f| !unkeyed(f)).cloned().collect())
}

fn is_not_found(err: &async_nats::jetstream::context::ConsumerInfoError) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    use async_nats::jetstream::ErrorCode;
    match err.kind() {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(js) => js.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::keyed_only;

    fn strings(all: &[&str]) -> Vec<String> {
        all.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn only_the_partitions_unkeyed_filters_are_dropped() {
        let old = strings(&[
            "1.dev.bank.account.opened.v1",
            "1.dev.bank.account.opened.v1.*",
            "1.dev.bank.>",
        ]);
        assert_eq!(
            keyed_only(&old, 1),
            Some(strings(&["1.dev.bank.account.opened.v1.*", "1.dev.bank.>"]))
        );
        assert_eq!(keyed_only(&old[1..], 1), None);
        // Another partition's filters are not this one's to judge.
        assert_eq!(keyed_only(&old, 2), None);
    }
}
