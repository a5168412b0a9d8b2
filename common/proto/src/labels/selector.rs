//! Label selectors with Kubernetes' meaning: equality (`tier=edge`, `tier==edge`, `tier!=edge`)
//! and set-based requirements (`site in (berlin,paris)`, `site notin (oslo)`, `gpu`, `!gpu`),
//! comma-separated and all required, as `ternctl get -l` takes them; and the same requirements
//! from a manifest's `matchLabels` and `matchExpressions`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why a selector could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid selector `{text}`: {reason}; expected requirements like `k=v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k` or `!k`, separated by commas"
)]
pub struct SelectorError {
    pub text: String,
    pub reason: String,
}

/// One requirement on a resource's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The key has one of the values (`k=v` is `k in (v)`).
    In(String, BTreeSet<String>),
    /// The key is absent or has none of the values (`k!=v` is `k notin (v)`).
    NotIn(String, BTreeSet<String>),
    /// The key is there, with any value.
    Exists(String),
    /// The key is absent.
    DoesNotExist(String),
}

impl Requirement {
    pub fn key(&self) -> &str {
        match self {
            Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether `labels` meet the requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |values: &BTreeSet<String>| values.iter().cloned().collect::<Vec<_>>().join(",");
        match self {
            Requirement::In(k, values) if values.len() == 1 => write!(f, "{k}={}", set(values)),
            Requirement::In(k, values) => write!(f, "{k} in ({})", set(values)),
            Requirement::NotIn(k, values) if values.len() == 1 => {
                write!(f, "{k}!={}", set(values))
            }
            Requirement::NotIn(k, values) => write!(f, "{k} notin ({})", set(values)),
            Requirement::Exists(k) => f.write_str(k),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// Requirements that must all hold; empty, it selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    /// Whether `labels` meet every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// `matchLabels`: each key with exactly its value.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Self {
        Selector(
            labels
                .iter()
                .map(|(k, v)| Requirement::In(k.clone(), [v.clone()].into()))
                .collect(),
        )
    }

    /// Reads kubectl's form: requirements separated by commas (commas inside `( )` belong to a
    /// set).
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let error = |reason: String| SelectorError {
            text: text.to_owned(),
            reason,
        };
        let mut requirements = Vec::new();
        for part in split_top_level(text).map_err(&error)? {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(error("an empty requirement".into()));
            }
            requirements.push(requirement(part).map_err(&error)?);
        }
        Ok(Selector(requirements))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Selector::parse(text)
    }
}

/// `text` split at the commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| "a `)` without its `(`".to_owned())?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a `(` without its `)`".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn key(text: &str) -> Result<String, String> {
    let key = text.trim();
    if super::valid_key(key) {
        Ok(key.to_owned())
    } else {
        Err(format!("`{key}` is not a label key"))
    }
}

fn value(text: &str) -> Result<String, String> {
    let value = text.trim();
    if super::valid_value(value) {
        Ok(value.to_owned())
    } else {
        Err(format!("`{value}` is not a label value"))
    }
}

/// The values of `(a, b)`.
fn set(text: &str) -> Result<BTreeSet<String>, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("`{}` is not a set like `(a,b)`", text.trim()))?;
    let values = inner
        .split(',')
        .map(value)
        .collect::<Result<BTreeSet<_>, _>>()?;
    if values.iter().all(String::is_empty) {
        return Err("an empty set".into());
    }
    Ok(values)
}

fn requirement(part: &str) -> Result<Requirement, String> {
    if let Some(rest) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(rest)?));
    }
    for (operator, negated) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = part.split_once(operator) {
            let (k, v) = (key(k)?, value(v)?);
            return Ok(if negated {
                Requirement::NotIn(k, [v].into())
            } else {
                Requirement::In(k, [v].into())
            });
        }
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [k] => Ok(Requirement::Exists(key(k)?)),
        [k, rest] => {
            let rest = rest.trim_start();
            if let Some(values) = rest.strip_prefix("notin") {
                Ok(Requirement::NotIn(key(k)?, set(values)?))
            } else if let Some(values) = rest.strip_prefix("in") {
                Ok(Requirement::In(key(k)?, set(values)?))
            } else {
                Err(format!("`{part}` has no operator (=, ==, !=, in, notin)"))
            }
        }
        _ => Err(format!("`{part}` is not a requirement")),
    }
}

#[cfg(test)]
mod tests;
