//! One trace from the producer through consumer A, A's follow-up event and
//! consumer B, in both CloudEvents encodings, checked on the exported spans
//! and on the stored messages.
//!
//! Alone in its binary: it installs a global subscriber (tracing caches per
//! call site whether anyone listens, so thread-local subscribers in several
//! tests of one binary miss spans).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::time::Duration;

use jetevents::client::Client;
use jetevents::codec::Encoding;
use jetevents::consume::{Consumer, Context, DeadLetterConfig};
use jetevents::envelope::Envelope;
use jetevents::provision::StreamSpec;
use jetevents::publish::{PublishOptions, Receipt};
use jetevents::subject::destination_template;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

mod consume_common;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, OrderShipped, Running};

/// The W3C spec's own example: two vendors, order significant.
const TRACE_STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

#[tokio::test]
async fn one_trace_runs_from_the_producer_through_both_consumers_in_both_encodings() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("observability-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let url = jetevents_testcontainers::shared().await.url();
    // Sequential, not two tests: both need the one global subscriber.
    let modes = [
        (Encoding::Binary, "4bf92f3577b34da6a3ce929d0e0e4736"),
        (Encoding::Structured, "0af7651916cd43dd8448eb211c80319c"),
    ];
    for (encoding, upstream_trace) in modes {
        exporter.reset();
        two_hops(&url, encoding, upstream_trace, &exporter).await;
    }
}

/// What consumer B saw of the follow-up event.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    causation_id: Option<String>,
    correlation_id: Option<String>,
}

async fn two_hops(
    url: &str,
    encoding: Encoding,
    upstream_trace: &str,
    exporter: &InMemorySpanExporter,
) {
    let env = support::unique("obs");
    let service = |source: &'static str| {
        move |config: &mut jetevents::config::Config| {
            config.encoding = encoding;
            config.source = source.to_owned();
        }
    };
    let checkout = support::connect(url, &env, service("/checkout")).await;
    let billing = support::connect(url, &env, service("/billing")).await;
    let shipping = support::connect(url, &env, service("/shipping")).await;
    let stream = support::unique("SHOP");
    let spec = StreamSpec::for_domain(checkout.subjects(), &stream, "shop").unwrap();
    checkout.ensure_stream(&spec).await.unwrap();
    let dead_letters = DeadLetterConfig::new(support::unique("DL"), support::unique("dl"));

    // Consumer A (billing) publishes a follow-up from its handler.
    let follow_ups: Log<Receipt> = Log::default();
    let consumer_a = Consumer::builder(&billing, "billing")
        .stream(&stream)
        .dead_letter(dead_letters.clone())
        .with_state(follow_ups.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<Receipt>>| async move {
                let receipt = ctx.publish(&OrderShipped { order: event.order }).await?;
                ctx.state().push(receipt);
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    // Consumer B (shipping) handles the follow-up.
    let seen: Log<Seen> = Log::default();
    let consumer_b = Consumer::builder(&shipping, "shipping")
        .stream(&stream)
        .dead_letter(dead_letters)
        .with_state(seen.clone())
        .handle(|_: OrderShipped, ctx: Context<Log<Seen>>| async move {
            ctx.state().push(Seen {
                id: ctx.id().to_owned(),
                causation_id: ctx.causation_id().map(str::to_owned),
                correlation_id: ctx.correlation_id().map(str::to_owned),
            });
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running_a = Running::start(consumer_a);
    let running_b = Running::start(consumer_b);

    // The application's request span continues an upstream trace (say, an
    // HTTP request) that carries vendor trace state.
    let upstream = SpanContext::new(
        TraceId::from_hex(upstream_trace).unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_str(TRACE_STATE).unwrap(),
    );
    let request = tracing::info_span!("checkout request");
    request
        .set_parent(opentelemetry::Context::new().with_remote_span_context(upstream.clone()))
        .unwrap();
    let correlation = support::unique("checkout-");
    let first = checkout
        .publisher()
        .publish_with(
            &order(1),
            PublishOptions::new().correlation_id(correlation.clone()),
        )
        .instrument(request.clone())
        .await
        .unwrap();
    drop(request);

    eventually(
        "follow-up handled by B",
        Duration::from_secs(20),
        || async { seen.len() == 1 },
    )
    .await;
    // Stopping drains the runners, so every process span has ended.
    running_a.stop().await;
    running_b.stop().await;
    let follow_up = follow_ups.items().pop().unwrap();

    // Lineage: the follow-up names the first event as its cause and carries
    // the conversation's correlation id.
    let seen = seen.items().pop().unwrap();
    assert_eq!(seen.id, follow_up.event_id);
    assert_eq!(seen.causation_id.as_deref(), Some(first.event_id.as_str()));
    assert_eq!(seen.correlation_id.as_deref(), Some(correlation.as_str()));

    // The stored messages, as any other client would read them.
    let first_wire = stored(&checkout, &first, encoding).await;
    let follow_up_wire = stored(&checkout, &follow_up, encoding).await;
    assert_eq!(
        follow_up_wire.envelope.causation_id(),
        Some(first.event_id.as_str())
    );
    assert_eq!(
        follow_up_wire.envelope.correlation_id(),
        Some(correlation.as_str())
    );
    assert_eq!(
        first_wire.envelope.correlation_id(),
        Some(correlation.as_str())
    );
    let first_parent = w3c(&first_wire.traceparent);
    let follow_up_parent = w3c(&follow_up_wire.traceparent);
    // Trace state survives both hops unchanged.
    assert_eq!(first_wire.tracestate.as_deref(), Some(TRACE_STATE));
    assert_eq!(follow_up_wire.tracestate.as_deref(), Some(TRACE_STATE));

    // The exported spans.
    let spans = exporter.get_finished_spans().unwrap();
    // The trace's shape, for the README (`-- --nocapture` shows it).
    println!("{encoding:?} encoding:\n{}", tree(&spans));
    let names: Vec<_> = spans.iter().map(|span| span.name.to_string()).collect();
    // The span named `name` (about `subject`, when given: names carry the
    // subject's template, the same for every key).
    let one = |name: String, subject: Option<&str>| -> &SpanData {
        let found: Vec<_> = spans
            .iter()
            .filter(|span| span.name == name)
            .filter(|span| {
                subject.is_none_or(|subject| {
                    span.attributes.iter().any(|kv| {
                        kv.key.as_str() == "messaging.destination.name"
                            && kv.value.to_string() == subject
                    })
                })
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} ({subject:?}) in {names:?}");
        found[0]
    };
    let by_subject = |operation: &str, subject: &str| {
        one(
            format!("{operation} {}", destination_template(subject)),
            Some(subject),
        )
    };
    let request = one("checkout request".to_owned(), None);
    let publish_first = by_subject("publish", &first.subject);
    let process_a = by_subject("process", &first.subject);
    let publish_follow_up = by_subject("publish", &follow_up.subject);
    let process_b = by_subject("process", &follow_up.subject);

    // One trace, the upstream one, through every span.
    for span in [
        request,
        publish_first,
        process_a,
        publish_follow_up,
        process_b,
    ] {
        assert_eq!(
            span.span_context.trace_id(),
            upstream.trace_id(),
            "{}",
            span.name
        );
        assert_eq!(
            span.span_context.trace_state().header(),
            TRACE_STATE,
            "{}",
            span.name
        );
    }
    assert_eq!(first_parent.trace_id, upstream_trace);
    assert_eq!(follow_up_parent.trace_id, upstream_trace);

    // request -> publish (producer) -> process A (consumer) -> publish
    // (producer) -> process B (consumer).
    assert_eq!(request.parent_span_id, upstream.span_id());
    assert_eq!(publish_first.parent_span_id, request.span_context.span_id());
    assert_eq!(publish_first.span_kind, SpanKind::Producer);
    // The traceparent sent is the publish span's own.
    assert_eq!(
        first_parent.span_id,
        publish_first.span_context.span_id().to_string()
    );
    assert_eq!(first_parent.flags, "01");
    assert_eq!(process_a.span_kind, SpanKind::Consumer);
    assert_eq!(
        process_a.parent_span_id,
        publish_first.span_context.span_id()
    );
    assert!(process_a.parent_span_is_remote);
    assert_eq!(publish_follow_up.span_kind, SpanKind::Producer);
    assert_eq!(
        publish_follow_up.parent_span_id,
        process_a.span_context.span_id()
    );
    assert!(!publish_follow_up.parent_span_is_remote);
    assert_eq!(
        follow_up_parent.span_id,
        publish_follow_up.span_context.span_id().to_string()
    );
    assert_eq!(follow_up_parent.flags, "01");
    assert_eq!(process_b.span_kind, SpanKind::Consumer);
    assert_eq!(
        process_b.parent_span_id,
        publish_follow_up.span_context.span_id()
    );
    assert!(process_b.parent_span_is_remote);
}

/// A stored event's trace extensions as they are on the wire, and the
/// envelope decoded from it.
struct Wire {
    traceparent: String,
    tracestate: Option<String>,
    envelope: Envelope,
}

/// Reads the message the server stored for `receipt` and takes its trace
/// extensions from where `encoding` puts them: `ce-` headers (binary) or
/// members of the JSON document (structured).
async fn stored(client: &Client, receipt: &Receipt, encoding: Encoding) -> Wire {
    let message = client
        .jetstream()
        .unwrap()
        .get_stream(&receipt.stream)
        .await
        .unwrap()
        .get_raw_message(receipt.sequence)
        .await
        .unwrap();
    let header = |name: &str| {
        message
            .headers
            .get(name)
            .map(|value| value.as_str().to_owned())
    };
    let (traceparent, tracestate) = match encoding {
        Encoding::Binary => {
            assert_eq!(header("ce-specversion").as_deref(), Some("1.0"));
            assert_ne!(
                header("Content-Type").as_deref(),
                Some("application/cloudevents+json")
            );
            (
                header("ce-traceparent").expect("ce-traceparent header"),
                header("ce-tracestate"),
            )
        }
        Encoding::Structured => {
            assert_eq!(
                header("Content-Type").as_deref(),
                Some("application/cloudevents+json")
            );
            assert!(header("ce-traceparent").is_none());
            let document: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            let member = |name: &str| document[name].as_str().map(str::to_owned);
            (
                member("traceparent").expect("traceparent member"),
                member("tracestate"),
            )
        }
        // `Encoding` is non_exhaustive: a new mode needs its own reading here.
        other => panic!("no reader for {other:?}"),
    };
    let envelope = jetevents::codec::decode(Some(&message.headers), &message.payload).unwrap();
    assert_eq!(envelope.traceparent(), Some(traceparent.as_str()));
    assert_eq!(envelope.tracestate(), tracestate.as_deref());
    Wire {
        traceparent,
        tracestate,
        envelope,
    }
}

struct TraceParent {
    trace_id: String,
    span_id: String,
    flags: String,
}

/// Checks the W3C `traceparent` format by hand (not with the parser under
/// test): `00-{32 lower hex}-{16 lower hex}-{2 lower hex}`, ids not all zero.
fn w3c(value: &str) -> TraceParent {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    let lower_hex = |part: &str, len: usize| {
        assert_eq!(part.len(), len, "{value}");
        assert!(
            part.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "{value}"
        );
    };
    assert_eq!(parts[0], "00", "{value}");
    lower_hex(parts[1], 32);
    lower_hex(parts[2], 16);
    lower_hex(parts[3], 2);
    assert_ne!(parts[1], "0".repeat(32), "{value}");
    assert_ne!(parts[2], "0".repeat(16), "{value}");
    TraceParent {
        trace_id: parts[1].to_owned(),
        span_id: parts[2].to_owned(),
        flags: parts[3].to_owned(),
    }
}

/// The spans as an indented tree, each with its kind, ids and attributes.
fn tree(spans: &[SpanData]) -> String {
    fn walk(spans: &[SpanData], span: &SpanData, depth: usize, out: &mut String) {
        let indent = "    ".repeat(depth);
        out.push_str(&format!(
            "{indent}{} [{:?}] span {} parent {}{}\n",
            span.name,
            span.span_kind,
            span.span_context.span_id(),
            span.parent_span_id,
            if span.parent_span_is_remote {
                " (remote)"
            } else {
                ""
            },
        ));
        // Without what tracing-opentelemetry adds to every span.
        let noise = ["code.", "thread.", "target", "busy_ns", "idle_ns"];
        for attribute in span.attributes.iter().filter(|kv| {
            !noise
                .iter()
                .any(|prefix| kv.key.as_str().starts_with(prefix))
        }) {
            out.push_str(&format!(
                "{indent}    {}={}\n",
                attribute.key, attribute.value
            ));
        }
        let mut children: Vec<&SpanData> = spans
            .iter()
            .filter(|child| child.parent_span_id == span.span_context.span_id())
            .collect();
        children.sort_by_key(|child| child.start_time);
        for child in children {
            walk(spans, child, depth + 1, out);
        }
    }
    let mut out = String::new();
    for root in spans.iter().filter(|span| {
        !spans
            .iter()
            .any(|parent| parent.span_context.span_id() == span.parent_span_id)
    }) {
        walk(spans, root, 0, &mut out);
    }
    out
}
