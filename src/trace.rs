//! W3C trace context carried in the event's CloudEvents extensions.
//!
//! The publisher writes the current span's context into the `traceparent` and
//! `tracestate` extensions ([`inject`]); the consumer reads them back
//! ([`extract`]) and makes its process span a child of the producer's span, so
//! one trace runs from the producer through every consumer.
//!
//! The W3C format is fixed, so we format and parse it here rather than through a
//! global propagator: the library never installs one, and it works whether or
//! not the application installed one.

use std::str::FromStr;

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing::field::{Field, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::Envelope;
use crate::semconv::{
    CLOUDEVENTS_EVENT_ID, CLOUDEVENTS_EVENT_SOURCE, CLOUDEVENTS_EVENT_TYPE,
    MESSAGING_MESSAGE_CONVERSATION_ID, MESSAGING_MESSAGE_ID,
};

/// The OpenTelemetry context of the current `tracing` span, falling back to the
/// OpenTelemetry current context when the span is not exported through a
/// `tracing-opentelemetry` layer.
pub fn current_context() -> Context {
    context_of(&tracing::Span::current())
}

/// The OpenTelemetry context of `span`, read without entering it (entering
/// is a round trip through every layer), falling back like
/// [`current_context`].
#[doc(hidden)]
pub fn context_of(span: &tracing::Span) -> Context {
    let context = span.context();
    if context.span().span_context().is_valid() {
        context
    } else {
        Context::current()
    }
}

/// Formats a span context as a W3C `traceparent` value:
/// `00-{trace id, 32 hex}-{span id, 16 hex}-{flags, 2 hex}`.
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
///
/// let context = SpanContext::new(
///     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
///     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
///     TraceFlags::SAMPLED,
///     false,
///     TraceState::default(),
/// );
/// assert_eq!(
///     jetevents::trace::format_traceparent(&context),
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
/// );
/// ```
pub fn format_traceparent(context: &SpanContext) -> String {
    let mut buffer = [0u8; TRACEPARENT_LEN];
    traceparent_into(context, &mut buffer).to_owned()
}

/// Length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// Writes the `traceparent` of `context` into `buffer` and returns it as text.
/// Every publish writes one, so it avoids the formatting machinery.
fn traceparent_into<'a>(context: &SpanContext, buffer: &'a mut [u8; TRACEPARENT_LEN]) -> &'a str {
    // The two lower-case hex digits of every byte value.
    const HEX_PAIRS: [[u8; 2]; 256] = {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            pairs[byte] = [HEX[byte >> 4], HEX[byte & 0x0f]];
            byte += 1;
        }
        pairs
    };
    fn hex(out: &mut [u8], bytes: &[u8]) {
        for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
    }
    buffer[..3].copy_from_slice(b"00-");
    hex(&mut buffer[3..35], &context.trace_id().to_bytes());
    buffer[35] = b'-';
    hex(&mut buffer[36..52], &context.span_id().to_bytes());
    buffer[52] = b'-';
    hex(&mut buffer[53..55], &[context.trace_flags().to_u8()]);
    // Only ASCII digits, letters and dashes were written.
    std::str::from_utf8(buffer).unwrap_or_default()
}

/// Parses a W3C `traceparent` (and optional `tracestate`) into a remote span
/// context. Returns `None` for anything that is not a valid version-00 value:
/// a bad trace context must never fail the event it came with.
///
/// ```
/// let context = jetevents::trace::parse_traceparent(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
///     Some("vendor=value"),
/// )
/// .unwrap();
/// assert!(context.is_remote());
/// assert!(context.is_sampled());
/// assert_eq!(context.trace_state().get("vendor"), Some("value"));
/// assert!(jetevents::trace::parse_traceparent("00-zz-00-01", None).is_none());
/// ```
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || version != "00" {
        return None;
    }
    if trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let is_lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !is_lower_hex(trace_id) || !is_lower_hex(span_id) || !is_lower_hex(flags) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let trace_state = tracestate
        .and_then(|state| TraceState::from_str(state).ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        trace_state,
    ))
}

/// Writes the current trace context into the envelope's `traceparent` and
/// `tracestate` extensions. Does nothing when there is no valid current span,
/// so an application without tracing pays nothing and sends no fake ids.
pub fn inject(envelope: &mut Envelope) {
    inject_context(envelope, &current_context());
}

/// Writes `context`'s span into the envelope's trace extensions.
pub fn inject_context(envelope: &mut Envelope, context: &Context) {
    if let Some(trace) = TraceHeaders::of(context) {
        trace.write_into(envelope);
    }
}

/// The trace extensions of one outgoing event: the `traceparent` (fixed
/// length, kept inline so writing it allocates nothing) and the
/// `tracestate` when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceHeaders {
    traceparent: [u8; TRACEPARENT_LEN],
    tracestate: Option<String>,
}

impl TraceHeaders {
    /// The trace extensions of `context`'s span; `None` when it has no valid
    /// span, so an application without tracing sends no fake ids.
    pub(crate) fn of(context: &Context) -> Option<TraceHeaders> {
        let span = context.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return None;
        }
        let mut traceparent = [0u8; TRACEPARENT_LEN];
        traceparent_into(span_context, &mut traceparent);
        let state = span_context.trace_state().header();
        Some(TraceHeaders {
            traceparent,
            tracestate: (!state.is_empty()).then_some(state),
        })
    }

    /// The `traceparent` value.
    pub(crate) fn traceparent(&self) -> &str {
        // Written by `traceparent_into`: ASCII hex digits and dashes only.
        std::str::from_utf8(&self.traceparent).unwrap_or_default()
    }

    /// Sets the envelope's `traceparent` and `tracestate` extensions.
    pub(crate) fn write_into(self, envelope: &mut Envelope) {
        envelope.set_traceparent(self.traceparent());
        if let Some(state) = self.tracestate {
            envelope.set_tracestate(state);
        }
    }

    /// The `tracestate` value, when the span has one.
    pub(crate) fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Adds the binary-mode `ce-traceparent` and `ce-tracestate` headers,
    /// the state checked as the codec checks it.
    pub(crate) fn insert_into(
        &self,
        headers: &mut async_nats::HeaderMap,
    ) -> Result<(), crate::codec::EncodeError> {
        use crate::codec::binary::{attribute_value, CE_TRACEPARENT, CE_TRACESTATE};
        headers.insert(CE_TRACEPARENT, self.traceparent());
        if let Some(state) = self.tracestate() {
            headers.insert(
                CE_TRACESTATE,
                attribute_value(crate::envelope::TRACESTATE, state, false)?,
            );
        }
        Ok(())
    }
}

/// Makes `span` (a process span not yet entered) the child of the producer's
/// context in `envelope` and records the event's identity on it: what the
/// durable and the ephemeral consumers both do for every delivery.
#[doc(hidden)]
pub fn continue_in_process_span(span: &tracing::Span, envelope: &Envelope) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    // An error here means no OpenTelemetry layer: nothing to parent.
    let _ = span.set_parent(extract(envelope));
    let id = envelope.id.as_str();
    let identity = [
        (MESSAGING_MESSAGE_ID, Some(id)),
        (CLOUDEVENTS_EVENT_ID, Some(id)),
        (CLOUDEVENTS_EVENT_TYPE, Some(envelope.event_type.as_str())),
        (CLOUDEVENTS_EVENT_SOURCE, Some(envelope.source.as_str())),
        (MESSAGING_MESSAGE_CONVERSATION_ID, envelope.correlation_id()),
    ];
    record_all(span, identity);
}

/// Records `values` (a `None` records nothing) in one call: each `record`
/// is a round trip through every layer. Names the span lacks are skipped,
/// as `record` skips them.
fn record_all<const N: usize>(span: &tracing::Span, values: [(&str, Option<&str>); N]) {
    let Some(fields) = span.metadata().map(|metadata| metadata.fields()) else {
        return;
    };
    let found = values.map(|(name, value)| (fields.field(name), value));
    let Some(any_field) = found.iter().find_map(|(field, _)| field.as_ref()) else {
        return;
    };
    let entries: [(&Field, Option<&dyn Value>); N] = std::array::from_fn(|index| {
        match &found[index] {
            (Some(field), value) => (field, value.as_ref().map(|value| value as &dyn Value)),
            // Without a value, no visitor sees the entry.
            (None, _) => (any_field, None),
        }
    });
    span.record_all(&fields.value_set(&entries));
}

/// The producer's context carried by the envelope, to parent a consumer span:
/// `span.set_parent(jetevents::trace::extract(&envelope))`. An empty context
/// when the event carries none (or an invalid one).
pub fn extract(envelope: &Envelope) -> Context {
    envelope
        .traceparent()
        .and_then(|traceparent| parse_traceparent(traceparent, envelope.tracestate()))
        .map(|remote| Context::new().with_remote_span_context(remote))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parse_rejects_malformed_values() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse_traceparent(good, None).is_some());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad, None).is_none(), "{bad:?} accepted");
        }
    }

    #[test]
    fn format_then_parse_round_trips_with_state() {
        let state = TraceState::from_str("a=1,b=2").unwrap();
        let original = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("b7ad6b7169203331").unwrap(),
            TraceFlags::SAMPLED,
            false,
            state.clone(),
        );
        let parsed =
            parse_traceparent(&format_traceparent(&original), Some(&state.header())).unwrap();
        assert_eq!(parsed.trace_id(), original.trace_id());
        assert_eq!(parsed.span_id(), original.span_id());
        assert_eq!(parsed.trace_flags(), original.trace_flags());
        assert_eq!(parsed.trace_state().header(), "a=1,b=2");
    }
}
