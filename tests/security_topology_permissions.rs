//! A service running with the permissions generated for it
//! (`jetevents::permissions`): it publishes and consumes normally, and is
//! refused, typed, outside what it declared.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::client::Client;
use jetevents::config::{Auth, Secret};
use jetevents::consume::{ConsumeErrorKind, Consumer, Context, DeadLetterConfig, HandlerError};
use jetevents::event::EventType;
use jetevents::permissions::ServiceAccess;
use jetevents::provision::{ProvisionErrorKind, StreamSpec};
use jetevents::publish::PublishErrorKind;
use jetevents::Event;
use jetevents_testcontainers::{NatsServer, Permissions};
use serde::{Deserialize, Serialize};

mod support;
use support::eventually;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct InvoiceIssued {
    id: String,
    /// The invoice document; large ones travel through a claim check.
    #[serde(default)]
    document: String,
}

impl Event for InvoiceIssued {
    const TYPE: &'static str = "billing.invoice.issued.v1";
    fn key(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

/// Another service's event type, in another domain.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ParcelShipped {
    id: String,
}

impl Event for ParcelShipped {
    const TYPE: &'static str = "shipping.parcel.shipped.v1";
    fn key(&self) -> Option<String> {
        Some(self.id.clone())
    }
}

/// Another type of its own domain that it does not declare.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct InvoiceVoided {
    id: String,
}

impl Event for InvoiceVoided {
    const TYPE: &'static str = "billing.invoice.voided.v1";
}

/// The billing service: publishes invoices into the stream it provisions,
/// reads them back in its group, dead-letters to its own stream.
fn billing_access() -> ServiceAccess {
    ServiceAccess::new("dev")
        .unwrap()
        .publishes(EventType::of::<InvoiceIssued>().unwrap())
        .provisions("BILLING")
        .unwrap()
        .provisions("BILLING_DL")
        .unwrap()
        .consumes("BILLING", "billing")
        .unwrap()
        .dead_letters(dead_letters())
        .unwrap()
}

fn dead_letters() -> DeadLetterConfig {
    DeadLetterConfig::new("BILLING_DL", "dlbilling")
}

async fn billing_service() -> (NatsServer, Client) {
    service_with(billing_access()).await
}

/// A server whose one user has the permissions generated from `access`,
/// and a client connected as that user.
async fn service_with(access: ServiceAccess) -> (NatsServer, Client) {
    let generated = access.permissions();
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "billing".into(),
            password: "billing-pw".into(),
            permissions: Some(Permissions {
                publish_allow: generated.publish,
                subscribe_allow: generated.subscribe,
            }),
        })
        .start()
        .await
        .unwrap();
    let client = support::connect(&server.url(), "dev", |config| {
        config.auth = Auth::UserPassword {
            user: "billing".into(),
            password: Secret::new("billing-pw"),
        };
        // Long: a refusal must not wait for it.
        config.ack_timeout = Duration::from_secs(30);
        config.publish_retry.max_attempts = 1;
    })
    .await;
    (server, client)
}

/// Fails naming every subject the server refused since `violations` began.
fn assert_no_violations(
    violations: &mut tokio::sync::broadcast::Receiver<jetevents::client::PermissionViolation>,
) {
    let mut missed = Vec::new();
    while let Ok(violation) = violations.try_recv() {
        missed.push(violation.subject);
    }
    assert!(
        missed.is_empty(),
        "the generated permissions missed: {missed:?}"
    );
}

fn group(
    client: &Client,
    name: &str,
    handled: &Arc<Mutex<Vec<String>>>,
) -> jetevents::consume::ConsumerBuilder<Arc<Mutex<Vec<String>>>> {
    Consumer::builder(client, name)
        .stream("BILLING")
        .dead_letter(dead_letters())
        .with_state(handled.clone())
        .handle(
            |event: InvoiceIssued, ctx: Context<Arc<Mutex<Vec<String>>>>| async move {
                ctx.state()
                    .lock()
                    .unwrap()
                    .push(format!("{}:{}", event.id, event.document.len()));
                Ok::<_, HandlerError>(())
            },
        )
}

#[tokio::test]
async fn a_service_with_its_generated_permissions_publishes_and_consumes() {
    let (_server, client) = billing_service().await;
    let mut violations = client.permission_violations();
    client
        .ensure_stream(&StreamSpec::for_domain(client.subjects(), "BILLING", "billing").unwrap())
        .await
        .unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let consumer = group(&client, "billing", &handled).build().await.unwrap();
    let running = tokio::spawn(consumer.run());
    let publisher = client.publisher();
    for n in 0..3 {
        publisher
            .publish(&InvoiceIssued {
                id: format!("i{n}"),
                document: String::new(),
            })
            .await
            .unwrap();
    }
    eventually(
        "the group handled every invoice",
        Duration::from_secs(30),
        || {
            let handled = handled.clone();
            async move { handled.lock().unwrap().len() == 3 }
        },
    )
    .await;
    assert!(!running.is_finished(), "the consumer stopped");
    running.abort();
    assert_no_violations(&mut violations);
}

#[tokio::test]
async fn another_services_event_type_is_refused() {
    let (_server, client) = billing_service().await;
    client
        .ensure_stream(&StreamSpec::for_domain(client.subjects(), "BILLING", "billing").unwrap())
        .await
        .unwrap();
    let publisher = client.publisher();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.publish(&ParcelShipped { id: "p1".into() }),
    )
    .await
    .expect("a refused publish must not wait for the ack timeout")
    .unwrap_err();
    assert_eq!(
        err.kind(),
        &PublishErrorKind::PermissionDenied {
            subject: "dev.shipping.parcel.shipped.v1.p1".into()
        }
    );
    let err = publisher
        .publish(&InvoiceVoided { id: "i1".into() })
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &PublishErrorKind::PermissionDenied {
            subject: "dev.billing.invoice.voided.v1".into()
        }
    );
}

#[tokio::test]
async fn another_groups_consumer_is_refused() {
    let (_server, client) = billing_service().await;
    client
        .ensure_stream(&StreamSpec::for_domain(client.subjects(), "BILLING", "billing").unwrap())
        .await
        .unwrap();
    let handled = Arc::new(Mutex::new(Vec::new()));
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        group(&client, "auditors", &handled).build(),
    )
    .await
    .expect("a refused consumer must not wait for the request timeout")
    .unwrap_err();
    assert!(
        matches!(err.kind(), ConsumeErrorKind::PermissionDenied { subject }
            if subject.starts_with("$JS.API.CONSUMER.") && subject.contains(".auditors")),
        "{err:?}"
    );
}

/// Data too large for a message goes to the claim-check bucket and comes
/// back to the handler, all within the generated permissions.
#[tokio::test]
async fn claim_checked_events_round_trip_within_the_generated_permissions() {
    use jetevents::claim_check::ClaimCheck;

    let (_server, client) = service_with(billing_access().claim_checks("INVOICES").unwrap()).await;
    let mut violations = client.permission_violations();
    client
        .ensure_stream(&StreamSpec::for_domain(client.subjects(), "BILLING", "billing").unwrap())
        .await
        .unwrap();
    let claim_check = ClaimCheck::open(&client, "INVOICES")
        .await
        .unwrap()
        .threshold(1024);
    let handled = Arc::new(Mutex::new(Vec::new()));
    let consumer = group(&client, "billing", &handled).build().await.unwrap();
    let running = tokio::spawn(consumer.run());
    let document = "x".repeat(64 * 1024);
    client
        .publisher()
        .with_claim_check(claim_check)
        .publish(&InvoiceIssued {
            id: "i-large".into(),
            document,
        })
        .await
        .unwrap();
    eventually(
        "the group handled the claim-checked invoice",
        Duration::from_secs(30),
        || {
            let handled = handled.clone();
            async move { !handled.lock().unwrap().is_empty() }
        },
    )
    .await;
    assert_eq!(
        *handled.lock().unwrap(),
        vec![format!("i-large:{}", 64 * 1024)]
    );
    assert!(!running.is_finished(), "the consumer stopped");
    running.abort();
    assert_no_violations(&mut violations);
}

#[tokio::test]
async fn a_stream_it_does_not_provision_is_refused_at_once() {
    let (_server, client) = billing_service().await;
    let spec = StreamSpec::for_domain(client.subjects(), "SHIPPING", "shipping").unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), client.ensure_stream(&spec))
        .await
        .expect("a refused provisioning must not wait for the request timeout")
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &ProvisionErrorKind::PermissionDenied {
            subject: "$JS.API.STREAM.INFO.SHIPPING".into()
        }
    );
}

/// `ingest` looks its events' stream up before sending (one stream per
/// call) with the one stream API every publisher may call: within the
/// generated permissions it takes the fast path and the server refuses
/// nothing (a refused lookup would wait for its timeout).
#[tokio::test]
async fn ingest_checks_its_stream_within_the_generated_permissions() {
    let (_server, client) = billing_service().await;
    let mut violations = client.permission_violations();
    let spec = StreamSpec::for_domain(client.subjects(), "BILLING", "billing")
        .unwrap()
        .allow_batch_publish(true);
    client.ensure_stream(&spec).await.unwrap();
    let invoices: Vec<InvoiceIssued> = (0..50)
        .map(|n| InvoiceIssued {
            id: format!("i{n}"),
            document: String::new(),
        })
        .collect();

    let report = client.publisher().ingest(&invoices).await;

    assert_eq!(report.path, jetevents::publish::IngestPath::FastBatch);
    assert!(report.results.iter().all(Result::is_ok), "{report:?}");
    assert_no_violations(&mut violations);
}
