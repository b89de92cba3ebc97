//! Letting the saga's stream hold its timers.

use async_nats::jetstream;

use super::error::{SagaError, SagaErrorKind};

/// Allows message schedules on `stream` and adds `timer_subjects` to its
/// subjects (the schedule and its target must be in one stream).
pub(crate) async fn allow_schedules(
    jetstream: &jetstream::Context,
    stream: &str,
    timer_subjects: &str,
) -> Result<(), SagaError> {
    let error = |err: Box<dyn std::error::Error + Send + Sync>| {
        SagaError::with_source(SagaErrorKind::Stream, err)
    };
    let mut handle = jetstream
        .get_stream(stream)
        .await
        .map_err(|err| error(Box::new(err)))?;
    let info = handle.info().await.map_err(|err| error(Box::new(err)))?;
    let mut config = info.config.clone();
    let has_subjects = config.subjects.iter().any(|s| s == timer_subjects);
    if config.allow_message_schedules && has_subjects {
        return Ok(());
    }
    config.allow_message_schedules = true;
    if !has_subjects {
        config.subjects.push(timer_subjects.to_owned());
    }
    jetstream
        .update_stream(config)
        .await
        .map_err(|err| error(Box::new(err)))?;
    Ok(())
}
