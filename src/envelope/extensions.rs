//! An envelope's extension attributes: a small map from valid names to values.
//!
//! Every decoded event carries a few extensions (`partitionkey`,
//! `traceparent`, ...), so the map is a sorted `Vec` rather than a tree (one
//! allocation, not a node and a key per extension), and the names jetevents
//! sets itself are `&'static str`s that cost nothing to hold.

use std::borrow::{Borrow, Cow};
use std::fmt;

use super::error::{EncodeError, EncodeErrorKind};
use super::{
    is_valid_extension_name, ExtensionValue, CAUSATION_ID, CORRELATION_ID, PARTITION_KEY,
    TRACEPARENT, TRACESTATE,
};
use crate::Error;

/// A valid extension name: lower-case ASCII letters and digits, not a core
/// attribute name.
///
/// ```
/// use jetevents::envelope::ExtensionName;
///
/// let name = ExtensionName::new("tenant").unwrap();
/// assert_eq!(name.as_str(), "tenant");
/// assert!(ExtensionName::new("Tenant").is_err());
/// assert!(ExtensionName::new("type").is_err());
/// assert_eq!(ExtensionName::new("partitionkey").unwrap(), ExtensionName::PARTITION_KEY);
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ExtensionName(Cow<'static, str>);

impl ExtensionName {
    /// `correlationid`.
    pub const CORRELATION_ID: ExtensionName = ExtensionName(Cow::Borrowed(CORRELATION_ID));
    /// `causationid`.
    pub const CAUSATION_ID: ExtensionName = ExtensionName(Cow::Borrowed(CAUSATION_ID));
    /// `traceparent`.
    pub const TRACEPARENT: ExtensionName = ExtensionName(Cow::Borrowed(TRACEPARENT));
    /// `tracestate`.
    pub const TRACESTATE: ExtensionName = ExtensionName(Cow::Borrowed(TRACESTATE));
    /// `partitionkey`.
    pub const PARTITION_KEY: ExtensionName = ExtensionName(Cow::Borrowed(PARTITION_KEY));

    /// `name` checked; [`EncodeErrorKind::InvalidExtensionName`] when it is
    /// not a valid extension name.
    pub fn new(name: &str) -> Result<ExtensionName, EncodeError> {
        Self::parse(name)
            .ok_or_else(|| Error::new(EncodeErrorKind::InvalidExtensionName(name.to_owned())))
    }

    /// `name` checked, `None` when invalid; the names jetevents sets itself
    /// are not copied, as every decoded event carries some of them.
    pub(crate) fn parse(name: &str) -> Option<ExtensionName> {
        let known = match name {
            PARTITION_KEY => ExtensionName::PARTITION_KEY,
            TRACEPARENT => ExtensionName::TRACEPARENT,
            TRACESTATE => ExtensionName::TRACESTATE,
            CORRELATION_ID => ExtensionName::CORRELATION_ID,
            CAUSATION_ID => ExtensionName::CAUSATION_ID,
            _ if is_valid_extension_name(name) => ExtensionName(Cow::Owned(name.to_owned())),
            _ => return None,
        };
        Some(known)
    }

    /// A name jetevents defines as a constant (claim check, encryption),
    /// valid by construction; checked in debug builds.
    pub(crate) fn from_static(name: &'static str) -> ExtensionName {
        debug_assert!(is_valid_extension_name(name), "{name}");
        ExtensionName(Cow::Borrowed(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for ExtensionName {
    type Error = EncodeError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        ExtensionName::new(name)
    }
}

impl AsRef<str> for ExtensionName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ExtensionName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ExtensionName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for ExtensionName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for ExtensionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ExtensionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An envelope's extensions by name, iterated in name order.
///
/// Names are checked when they come in ([`Extensions::insert`],
/// [`ExtensionName::new`]), so every extension held here can be encoded.
///
/// ```
/// use jetevents::envelope::{ExtensionName, Extensions, ExtensionValue};
///
/// let mut extensions = Extensions::new();
/// extensions.insert("tenant", "acme").unwrap();
/// extensions.insert("attempt", 2i64).unwrap();
/// assert!(extensions.insert("Tenant", "x").is_err());
/// assert_eq!(extensions.get("tenant").and_then(ExtensionValue::as_str), Some("acme"));
/// let names: Vec<&str> = extensions.iter().map(|(name, _)| name).collect();
/// assert_eq!(names, ["attempt", "tenant"]);
/// let same: Extensions = [
///     (ExtensionName::new("tenant").unwrap(), ExtensionValue::from("acme")),
///     (ExtensionName::new("attempt").unwrap(), ExtensionValue::from(2i64)),
/// ]
/// .into_iter()
/// .collect();
/// assert_eq!(same, extensions);
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Extensions {
    /// Sorted by name, names unique.
    entries: Vec<(ExtensionName, ExtensionValue)>,
}

impl Extensions {
    /// No extensions.
    pub const fn new() -> Extensions {
        Extensions {
            entries: Vec::new(),
        }
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.entries
            .binary_search_by(|(held, _)| held.as_str().cmp(name))
    }

    /// The value of extension `name`, if set.
    pub fn get(&self, name: &str) -> Option<&ExtensionValue> {
        let index = self.position(name).ok()?;
        Some(&self.entries[index].1)
    }

    /// Whether extension `name` is set.
    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    /// Sets extension `name`, returning the value it replaces.
    ///
    /// Fails with [`EncodeErrorKind::InvalidExtensionName`] when `name` is
    /// not lower-case ASCII letters and digits or is a core attribute name
    /// (`id`, `type`, `data`, ...); nothing changes then.
    pub fn insert(
        &mut self,
        name: &str,
        value: impl Into<ExtensionValue>,
    ) -> Result<Option<ExtensionValue>, EncodeError> {
        if let Ok(index) = self.position(name) {
            return Ok(Some(std::mem::replace(
                &mut self.entries[index].1,
                value.into(),
            )));
        }
        Ok(self.set(ExtensionName::new(name)?, value))
    }

    /// Sets extension `name` (already checked), returning the value it
    /// replaces.
    pub fn set(
        &mut self,
        name: ExtensionName,
        value: impl Into<ExtensionValue>,
    ) -> Option<ExtensionValue> {
        match self.position(name.as_str()) {
            Ok(index) => Some(std::mem::replace(&mut self.entries[index].1, value.into())),
            Err(index) => {
                self.entries.insert(index, (name, value.into()));
                None
            }
        }
    }

    /// Removes extension `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<ExtensionValue> {
        let index = self.position(name).ok()?;
        Some(self.entries.remove(index).1)
    }

    /// How many extensions are set.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no extension is set.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The extensions in name order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.entries.iter(),
        }
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Later values replace earlier ones of the same name, as in a map.
impl<V: Into<ExtensionValue>> FromIterator<(ExtensionName, V)> for Extensions {
    fn from_iter<I: IntoIterator<Item = (ExtensionName, V)>>(iter: I) -> Self {
        let mut extensions = Extensions::new();
        extensions.extend(iter);
        extensions
    }
}

impl<V: Into<ExtensionValue>> Extend<(ExtensionName, V)> for Extensions {
    fn extend<I: IntoIterator<Item = (ExtensionName, V)>>(&mut self, iter: I) {
        for (name, value) in iter {
            self.set(name, value);
        }
    }
}

/// The extensions of an [`Extensions`] in name order, borrowed.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    inner: std::slice::Iter<'a, (ExtensionName, ExtensionValue)>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a ExtensionValue);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner
            .next()
            .map(|(name, value)| (name.as_str(), value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.inner
            .next_back()
            .map(|(name, value)| (name.as_str(), value))
    }
}

impl<'a> IntoIterator for &'a Extensions {
    type Item = (&'a str, &'a ExtensionValue);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The extensions in name order, owned.
impl IntoIterator for Extensions {
    type Item = (ExtensionName, ExtensionValue);
    type IntoIter = std::vec::IntoIter<(ExtensionName, ExtensionValue)>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn name(name: &str) -> ExtensionName {
        ExtensionName::new(name).unwrap()
    }

    #[test]
    fn iterates_in_name_order_whatever_the_insertion_order() {
        let mut extensions = Extensions::new();
        for name in [
            "tracestate",
            "b2",
            "partitionkey",
            "a",
            "b10",
            "traceparent",
        ] {
            extensions.insert(name, name).unwrap();
        }
        let names: Vec<&str> = extensions.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "a",
                "b10",
                "b2",
                "partitionkey",
                "traceparent",
                "tracestate"
            ]
        );
        let owned: Vec<String> = extensions
            .clone()
            .into_iter()
            .map(|(name, _)| name.to_string())
            .collect();
        assert_eq!(owned, names);
        for (name, value) in &extensions {
            assert_eq!(value.as_str(), Some(name));
        }
        assert_eq!(extensions.iter().next_back().unwrap().0, "tracestate");
    }

    #[test]
    fn invalid_names_are_refused_and_change_nothing() {
        let mut extensions = Extensions::new();
        extensions.insert("tenant", "acme").unwrap();
        for bad in [
            "",
            "Tenant",
            "with-dash",
            "id",
            "type",
            "data",
            "data_base64",
            "é",
        ] {
            let err = extensions.insert(bad, "x").unwrap_err();
            assert_eq!(
                err.kind(),
                &EncodeErrorKind::InvalidExtensionName(bad.to_owned()),
                "{bad}"
            );
            assert!(ExtensionName::new(bad).is_err(), "{bad}");
        }
        assert_eq!(extensions.len(), 1);
        assert_eq!(extensions.get("tenant").unwrap().as_str(), Some("acme"));
    }

    #[test]
    fn insert_replaces_get_and_remove_find_by_name() {
        let mut extensions = Extensions::new();
        assert!(extensions.is_empty());
        assert_eq!(extensions.insert("attempt", 1i64).unwrap(), None);
        assert_eq!(extensions.insert("urgent", true).unwrap(), None);
        assert_eq!(
            extensions.insert("attempt", 2i64).unwrap(),
            Some(ExtensionValue::Integer(1))
        );
        assert_eq!(extensions.len(), 2);
        assert_eq!(extensions.get("attempt"), Some(&ExtensionValue::Integer(2)));
        assert!(extensions.contains_key("urgent"));
        assert!(!extensions.contains_key("urgen"));
        assert_eq!(extensions.get("missing"), None);
        assert_eq!(
            extensions.set(name("urgent"), false),
            Some(ExtensionValue::Boolean(true))
        );
        assert_eq!(
            extensions.remove("attempt"),
            Some(ExtensionValue::Integer(2))
        );
        assert_eq!(extensions.remove("attempt"), None);
        assert_eq!(extensions.len(), 1);
        assert_eq!(
            extensions.get("urgent"),
            Some(&ExtensionValue::Boolean(false))
        );
    }

    #[test]
    fn equality_is_by_content_not_insertion_order() {
        let forward: Extensions = [(name("a"), "1"), (name("b"), "2")].into_iter().collect();
        let backward: Extensions = [(name("b"), "2"), (name("a"), "1")].into_iter().collect();
        assert_eq!(forward, backward);
        let other_value: Extensions = [(name("a"), "1"), (name("b"), "3")].into_iter().collect();
        assert_ne!(forward, other_value);
        let fewer: Extensions = [(name("a"), "1")].into_iter().collect();
        assert_ne!(forward, fewer);
        // A later duplicate replaces the earlier value, as in a map.
        let replaced: Extensions = [(name("a"), "0"), (name("b"), "2"), (name("a"), "1")]
            .into_iter()
            .collect();
        assert_eq!(replaced, forward);
        assert_eq!(
            format!("{forward:?}"),
            r#"{"a": String("1"), "b": String("2")}"#
        );
    }

    #[test]
    fn known_names_are_not_copied() {
        for known in [
            CORRELATION_ID,
            CAUSATION_ID,
            TRACEPARENT,
            TRACESTATE,
            PARTITION_KEY,
        ] {
            assert!(matches!(name(known).0, Cow::Borrowed(_)), "{known}");
        }
        assert!(matches!(name("tenant").0, Cow::Owned(_)));
    }
}
