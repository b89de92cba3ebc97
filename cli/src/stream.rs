//! Opening streams by name, with "not found" told apart from other failures.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::Stream;
use async_nats::jetstream::ErrorCode;
use jetevents::client::Client;

use crate::failure::Failure;

/// The client's JetStream context: the command line always connects to a
/// server.
pub fn jetstream(client: &Client) -> Result<&async_nats::jetstream::Context, Failure> {
    client
        .jetstream()
        .ok_or_else(|| Failure::new("not connected to a NATS server"))
}

/// The stream `name`; `Ok(None)` when it does not exist.
pub async fn find(client: &Client, name: &str) -> Result<Option<Stream>, Failure> {
    match jetstream(client)?.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(Failure::during(&format!("stream {name}"), err)),
        },
    }
}

/// The stream `name`, which must exist.
pub async fn open(client: &Client, name: &str) -> Result<Stream, Failure> {
    find(client, name)
        .await?
        .ok_or_else(|| Failure::new(format!("stream {name} not found")))
}

/// A `time` timestamp as chrono's.
pub fn chrono_time(time: time::OffsetDateTime) -> Option<chrono::DateTime<chrono::Utc>> {
    let nanos = i64::try_from(time.unix_timestamp_nanos()).ok()?;
    Some(chrono::DateTime::from_timestamp_nanos(nanos))
}

/// A chrono timestamp as `time`'s.
pub fn offset_time(time: chrono::DateTime<chrono::Utc>) -> Result<time::OffsetDateTime, Failure> {
    time::OffsetDateTime::from_unix_timestamp(time.timestamp())
        .map(|seconds| {
            seconds + time::Duration::nanoseconds(i64::from(time.timestamp_subsec_nanos()))
        })
        .map_err(|err| Failure::during(&format!("time {time}"), err))
}
