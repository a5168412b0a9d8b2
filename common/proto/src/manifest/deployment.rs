//! `Deployment`: which agents run a pipeline, and how a new revision rolls out to them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LabelSelector, ManifestError, Metadata, check_header, error};

/// Health window when the manifest gives none.
pub const DEFAULT_HEALTH_WINDOW_SECONDS: u64 = 60;
/// Error rate tolerated when the manifest gives none.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 0.02;
/// Longest health window accepted (a day).
const MAX_HEALTH_WINDOW_SECONDS: u64 = 24 * 3600;
/// How long a wave waits for a member that is offline when the manifest does not say.
pub const DEFAULT_OFFLINE_GRACE_SECONDS: u64 = 300;
/// Longest offline grace accepted (a week).
const MAX_OFFLINE_GRACE_SECONDS: u64 = 7 * 24 * 3600;
/// Most waves a canary may have.
const MAX_WAVES: usize = 20;

/// A `Deployment`: which agents run a pipeline, and how each new revision of it rolls out to
/// them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Deployment {
    /// The API version of the manifest: `tern.dev/v1alpha1`.
    #[schemars(extend("const" = super::API_VERSION))]
    pub api_version: String,
    /// `Deployment`.
    #[schemars(extend("const" = "Deployment"))]
    pub kind: String,
    /// Name, labels and annotations.
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

/// What a deployment runs, on which agents, and how new revisions reach them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    /// Name of the pipeline it runs.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub pipeline: String,
    /// The agents that run it, by their labels; absent or empty, every agent.
    #[serde(default, skip_serializing_if = "LabelSelector::is_empty")]
    pub selector: LabelSelector,
    /// How a new revision of the pipeline reaches the selected agents.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// An A/B experiment: the pipeline's model step runs one of these models per request, by
    /// weight (sticky when the request carries a key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<VariantSpec>,
}

/// Most variants an experiment may have.
pub const MAX_VARIANTS: usize = 8;

/// `spec.variants[]`: a model release and its share of requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// `name:version` of a model release.
    pub model: String,
    /// Percent of requests; the weights add up to 100.
    #[schemars(range(min = 1, max = 100))]
    pub weight: u32,
    /// The model step it replaces; the pipeline's only model step when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// How a new pipeline revision reaches the selected agents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutStrategy {
    /// Every selected agent at once (still gated on health, for rollback).
    #[default]
    AllAtOnce,
    /// Cumulative waves of the selected agents, each gated on health.
    Canary,
}

/// `spec.rollout`: how a new pipeline revision reaches the selected agents, and when it is
/// rolled back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `all-at-once`, or `canary` in `waves`.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Cumulative percentages of the selected agents, ending at 100 (canary only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), inner(range(min = 1, max = 100)))]
    pub waves: Vec<u8>,
    /// How long each wave must stay healthy before the next starts.
    #[serde(default = "default_window")]
    #[schemars(range(max = 86400))]
    pub health_window_seconds: u64,
    /// Errors per request above which a wave is unhealthy.
    #[serde(default = "default_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Return every agent to the previous revision when a wave fails.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
    /// How long a wave waits for a member that is offline: until then the wave is not
    /// healthy; after it the member is left out of the wave's health (and listed), never
    /// counted as healthy.
    #[serde(
        default = "default_offline_grace",
        skip_serializing_if = "is_default_offline_grace"
    )]
    #[schemars(range(max = 604800))]
    pub offline_grace_seconds: u64,
}

fn default_offline_grace() -> u64 {
    DEFAULT_OFFLINE_GRACE_SECONDS
}
fn is_default_offline_grace(seconds: &u64) -> bool {
    *seconds == DEFAULT_OFFLINE_GRACE_SECONDS
}

fn default_window() -> u64 {
    DEFAULT_HEALTH_WINDOW_SECONDS
}
fn default_error_rate() -> f64 {
    DEFAULT_MAX_ERROR_RATE
}
fn default_true() -> bool {
    true
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::AllAtOnce,
            waves: Vec::new(),
            health_window_seconds: DEFAULT_HEALTH_WINDOW_SECONDS,
            max_error_rate: DEFAULT_MAX_ERROR_RATE,
            auto_rollback: true,
            offline_grace_seconds: DEFAULT_OFFLINE_GRACE_SECONDS,
        }
    }
}

impl RolloutSpec {
    /// The waves as percentages: `[100]` for all-at-once.
    pub fn wave_percents(&self) -> Vec<u8> {
        match self.strategy {
            RolloutStrategy::AllAtOnce => vec![100],
            RolloutStrategy::Canary => self.waves.clone(),
        }
    }
}

impl Deployment {
    pub(super) fn validate(&self, file: &str) -> Result<(), ManifestError> {
        check_header(
            &self.api_version,
            (&self.kind, "Deployment"),
            &self.metadata,
            file,
        )?;
        let spec = &self.spec;
        if !crate::labels::dns_label(&spec.pipeline) {
            return Err(error(
                file,
                "spec.pipeline",
                "expected a pipeline name: a DNS-1123 label (1-63 characters of a-z, 0-9 and `-`)",
            ));
        }
        spec.selector
            .validate()
            .map_err(|(field, message)| error(file, format!("spec.selector.{field}"), message))?;
        let rollout = &spec.rollout;
        match rollout.strategy {
            RolloutStrategy::AllAtOnce if !rollout.waves.is_empty() => {
                return Err(error(
                    file,
                    "spec.rollout.waves",
                    "waves are for `strategy: canary`; all-at-once takes none",
                ));
            }
            RolloutStrategy::AllAtOnce => {}
            RolloutStrategy::Canary => {
                if rollout.waves.is_empty() || rollout.waves.len() > MAX_WAVES {
                    return Err(error(
                        file,
                        "spec.rollout.waves",
                        format!("expected 1 to {MAX_WAVES} cumulative percentages ending at 100"),
                    ));
                }
                let mut last = 0;
                for (i, &wave) in rollout.waves.iter().enumerate() {
                    if wave <= last || wave > 100 {
                        return Err(error(
                            file,
                            format!("spec.rollout.waves[{i}]"),
                            format!(
                                "expected a percentage above {last} and at most 100, got {wave}"
                            ),
                        ));
                    }
                    last = wave;
                }
                if last != 100 {
                    return Err(error(
                        file,
                        format!("spec.rollout.waves[{}]", rollout.waves.len() - 1),
                        format!("the last wave must be 100, got {last}"),
                    ));
                }
            }
        }
        self.validate_variants(file)?;
        if rollout.health_window_seconds > MAX_HEALTH_WINDOW_SECONDS {
            return Err(error(
                file,
                "spec.rollout.healthWindowSeconds",
                format!("expected 0 to {MAX_HEALTH_WINDOW_SECONDS}"),
            ));
        }
        if rollout.offline_grace_seconds > MAX_OFFLINE_GRACE_SECONDS {
            return Err(error(
                file,
                "spec.rollout.offlineGraceSeconds",
                format!("expected 0 to {MAX_OFFLINE_GRACE_SECONDS}"),
            ));
        }
        if !(0.0..=1.0).contains(&rollout.max_error_rate) {
            return Err(error(
                file,
                "spec.rollout.maxErrorRate",
                format!(
                    "expected a fraction from 0 to 1, got {}",
                    rollout.max_error_rate
                ),
            ));
        }
        Ok(())
    }
}

impl Deployment {
    fn validate_variants(&self, file: &str) -> Result<(), ManifestError> {
        let variants = &self.spec.variants;
        if variants.is_empty() {
            return Ok(());
        }
        if variants.len() < 2 || variants.len() > MAX_VARIANTS {
            return Err(error(
                file,
                "spec.variants",
                format!("expected 2 to {MAX_VARIANTS} variants"),
            ));
        }
        for (i, v) in variants.iter().enumerate() {
            if !matches!(
                super::ArtifactRef::parse(&v.model),
                Some(super::ArtifactRef::Release { .. })
            ) {
                return Err(error(
                    file,
                    format!("spec.variants[{i}].model"),
                    format!(
                        "expected `name:version` of a model release, got `{}`",
                        v.model
                    ),
                ));
            }
            if variants[..i].iter().any(|w| w.model == v.model) {
                return Err(error(
                    file,
                    format!("spec.variants[{i}].model"),
                    format!("`{}` is listed twice", v.model),
                ));
            }
            if variants[..i].iter().any(|w| w.step != v.step) {
                return Err(error(
                    file,
                    format!("spec.variants[{i}].step"),
                    "every variant replaces the same step",
                ));
            }
        }
        let total: u64 = variants.iter().map(|v| u64::from(v.weight)).sum();
        if total != 100 || variants.iter().any(|v| v.weight == 0) {
            return Err(error(
                file,
                "spec.variants",
                format!("expected weights above 0 that add up to 100, got {total}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::{Resource, parse_resources};

    const BOTH: &str = r#"
apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: defect-detector }
spec:
  steps:
    - name: classify
      model: mobilenet-v2:7
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: detector-factories }
spec:
  pipeline: defect-detector
  selector: { site: berlin }
  rollout:
    strategy: canary
    waves: [10, 50, 100]
    healthWindowSeconds: 60
    maxErrorRate: 0.02
    autoRollback: true
"#;

    #[test]
    fn parses_the_design_example() {
        let resources = parse_resources(BOTH, "d.yaml").expect("valid");
        assert_eq!(resources.len(), 2);
        let Resource::Deployment(d) = &resources[1] else {
            panic!("expected a deployment")
        };
        assert_eq!(d.spec.rollout.wave_percents(), [10, 50, 100]);
        assert_eq!(
            d.spec.selector.match_labels.get("site").map(String::as_str),
            Some("berlin")
        );
        // The JSON form (what ternctl sends) reads back as the same resources.
        let json = serde_json::to_string(&resources).expect("json");
        let back: Vec<Resource> = serde_json::from_str(&json).expect("back");
        assert_eq!(back, resources);
    }

    fn err(yaml: &str) -> crate::manifest::ManifestError {
        parse_resources(yaml, "d.yaml").expect_err("invalid")
    }

    #[test]
    fn kubernetes_selectors_labels_and_annotations_are_read() {
        let yaml = BOTH
            .replace(
                "metadata: { name: detector-factories }",
                "metadata:\n  name: detector-factories\n  labels: { team: vision, app.kubernetes.io/part-of: qa }\n  annotations: { tern.dev/ticket: 'QA-17: factory rollout' }",
            )
            .replace(
                "selector: { site: berlin }",
                "selector:\n    matchLabels: { tier: edge }\n    matchExpressions:\n      - { key: site, operator: NotIn, values: [oslo] }",
            );
        let resources = parse_resources(&yaml, "d.yaml").expect("valid");
        let Resource::Deployment(d) = &resources[1] else {
            panic!("expected a deployment")
        };
        assert_eq!(d.metadata.labels["team"], "vision");
        assert_eq!(
            d.metadata.annotations["tern.dev/ticket"],
            "QA-17: factory rollout"
        );
        assert_eq!(d.spec.selector.to_string(), "tier=edge,site!=oslo");
        let json = serde_json::to_string(&resources).expect("json");
        let back: Vec<Resource> = serde_json::from_str(&json).expect("back");
        assert_eq!(back, resources);
        let e = err(&yaml.replace("team: vision", "team: 'vision team'"));
        assert_eq!(e.path, "metadata.labels");
        let e = err(&yaml.replace("tern.dev/ticket", "-ticket"));
        assert_eq!(e.path, "metadata.annotations.-ticket");
    }

    #[test]
    fn deployment_errors_name_the_document_and_the_field() {
        let e = err(&BOTH.replace("[10, 50, 100]", "[10, 5, 100]"));
        assert_eq!(
            (e.file.as_str(), e.path.as_str()),
            ("d.yaml#2", "spec.rollout.waves[1]")
        );
        let e = err(&BOTH.replace("[10, 50, 100]", "[10, 50]"));
        assert!(e.message.contains("last wave must be 100"), "{e}");
        let e = err(&BOTH.replace("maxErrorRate: 0.02", "maxErrorRate: 2"));
        assert_eq!(e.path, "spec.rollout.maxErrorRate");
        let e = err(&BOTH.replace("autoRollback: true", "autoRollbak: true"));
        assert_eq!(e.path, "spec.rollout.autoRollbak");
        let e = err(&BOTH.replace("strategy: canary", "strategy: yolo"));
        assert_eq!(e.path, "spec.rollout.strategy");
        let e = err(&BOTH.replace("strategy: canary", "strategy: all-at-once"));
        assert!(e.message.contains("all-at-once takes none"), "{e}");
        let e = err(&BOTH.replace("site: berlin", "site: Berlin!"));
        assert_eq!(e.path, "spec.selector.matchLabels");
        let e = err(&BOTH.replace(
            "{ site: berlin }",
            "{ matchExpressions: [{ key: site, operator: In }] }",
        ));
        assert_eq!(e.path, "spec.selector.matchExpressions[0].values");
        let e = err(&BOTH.replace("{ site: berlin }", "{ matchLabels: { site: 7 } }"));
        assert_eq!(e.path, "spec.selector.matchLabels.site", "{e}");
        let e = err(&BOTH.replace("name: detector-factories", "name: detector_factories"));
        assert_eq!(e.path, "metadata.name");
        assert!(e.message.contains("DNS-1123"), "{e}");
        let e = err(&BOTH.replace("kind: Deployment", "kind: Service"));
        assert_eq!((e.path.as_str(), e.file.as_str()), ("kind", "d.yaml#2"));
        let twice = format!(
            "{BOTH}---\n{}",
            BOTH.split("---").nth(1).unwrap_or_default()
        );
        assert!(err(&twice).message.contains("appears twice"));

        let with_variants =
            |v: &str| BOTH.replace("  selector:", &format!("  variants: {v}\n  selector:"));
        let ok = parse_resources(
            &with_variants("[{model: m:7, weight: 90}, {model: m:8, weight: 10}]"),
            "d.yaml",
        )
        .expect("an experiment");
        let Resource::Deployment(d) = &ok[1] else {
            panic!("expected a deployment")
        };
        assert_eq!(d.spec.variants[1].weight, 10);
        let e = err(&with_variants(
            "[{model: m:7, weight: 90}, {model: m:8, weight: 20}]",
        ));
        assert!(e.message.contains("add up to 100"), "{e}");
        let e = err(&with_variants("[{model: m:7, weight: 100}]"));
        assert_eq!(e.path, "spec.variants");
        let e = err(&with_variants(
            "[{model: m:7, weight: 50}, {model: m, weight: 50}]",
        ));
        assert_eq!(e.path, "spec.variants[1].model");
        let e = err(&with_variants(
            "[{model: m:7, weight: 50}, {model: m:7, weight: 50}]",
        ));
        assert!(e.message.contains("twice"), "{e}");
    }
}
