//! The [`Aggregate`] trait, and how its events become CloudEvents and back.
//!
//! An aggregate's events are one serde enum, externally tagged (serde's
//! default), each variant renamed to its `{action}.{version}`:
//!
//! ```
//! #[derive(serde::Serialize, serde::Deserialize)]
//! enum AccountEvent {
//!     #[serde(rename = "opened.v1")]
//!     Opened { owner: String },
//!     #[serde(rename = "deposited.v1")]
//!     Deposited { amount: u64 },
//!     #[serde(rename = "closed.v1")]
//!     Closed,
//! }
//! ```
//!
//! With [`Aggregate::KIND`] `bank.account`, `Deposited` is stored as the
//! CloudEvents type `bank.account.deposited.v1` whose data is the variant's
//! content (`{"amount":5}`); a unit variant has no data. A variant may also
//! be renamed to a full type; one of another `{domain}.{entity}` is refused.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{AppendError, AppendErrorKind, LoadError, LoadErrorKind};
use super::upcast::Upcasts;
use crate::event::EventType;
use crate::Error;

/// State rebuilt from its own events, and the decisions taken on it.
///
/// `apply` folds one event into the state (it must not fail: the event
/// happened); `handle` decides which events a command causes, or refuses it.
///
/// ```
/// use jetevents::eventstore::Aggregate;
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Account { open: bool, balance: u64 }
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// enum AccountEvent {
///     #[serde(rename = "opened.v1")]
///     Opened,
///     #[serde(rename = "deposited.v1")]
///     Deposited { amount: u64 },
/// }
///
/// enum AccountCommand { Open, Deposit(u64) }
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("account is not open")]
/// struct NotOpen;
///
/// impl Aggregate for Account {
///     const KIND: &'static str = "bank.account";
///     type Event = AccountEvent;
///     type Command = AccountCommand;
///     type Error = NotOpen;
///
///     fn apply(&mut self, event: &AccountEvent) {
///         match event {
///             AccountEvent::Opened => self.open = true,
///             AccountEvent::Deposited { amount } => self.balance += amount,
///         }
///     }
///
///     fn handle(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, NotOpen> {
///         match command {
///             AccountCommand::Open if self.open => Ok(vec![]),
///             AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
///             AccountCommand::Deposit(_) if !self.open => Err(NotOpen),
///             AccountCommand::Deposit(amount) => {
///                 Ok(vec![AccountEvent::Deposited { amount: *amount }])
///             }
///         }
///     }
/// }
/// ```
pub trait Aggregate: Default + Send + Sync + 'static {
    /// `{domain}.{entity}`, e.g. `bank.account`: the first two tokens of
    /// its events' types.
    const KIND: &'static str;

    /// The version of this type's snapshot shape. Raise it when the state's
    /// serialized form changes: snapshots of another version are ignored
    /// and the state is replayed from the events instead.
    const SNAPSHOT_SCHEMA: u32 = 1;

    /// The events, one serde enum (see the [event store docs](crate::eventstore)).
    type Event: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// What can be asked of it.
    type Command: Send + Sync;

    /// Why a command is refused.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Folds one event into the state.
    fn apply(&mut self, event: &Self::Event);

    /// The events `command` causes in this state, or why it is refused.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// How events stored in older versions read as current ones (see
    /// [`Upcasts`]); none by default. Called once per load, projection
    /// run or replay.
    fn upcasts() -> Upcasts {
        Upcasts::new()
    }
}

/// An aggregate event as a CloudEvents type and JSON data.
#[derive(Debug)]
pub(crate) struct EncodedEvent {
    pub(crate) event_type: EventType,
    pub(crate) data: Option<Bytes>,
}

/// Splits an event into its type and data (see the [module docs](self)).
pub(crate) fn encode_event<A: Aggregate>(event: &A::Event) -> Result<EncodedEvent, AppendError> {
    let invalid = |reason: String| Error::new(AppendErrorKind::InvalidEvent { reason });
    let json = serde_json::to_vec(event).map_err(|err| {
        Error::with_source(
            AppendErrorKind::InvalidEvent {
                reason: "does not serialize".into(),
            },
            err,
        )
    })?;
    let Some((name, content)) = split_variant(&json) else {
        return Err(invalid(
            "not an externally tagged enum variant (serde's default enum form)".into(),
        ));
    };
    let data = content.map(|content| Bytes::from(json).slice(content));
    let full = if name.matches('.').count() == 3 {
        if !name.starts_with(A::KIND) || name.as_bytes().get(A::KIND.len()) != Some(&b'.') {
            return Err(Error::new(AppendErrorKind::WrongAggregate {
                event_type: name,
                aggregate: A::KIND,
            }));
        }
        name
    } else {
        let mut full = String::with_capacity(A::KIND.len() + 1 + name.len());
        for part in [A::KIND, ".", &name] {
            full.push_str(part);
        }
        full
    };
    let event_type = EventType::parse(&full).map_err(|err| {
        Error::with_source(
            AppendErrorKind::InvalidEvent {
                reason: format!("variant {full:?} is not {{action}}.{{version}}"),
            },
            err,
        )
    })?;
    Ok(EncodedEvent { event_type, data })
}

/// Splits serde_json's compact output of an externally tagged variant,
/// `"name"` or `{"name":content}`, into the name and where the content is:
/// one serialization, where a `serde_json::Value` in between cost a tree
/// of allocations and a second one.
fn split_variant(json: &[u8]) -> Option<(String, Option<std::ops::Range<usize>>)> {
    match json.first()? {
        b'"' => serde_json::from_slice(json).ok().map(|name| (name, None)),
        b'{' if json.last() == Some(&b'}') => {
            let inner = json.get(1..json.len() - 1)?;
            let mut names = serde_json::Deserializer::from_slice(inner).into_iter::<String>();
            let name = names.next()?.ok()?;
            let colon = names.byte_offset();
            if inner.get(colon) != Some(&b':') {
                return None;
            }
            let content = inner.get(colon + 1..)?;
            let mut values =
                serde_json::Deserializer::from_slice(content).into_iter::<serde::de::IgnoredAny>();
            values.next()?.ok()?;
            // Exactly one value: a second key would follow it.
            let start = 1 + colon + 1;
            (values.byte_offset() == content.len()).then(|| (name, Some(start..json.len() - 1)))
        }
        _ => None,
    }
}

/// Rebuilds an event from its CloudEvents type and data, upcast to the
/// current version first.
pub(crate) fn decode_event<A: Aggregate>(
    upcasts: &Upcasts,
    event_type: &str,
    data: Option<&[u8]>,
    sequence: u64,
) -> Result<A::Event, LoadError> {
    let undecodable = |reason: &str| LoadErrorKind::Undecodable {
        sequence,
        reason: reason.to_owned(),
    };
    let content = match data {
        None | Some([]) => None,
        Some(bytes) => Some(
            serde_json::from_slice::<serde_json::Value>(bytes)
                .map_err(|err| Error::with_source(undecodable("data is not JSON"), err))?,
        ),
    };
    let (upcast_type, content) = upcasts
        .apply(event_type, content)
        .map_err(|err| Error::with_source(undecodable("an upcast failed"), err))?;
    let event_type = upcast_type.as_deref().unwrap_or(event_type);
    let Some(short) = event_type
        .strip_prefix(A::KIND)
        .and_then(|rest| rest.strip_prefix('.'))
    else {
        return Err(Error::new(undecodable("a type of another aggregate")));
    };
    let tagged = |name: &str| match &content {
        None => serde_json::Value::String(name.to_owned()),
        Some(content) => serde_json::Value::Object(serde_json::Map::from_iter([(
            name.to_owned(),
            content.clone(),
        )])),
    };
    serde_json::from_value(tagged(short))
        .or_else(|_| serde_json::from_value(tagged(event_type)))
        .map_err(|err| Error::with_source(undecodable("no variant takes it"), err))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(json: &str) -> Option<(String, Option<&str>)> {
        split_variant(json.as_bytes())
            .map(|(name, content)| (name, content.map(|range| &json[range])))
    }

    #[test]
    fn splits_a_variant_into_its_name_and_content() {
        assert_eq!(split(r#""closed.v1""#), Some(("closed.v1".into(), None)));
        assert_eq!(
            split(r#"{"deposited.v1":{"amount":5,"note":"a}\",{"}}"#),
            Some((
                "deposited.v1".into(),
                Some(r#"{"amount":5,"note":"a}\",{"}"#)
            ))
        );
        assert_eq!(split(r#"{"n\"x":12}"#), Some(("n\"x".into(), Some("12"))));
        assert_eq!(split(r#"{"a":[1,{}]}"#), Some(("a".into(), Some("[1,{}]"))));
        for not_a_variant in [
            "{}",
            r#"{"a":1,"b":2}"#,
            r#"{"a":{},"b":2}"#,
            "[1]",
            "12",
            "null",
            r#"{"a"}"#,
        ] {
            assert_eq!(split(not_a_variant), None, "{not_a_variant}");
        }
    }
}
