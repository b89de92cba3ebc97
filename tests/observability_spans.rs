//! Producer and consumer spans follow the OpenTelemetry messaging conventions
//! and record errors and how each delivery was settled: ack, Nak with its
//! delay, dead-lettered and terminated.
//!
//! Alone in its binary: it installs a global subscriber (tracing caches per
//! call site whether anyone listens, so thread-local subscribers in several
//! tests of one binary miss spans).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::{
    Consumer, Context, DeadLetterConfig, EphemeralConsumer, HandlerError, RetryPolicy,
};
use jetevents::provision::StreamSpec;
use jetevents::publish::{PublishErrorKind, PublishOptions};
use jetevents::subject::destination_template;
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;

mod consume_common;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, Running};

/// An event no stream captures.
#[derive(Serialize, Deserialize)]
struct Lost {
    n: u64,
}

impl jetevents::Event for Lost {
    const TYPE: &'static str = "nowhere.thing.happened.v1";
}

const GROUP: &str = "billing";
const TRANSIENT_DELAY: Duration = Duration::from_millis(300);

#[tokio::test]
async fn spans_follow_the_messaging_conventions_and_record_every_outcome() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("observability-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let url = jetevents_testcontainers::shared().await.url();
    let env = support::unique("obs");
    let client = support::connect(&url, &env, |_| {}).await;
    let stream = support::unique("SHOP");
    let spec = StreamSpec::for_domain(client.subjects(), &stream, "shop").unwrap();
    client.ensure_stream(&spec).await.unwrap();
    let dead_letter_stream = support::unique("DL");

    // 1 succeeds; 2 fails transiently once (asking for a delay); 3 fails
    // permanently; 4 panics once (policy delay).
    let retry = RetryPolicy::fixed(Duration::from_millis(200))
        .jitter(0.0)
        .max_attempts(3);
    let calls: Log<(u64, u64)> = Log::default();
    let consumer = Consumer::builder(&client, GROUP)
        .stream(&stream)
        .dead_letter(DeadLetterConfig::new(
            dead_letter_stream.clone(),
            support::unique("dl"),
        ))
        .retry(retry.clone())
        .with_state(calls.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(u64, u64)>>| async move {
                let delivery = ctx.delivery_count();
                ctx.state().push((event.n, delivery));
                match (event.n, delivery) {
                    (2, 1) => Err(HandlerError::transient("inventory service unavailable")
                        .retry_after(TRANSIENT_DELAY)),
                    (3, _) => Err(HandlerError::permanent("amount is not billable")),
                    (4, 1) => panic!("handler bug"),
                    _ => Ok(()),
                }
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);

    let publisher = client.publisher();
    let correlation = support::unique("conversation-");
    let mut receipts = Vec::new();
    for n in 1..=4 {
        let options = PublishOptions::new().correlation_id(correlation.clone());
        receipts.push(publisher.publish_with(&order(n), options).await.unwrap());
    }
    // Not a CloudEvent at all.
    let garbage_subject = format!("{env}.shop.order.placed.v1.garbage");
    let garbage = client
        .jetstream()
        .unwrap()
        .publish(garbage_subject.clone(), "not a cloudevent".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A publish that fails: no stream captures the subject.
    let lost = publisher.publish(&Lost { n: 1 }).await.unwrap_err();
    assert!(
        matches!(lost.kind(), PublishErrorKind::NoStream { .. }),
        "{lost:?}"
    );

    eventually(
        "every delivery handled",
        Duration::from_secs(20),
        || async { calls.len() == 6 },
    )
    .await;
    eventually("consumer settled", Duration::from_secs(20), || async {
        let info = client
            .jetstream()
            .unwrap()
            .get_stream(&stream)
            .await
            .unwrap()
            .consumer_info(GROUP)
            .await
            .unwrap();
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    running.stop().await;

    // An ephemeral consumer's process span carries the conversation too.
    let ephemeral_seen: Log<u64> = Log::default();
    let ephemeral = EphemeralConsumer::builder(&client, "presence")
        .with_state(ephemeral_seen.clone())
        .handle(|event: OrderPlaced, ctx: Context<Log<u64>>| async move {
            ctx.state().push(event.n);
            Ok::<_, HandlerError>(())
        })
        .build()
        .await
        .unwrap();
    let (stop_ephemeral, ephemeral_stopped) = tokio::sync::oneshot::channel::<()>();
    let ephemeral_task = tokio::spawn(ephemeral.run_until(async move {
        let _ = ephemeral_stopped.await;
    }));
    let ephemeral_receipt = publisher
        .publish_with(
            &order(5),
            PublishOptions::new().correlation_id(correlation.clone()),
        )
        .await
        .unwrap();
    eventually(
        "ephemeral event handled",
        Duration::from_secs(20),
        || async { ephemeral_seen.len() == 1 },
    )
    .await;
    let _ = stop_ephemeral.send(());
    ephemeral_task.await.unwrap();

    let dead_letters = client
        .jetstream()
        .unwrap()
        .get_stream(&dead_letter_stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(dead_letters, 2, "the permanent failure and the garbage");

    let spans = exporter.get_finished_spans().unwrap();
    let names: Vec<String> = spans.iter().map(|span| span.name.to_string()).collect();

    let ephemeral_span = spans
        .iter()
        .find(|span| {
            is_about(span, "process", &ephemeral_receipt.subject)
                && attribute(span, "messaging.consumer.group.name").as_deref() == Some("presence")
        })
        .expect("the ephemeral consumer's process span");
    assert_eq!(
        attribute(ephemeral_span, "messaging.message.conversation_id"),
        Some(correlation.clone())
    );
    assert_eq!(
        attribute(ephemeral_span, "messaging.operation.name").as_deref(),
        Some("process")
    );

    // Producer spans.
    for (n, receipt) in (1..=4).zip(&receipts) {
        let span = one(&spans, "publish", &receipt.subject, None);
        // Orders are keyed: the name is the same for every order.
        let (type_subject, _key) = receipt.subject.rsplit_once('.').unwrap();
        assert_eq!(span.name, format!("publish {type_subject}.{{key}}"), "{n}");
        assert_eq!(span.span_kind, SpanKind::Producer, "{n}");
        assert_eq!(span.status, Status::Unset, "{n}");
        let expected = [
            ("messaging.system", "nats".to_owned()),
            ("messaging.operation.type", "send".to_owned()),
            ("messaging.operation.name", "publish".to_owned()),
            ("messaging.destination.name", receipt.subject.clone()),
            (
                "messaging.destination.template",
                destination_template(&receipt.subject).into_owned(),
            ),
            ("messaging.message.id", receipt.event_id.clone()),
            ("messaging.message.conversation_id", correlation.clone()),
            (
                "messaging.nats.stream.sequence",
                receipt.sequence.to_string(),
            ),
            ("cloudevents.event_id", receipt.event_id.clone()),
            ("cloudevents.event_type", "shop.order.placed.v1".to_owned()),
            ("cloudevents.event_source", "/tests".to_owned()),
            ("cloudevents.event_spec_version", "1.0".to_owned()),
        ];
        for (key, value) in expected {
            assert_eq!(
                attribute(span, key).as_deref(),
                Some(value.as_str()),
                "{n}: {key}"
            );
        }
        assert_eq!(attribute(span, "error.type"), None, "{n}");
        assert_eq!(
            int_attribute(span, "messaging.nats.stream.sequence"),
            Some(i64::try_from(receipt.sequence).unwrap())
        );
    }
    let lost_subject = format!("{env}.nowhere.thing.happened.v1");
    let lost_span = one(&spans, "publish", &lost_subject, None);
    assert_eq!(lost_span.span_kind, SpanKind::Producer);
    assert_eq!(
        attribute(lost_span, "error.type").as_deref(),
        Some("no_stream")
    );
    assert_error_status(lost_span, "no stream captures subject");

    // Consumer spans: the attributes every delivery has.
    let process = |n: u64, delivery: u64| -> &SpanData {
        let receipt = &receipts[usize::try_from(n - 1).unwrap()];
        let span = one(&spans, "process", &receipt.subject, Some(delivery));
        assert_eq!(span.span_kind, SpanKind::Consumer);
        let expected = [
            ("messaging.system", "nats".to_owned()),
            ("messaging.operation.type", "process".to_owned()),
            ("messaging.operation.name", "process".to_owned()),
            ("messaging.destination.name", receipt.subject.clone()),
            ("messaging.consumer.group.name", GROUP.to_owned()),
            ("messaging.message.id", receipt.event_id.clone()),
            ("messaging.message.conversation_id", correlation.clone()),
            ("messaging.nats.stream", stream.clone()),
            (
                "messaging.nats.stream.sequence",
                receipt.sequence.to_string(),
            ),
            (
                "messaging.nats.message.delivery_count",
                delivery.to_string(),
            ),
            ("cloudevents.event_id", receipt.event_id.clone()),
            ("cloudevents.event_type", "shop.order.placed.v1".to_owned()),
            ("cloudevents.event_source", "/tests".to_owned()),
            ("cloudevents.event_spec_version", "1.0".to_owned()),
        ];
        for (key, value) in expected {
            assert_eq!(
                attribute(span, key).as_deref(),
                Some(value.as_str()),
                "{n}/{delivery}: {key}"
            );
        }
        assert_eq!(
            int_attribute(span, "messaging.nats.message.delivery_count"),
            Some(i64::try_from(delivery).unwrap())
        );
        assert_eq!(
            int_attribute(span, "messaging.nats.stream.sequence"),
            Some(i64::try_from(receipt.sequence).unwrap())
        );
        span
    };

    // Success: ack.
    let ok = process(1, 1);
    assert_outcome(ok, "ack", None);
    assert_eq!(ok.status, Status::Unset);

    // Transient failure: Nak with the delay the handler asked for, then ack.
    let failed = process(2, 1);
    assert_outcome(failed, "nak", Some("transient"));
    assert_eq!(
        int_attribute(failed, "jetevents.nak_delay_ms"),
        Some(i64::try_from(TRANSIENT_DELAY.as_millis()).unwrap())
    );
    assert_error_status(failed, "inventory service unavailable");
    assert_outcome(process(2, 2), "ack", None);

    // Panic: caught, Nak with the policy's delay, then ack.
    let panicked = process(4, 1);
    assert_outcome(panicked, "nak", Some("panic"));
    assert_eq!(
        attribute(panicked, "jetevents.nak_delay_ms").as_deref(),
        Some(retry.delay(1).as_millis().to_string().as_str())
    );
    assert_error_status(panicked, "handler panicked: handler bug");
    assert_outcome(process(4, 2), "ack", None);

    // Permanent failure: dead-lettered, then terminated.
    let poison = process(3, 1);
    assert_outcome(poison, "dead_letter", Some("permanent"));
    assert_eq!(
        attribute(poison, "jetevents.dead_letter.reason").as_deref(),
        Some("permanent")
    );
    assert_eq!(
        attribute(poison, "jetevents.terminated").as_deref(),
        Some("true")
    );
    assert_error_status(poison, "amount is not billable");
    assert_eq!(
        spans
            .iter()
            .filter(|span| is_about(span, "process", &receipts[2].subject))
            .count(),
        1,
        "a dead-lettered event is not redelivered: {names:?}"
    );

    // Undecodable: dead-lettered and terminated; no CloudEvents attributes.
    let undecodable = one(&spans, "process", &garbage_subject, Some(1));
    assert_eq!(undecodable.span_kind, SpanKind::Consumer);
    assert_outcome(undecodable, "dead_letter", Some("undecodable"));
    assert_eq!(
        attribute(undecodable, "messaging.nats.stream.sequence"),
        Some(garbage.sequence.to_string())
    );
    assert_eq!(
        attribute(undecodable, "jetevents.dead_letter.reason").as_deref(),
        Some("undecodable")
    );
    assert_eq!(
        attribute(undecodable, "jetevents.terminated").as_deref(),
        Some("true")
    );
    assert_eq!(attribute(undecodable, "messaging.message.id"), None);
    assert_eq!(attribute(undecodable, "cloudevents.event_type"), None);
    assert!(matches!(undecodable.status, Status::Error { .. }));
}

/// The one span named `name` (with this delivery count, when given).
/// Whether `span` is the `operation` span of an event on `subject`: its
/// name has the subject's template (the same for every key), its
/// destination the subject itself.
fn is_about(span: &SpanData, operation: &str, subject: &str) -> bool {
    span.name == format!("{operation} {}", destination_template(subject))
        && attribute(span, "messaging.destination.name").as_deref() == Some(subject)
}

/// The one `operation` span about `subject` (of that delivery, if given).
fn one<'a>(
    spans: &'a [SpanData],
    operation: &str,
    subject: &str,
    delivery: Option<u64>,
) -> &'a SpanData {
    let name = format!("{operation} {subject}");
    let found: Vec<&SpanData> = spans
        .iter()
        .filter(|span| is_about(span, operation, subject))
        .filter(|span| {
            delivery.is_none_or(|delivery| {
                attribute(span, "messaging.nats.message.delivery_count")
                    == Some(delivery.to_string())
            })
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{name} delivery {delivery:?} in {:?}",
        spans.iter().map(|span| &span.name).collect::<Vec<_>>()
    );
    found[0]
}

/// An attribute's value as text. Each key must appear at most once: a field
/// recorded twice would be exported twice.
fn attribute(span: &SpanData, key: &str) -> Option<String> {
    let values: Vec<String> = span
        .attributes
        .iter()
        .filter(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
        .collect();
    assert!(values.len() <= 1, "{} has {key} {values:?}", span.name);
    values.into_iter().next()
}

/// An integer attribute, which must be exported as one (not as text).
fn int_attribute(span: &SpanData, key: &str) -> Option<i64> {
    attribute(span, key)?;
    let kv = span.attributes.iter().find(|kv| kv.key.as_str() == key)?;
    match kv.value {
        Value::I64(value) => Some(value),
        ref other => panic!("{}: {key} is not an integer: {other:?}", span.name),
    }
}

fn assert_outcome(span: &SpanData, settle: &str, error_type: Option<&str>) {
    assert_eq!(
        attribute(span, "jetevents.settle").as_deref(),
        Some(settle),
        "{}",
        span.name
    );
    assert_eq!(
        attribute(span, "error.type").as_deref(),
        error_type,
        "{}",
        span.name
    );
    if settle != "nak" {
        assert_eq!(attribute(span, "jetevents.nak_delay_ms"), None);
    }
}

fn assert_error_status(span: &SpanData, description: &str) {
    match &span.status {
        Status::Error { description: text } => {
            assert!(text.contains(description), "{}: {text}", span.name)
        }
        other => panic!("{}: status {other:?}", span.name),
    }
}
