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
    #[error("label key `{0}` must be 1-63 characters of a-z, A-Z, 0-9, `.`, `_`, `-`, `/`")]
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

/// Whether `labels` has every key of `selector` with the same value (an empty selector
/// matches everything).
pub fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Checks every key and value.
pub fn validate(labels: &BTreeMap<String, String>) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    let ok = |s: &str, extra: &[char]| {
        s.len() <= MAX_LABEL_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(&c))
    };
    for (k, v) in labels {
        if k.is_empty() || !ok(k, &['/']) {
            return Err(LabelError::Key(k.clone()));
        }
        if !ok(v, &[]) {
            return Err(LabelError::Value(v.clone()));
        }
    }
    Ok(())
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
    fn names_are_dns_like() {
        assert!(valid_name("edge-01.berlin"));
        assert!(!valid_name("Edge"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
    }
}
