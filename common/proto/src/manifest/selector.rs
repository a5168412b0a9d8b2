//! `spec.selector` as Kubernetes writes it: `matchLabels` and `matchExpressions`, all of which
//! must hold; a plain map of labels is read as the shorthand for `matchLabels`.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::de::{Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::labels::{self, LabelError, Requirement, Selector};

/// Which agents a deployment runs on: every requirement must hold; empty, every agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels an agent must carry, each with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements on an agent's labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<MatchExpression>,
}

/// One of `matchExpressions`: a key, an operator and, for `In` and `NotIn`, the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchExpression {
    /// The label key.
    pub key: String,
    pub operator: Operator,
    /// The values `In` and `NotIn` compare with; none for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// How a [`MatchExpression`] compares an agent's label with its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Operator {
    /// The label has one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is there, with any value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl LabelSelector {
    /// The requirements, as `ternctl get -l` would write them.
    pub fn selector(&self) -> Selector {
        let mut requirements = Selector::from_labels(&self.match_labels).0;
        requirements.extend(self.match_expressions.iter().map(|e| {
            let key = e.key.clone();
            let values = e.values.iter().cloned().collect();
            match e.operator {
                Operator::In => Requirement::In(key, values),
                Operator::NotIn => Requirement::NotIn(key, values),
                Operator::Exists => Requirement::Exists(key),
                Operator::DoesNotExist => Requirement::DoesNotExist(key),
            }
        }));
        Selector(requirements)
    }

    /// Whether an agent with `labels` is selected (for many agents, build [`Self::selector`]
    /// once and match with it).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector().matches(labels)
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Checks keys, values and operators; the error names the field under the selector.
    pub fn validate(&self) -> Result<(), (String, String)> {
        labels::validate(&self.match_labels).map_err(|e| ("matchLabels".into(), e.to_string()))?;
        for (i, expression) in self.match_expressions.iter().enumerate() {
            let at = |field: &str| format!("matchExpressions[{i}]{field}");
            if !labels::valid_key(&expression.key) {
                let error = LabelError::Key(expression.key.clone());
                return Err((at(".key"), error.to_string()));
            }
            let with_values = matches!(expression.operator, Operator::In | Operator::NotIn);
            if with_values && expression.values.is_empty() {
                return Err((
                    at(".values"),
                    format!("`{:?}` needs at least one value", expression.operator),
                ));
            }
            if !with_values && !expression.values.is_empty() {
                return Err((
                    at(".values"),
                    format!("`{:?}` takes no values", expression.operator),
                ));
            }
            for (j, value) in expression.values.iter().enumerate() {
                if !labels::valid_value(value) {
                    let error = LabelError::Value(value.clone());
                    return Err((at(&format!(".values[{j}]")), error.to_string()));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.selector().fmt(f)
    }
}

impl<'de> Deserialize<'de> for LabelSelector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SelectorVisitor)
    }
}

struct SelectorVisitor;

impl<'de> Visitor<'de> for SelectorVisitor {
    type Value = LabelSelector;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`matchLabels` and `matchExpressions`, or a map of labels")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut selector = LabelSelector::default();
        let (mut structured, mut shorthand) = (false, false);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "matchLabels" => {
                    structured = true;
                    selector.match_labels = map.next_value()?;
                }
                "matchExpressions" => {
                    structured = true;
                    selector.match_expressions = map.next_value()?;
                }
                _ => {
                    shorthand = true;
                    let value: String = map.next_value()?;
                    selector.match_labels.insert(key, value);
                }
            }
            if structured && shorthand {
                return Err(A::Error::custom(
                    "expected `matchLabels`/`matchExpressions` or a map of labels, not both",
                ));
            }
        }
        Ok(selector)
    }
}

impl JsonSchema for LabelSelector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "LabelSelector".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let expression = generator.subschema_for::<MatchExpression>();
        schemars::json_schema!({
            "description": "Which agents run the deployment: every requirement must hold; empty, every agent. A plain map of labels is the shorthand for `matchLabels`.",
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        "matchLabels": {
                            "description": "Labels an agent must carry, each with exactly this value.",
                            "type": "object",
                            "additionalProperties": { "type": "string" }
                        },
                        "matchExpressions": {
                            "description": "Set-based requirements on an agent's labels.",
                            "type": "array",
                            "items": expression
                        }
                    },
                    "additionalProperties": false
                },
                {
                    "description": "Labels an agent must carry (the shorthand for `matchLabels`).",
                    "type": "object",
                    "additionalProperties": { "type": "string" }
                }
            ]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<LabelSelector, String> {
        serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn both_forms_mean_the_same_and_expressions_mean_what_kubernetes_means() {
        let short = parse("{ site: berlin }").expect("shorthand");
        let long = parse("{ matchLabels: { site: berlin } }").expect("matchLabels");
        assert_eq!(short, long);
        let set = parse(
            "matchLabels: { tier: edge }\nmatchExpressions:\n  - { key: site, operator: In, values: [berlin, paris] }\n  - { key: gpu, operator: DoesNotExist }\n",
        )
        .expect("expressions");
        set.validate().expect("valid");
        assert_eq!(set.to_string(), "tier=edge,site in (berlin,paris),!gpu");
        let agent = |text: &str| labels::parse(text).expect("labels");
        assert!(set.matches(&agent("tier=edge,site=paris")));
        assert!(!set.matches(&agent("tier=edge,site=paris,gpu=a100")));
        assert!(!set.matches(&agent("tier=edge,site=oslo")));
        assert!(LabelSelector::default().matches(&agent("any=thing")));
        let json = serde_json::to_string(&set).expect("serializes");
        assert_eq!(
            serde_json::from_str::<LabelSelector>(&json).expect("reads back"),
            set
        );
    }

    #[test]
    fn bad_selectors_name_the_field() {
        let error = parse("{ matchLabels: { a: b }, site: berlin }").expect_err("mixed");
        assert!(error.contains("not both"), "{error}");
        let error = parse("{ matchExpressions: [{ key: a, operator: Near }] }").expect_err("op");
        assert!(error.contains("Near"), "{error}");
        let bad = |yaml: &str| {
            parse(yaml)
                .expect("parses")
                .validate()
                .expect_err("invalid")
        };
        assert_eq!(
            bad("{ matchExpressions: [{ key: a, operator: In }] }").0,
            "matchExpressions[0].values"
        );
        assert_eq!(
            bad("{ matchExpressions: [{ key: a, operator: Exists, values: [x] }] }").0,
            "matchExpressions[0].values"
        );
        assert_eq!(
            bad("{ matchExpressions: [{ key: 'a b', operator: Exists }] }").0,
            "matchExpressions[0].key"
        );
        assert_eq!(bad("{ site: 'ber lin' }").0, "matchLabels");
    }
}
