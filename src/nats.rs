//! The async-nats types that jetevents' public API uses, named in one place.
//!
//! Signatures of jetevents name these paths, which mirror async-nats's own
//! (`nats::jetstream::stream::StorageType` is
//! `async_nats::jetstream::stream::StorageType`), so a service needs no
//! direct dependency on async-nats, and when it has one, `cargo tree -d`
//! shows whether the versions agree.
//!
//! **Version policy**: these are async-nats's types, so moving jetevents to
//! an async-nats release that changes any of them incompatibly is a breaking
//! jetevents release (see the README's "Versioning"). Types not listed here
//! are not part of jetevents' API, even when [`Client`] gives access to
//! them.
//!
//! ```
//! use jetevents::nats::jetstream::stream::StorageType;
//! use jetevents::provision::StreamSpec;
//!
//! let spec = StreamSpec::new("BOOKING", vec!["dev.booking.>".into()]).storage(StorageType::Memory);
//! assert_eq!(spec.storage, StorageType::Memory);
//! ```

pub use async_nats::header::{HeaderName, HeaderValue};
pub use async_nats::{Client, HeaderMap};

/// JetStream types in jetevents' API.
pub mod jetstream {
    pub use async_nats::jetstream::Context;

    /// Stream settings of [`StreamSpec`](crate::provision::StreamSpec) and
    /// [`StoreStream`](crate::eventstore::StoreStream).
    pub mod stream {
        pub use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
    }

    /// Key-value buckets: [`Snapshots`](crate::eventstore::Snapshots) live in one.
    pub mod kv {
        pub use async_nats::jetstream::kv::Store;
    }
}

/// The NATS services framework: what
/// [`RunningService::info`](crate::service::RunningService::info) returns.
pub mod service {
    pub use async_nats::service::Info;
}
