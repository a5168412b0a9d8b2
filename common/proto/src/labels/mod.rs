//! Agent labels (`site=berlin,tier=edge`): parsing and validation, shared by every entry point;
//! label selectors ([`selector`]) as kubectl and Kubernetes write them.

pub mod selector;

pub use selector::{Requirement, Selector, SelectorError};

use std::collections::BTreeMap;

/// Longest key or value.
pub const MAX_LABEL_LEN: usize = 63;
/// Most labels one agent may carry.
pub const MAX_LABELS: usize = 32;

/// Why labels are invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label `{0}` is not of the form key=value")]
    Form(String),
    #[error(
        "label key `{0}` must be 1-63 characters of a-z, A-Z, 0-9, `.`, `_`, `-`, starting and ending with a letter or digit, after an optional DNS prefix and `/`"
    )]
    Key(String),
    #[error("label value `{0}` must be at most 63 characters of a-z, A-Z, 0-9, `.`, `_`, `-`")]
    Value(String),
    #[error("at most {MAX_LABELS} labels are allowed")]
    TooMany,
}

/// Parses `k=v,k2=v2` (empty text: no labels).
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, LabelError> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| LabelError::Form(pair.to_owned()))?;
        labels.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    validate(&labels)?;
    Ok(labels)
}

/// Checks every key and value.
pub fn validate(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    for (k, v) in labels {
        if !valid_key(k) {
            return Err(LabelError::Key(k.clone()));
        }
        if !valid_value(v) {
            return Err(LabelError::Value(v.clone()));
        }
    }
    Ok(())
}

/// Whether `value` is a label value: at most 63 characters of a-z, A-Z, 0-9, `.`, `_`, `-`.
pub fn valid_value(value: &str) -> bool {
    value.len() <= MAX_LABEL_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Whether `key` is a label or annotation key as Kubernetes has them: a name of 1-63
/// characters of a-z, A-Z, 0-9, `.`, `_`, `-`, starting and ending with a letter or digit,
/// after an optional prefix (a DNS subdomain of at most 253 characters) and `/`.
pub fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok =
        prefix.is_none_or(|p| p.len() <= 253 && !p.is_empty() && p.split('.').all(dns_label));
    let name_ok = !name.is_empty()
        && name.len() <= MAX_LABEL_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    prefix_ok && name_ok
}

/// Whether `name` is a DNS-1123 label, as Kubernetes names most resources: 1-63 characters of
/// a-z, 0-9 and `-`, starting and ending with a letter or digit.
pub fn dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL_LEN
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Formats labels as `k=v,k2=v2`.
pub fn format(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Whether a name (of an agent) is acceptable: 1-63 characters of a-z, 0-9, `-`, `.`, `_`,
/// starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LABEL_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_labels() {
        let labels = parse("site=berlin, tier=edge,").expect("valid");
        assert_eq!(labels.get("site").map(String::as_str), Some("berlin"));
        assert_eq!(format(&labels), "site=berlin,tier=edge");
        assert!(parse("").expect("empty").is_empty());
    }

    #[test]
    fn rejects_malformed_labels() {
        assert_eq!(parse("site"), Err(LabelError::Form("site".into())));
        assert_eq!(parse("=x"), Err(LabelError::Key(String::new())));
        assert_eq!(parse("a=b c"), Err(LabelError::Value("b c".into())));
    }

    #[test]
    fn keys_and_names_follow_kubernetes() {
        for good in [
            "site",
            "tern.dev/owner",
            "a",
            "app.kubernetes.io/name",
            "a_b-c.d",
        ] {
            assert!(valid_key(good), "{good}");
        }
        for bad in [
            "",
            "-site",
            "site-",
            "/x",
            "Tern..dev/x",
            "a/b/c",
            &"k".repeat(64),
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
        assert!(dns_label("detector-factories"));
        assert!(dns_label("v2"));
        for bad in ["", "a.b", "a_b", "-a", "a-", "Upper", &"a".repeat(64)] {
            assert!(!dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn names_are_dns_like() {
        assert!(valid_name("edge-01.berlin"));
        assert!(!valid_name("Edge"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
    }
}
