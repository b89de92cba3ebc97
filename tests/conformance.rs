//! One conformance suite for both transports (watermill's universal tests):
//! the same cases run against a real nats-server (the harness's shared
//! server, unique names per case) and against the in-memory JetStream of
//! the test kit (`jetevents::testing`, tokio's clock paused), so the
//! in-memory one cannot drift from JetStream's behaviour. A case is
//! written once, generic over the transport; [`conformance!`] instantiates
//! every case in `mod nats` and in `mod memory`.
//!
//! - Level 1 ([`api`]): through jetevents' public API (publisher, consumer,
//!   streams, dead letters).
//! - Level 2 ([`semantics`]): JetStream's consumer semantics on raw
//!   deliveries ([`engine::Engine`]), which the runner cannot show: it
//!   always sends progress acks and settles every delivery.
//!
//! # Where the in-memory JetStream differs
//!
//! The one place the suite states it; `jetevents::testing`'s "Where it
//! differs from nats-server" lists every difference of the engine. No case
//! is skipped on either transport; these adapt:
//! - **Time** is tokio's paused clock on the in-memory side: a wait passes as
//!   soon as nothing else can run. Cases assert lower bounds measured from
//!   before the pull that starts the clock (the server's timer fires a
//!   little after a deadline, the engine exactly at it), never upper ones.
//! - **No background timers**: the engine applies an ack wait running out
//!   when the consumer is looked at. The cases that let time pass with
//!   nobody pulling (`max_deliver_*`) look through consumer info, which
//!   does that, so they see what the server's timer did.
//! - **Dead letters and consumer counts** are read through the engine
//!   (`TestKit::dead_letters_in`, `MemoryJetStream::consumer_info`): the
//!   admin API of dead letters (`DeadLetters::list`) reads the stream
//!   through NATS only.
//! - **No responders**: the engine answers a subject no stream captures
//!   with `NoStream` itself; the server does not answer and the publisher
//!   maps the client's "no responders" to the same `NoStream`
//!   (`missing_stream`).
//! - **Publishing never times out** in memory, so no case covers
//!   `OutcomeUnknown` or publish retries (tests/publish*.rs do, on NATS).
#![cfg(feature = "testing")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod consume_common;
mod support;

#[path = "conformance/api.rs"]
mod api;
#[path = "conformance/engine.rs"]
mod engine;
#[path = "conformance/semantics.rs"]
mod semantics;
#[path = "conformance/world.rs"]
mod world;

/// Every case, as a test of one transport: `setup` makes a level 1 case's
/// world, `engine` a level 2 case's stream and consumer.
macro_rules! conformance {
    (#[$test:meta] setup: $setup:path, engine: $engine:expr) => {
        conformance!(@api #[$test] $setup;
            ack,
            retry_policy_delay,
            handler_retry_after,
            redelivery_count,
            attempts_exhausted,
            permanent_error,
            undecodable_data,
            dedup_by_event_id,
            expected_last_subject_sequence,
            missing_stream,
            oversized_event,
            group_sharing,
            two_groups,
            ordering_within_a_subject,
            shutdown_in_flight,
        );
        conformance!(@engine #[$test] $engine;
            ack_wait_redelivers,
            in_progress_extends,
            backoff_schedule,
            max_deliver_stops_redelivery,
            max_deliver_of_one_ends_at_the_ack_wait,
            nak_delay_counts_against_backoff,
            max_ack_pending_holds_new_messages,
            redeliveries_before_new_messages,
            term_ends_delivery,
        );
    };
    (@api #[$test:meta] $setup:path; $($case:ident,)*) => {
        $(
            #[$test]
            async fn $case() {
                crate::api::$case($setup().await).await;
            }
        )*
    };
    (@engine #[$test:meta] $engine:expr; $($case:ident,)*) => {
        $(
            #[$test]
            async fn $case() {
                crate::semantics::$case($engine).await;
            }
        )*
    };
}

/// On the shared nats-server 2.15.1 of this test binary.
mod nats {
    conformance!(#[tokio::test] setup: crate::world::Setup::nats, engine: crate::engine::Nats::new().await);
}

/// On the in-memory JetStream, tokio's clock paused.
mod memory {
    conformance!(#[tokio::test(start_paused = true)] setup: crate::world::Setup::memory, engine: crate::engine::Memory::new());
}
