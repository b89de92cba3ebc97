//! Nothing secret of an encrypted event (its data, the keys) reaches TRACE
//! logs, spans or `Debug` output, on the publishing, consuming and
//! dead-lettering paths. Alone in its binary: it installs a global
//! subscriber.
#![cfg(feature = "encryption")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::consume::Context;
use jetevents::encryption::{Encryption, Keyring};
use jetevents::publish::PublishOptions;

mod consume_common;
mod protect_common;
mod support;
use consume_common::{eventually, Log, Running, World};
use protect_common::{
    card, encrypting_publisher, rotated_keyring, sealed_card, CardAdded, NEW_KEY_B64, OLD_KEY_B64,
    PAN,
};

/// The keys as text (they are printable ASCII), in base64 and as `Debug`
/// shows a byte array (`old-key`, `new-key`).
const SECRETS: [&str; 7] = [
    PAN,
    OLD_KEY_B64,
    NEW_KEY_B64,
    "old-key-old-key",
    "new-key-new-key",
    "111, 108, 100, 45, 107, 101, 121",
    "110, 101, 119, 45, 107, 101, 121",
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_plaintext_never_reach_trace_logs_spans_or_debug_output() {
    let captured = support::LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(captured.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let world = World::on_shared_server().await;
    let decryption = Encryption::new(rotated_keyring());
    let seen: Log<CardAdded> = Log::default();
    let builder = world
        .consumer("wallet")
        .decrypt_with(decryption.clone())
        .with_state(seen.clone())
        .handle(
            |event: CardAdded, ctx: Context<Log<CardAdded>>| async move {
                ctx.state().push(event);
                Ok(())
            },
        );
    assert_no_secret("the consumer builder's Debug", &format!("{builder:?}"));
    let running = Running::start(builder.build().await.unwrap());

    let publisher = encrypting_publisher(&world, rotated_keyring());
    assert_no_secret("the publisher's Debug", &format!("{publisher:?}"));
    publisher.publish(&card("c-good")).await.unwrap();
    let (subject, mut tampered) = sealed_card(&world, &decryption, "c-tampered");
    tampered.id = "moved-to-another-id".to_owned();
    world
        .client
        .publisher()
        .publish_envelope(&subject, tampered.clone(), PublishOptions::new())
        .await
        .unwrap();
    eventually("the good card handled", Duration::from_secs(20), || async {
        seen.len() == 1
    })
    .await;
    let dead_letters = world.dead_letter_api();
    let entries =
        support::dead_lettered("the moved card", &dead_letters, Duration::from_secs(20)).await;
    world.wait_settled("wallet").await;
    running.stop().await;

    let error = decryption.open(&mut tampered).await.unwrap_err();
    let keyring_error = Keyring::parse("bad=bm90IDMyIGJ5dGVz").unwrap_err();
    for (what, text) in [
        ("the keyring's Debug", format!("{:?}", rotated_keyring())),
        ("the encryption's Debug", format!("{decryption:?}")),
        ("an open error (Display)", error.to_string()),
        ("an open error (Debug)", format!("{error:?}")),
        (
            "a keyring error",
            format!("{keyring_error} {keyring_error:?}"),
        ),
        ("the dead letter", format!("{entries:?}")),
        ("the TRACE log", captured.contents()),
    ] {
        assert_no_secret(what, &text);
    }
    // The capture saw the consumer's work, so its silence means something.
    let log = captured.contents();
    assert!(
        log.contains("undecryptable"),
        "the dead letter is not in the log"
    );
    assert!(log.contains("shop.card.added.v1"));
}
