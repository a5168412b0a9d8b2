//! Manifests (design section 5): YAML documents, Kubernetes-style. This module parses and
//! validates them; every error names the file, the path of the field and what was expected.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod deployment;
mod pipeline;
pub mod schema;
mod selector;

pub use deployment::{
    DEFAULT_HEALTH_WINDOW_SECONDS, DEFAULT_MAX_ERROR_RATE, DEFAULT_OFFLINE_GRACE_SECONDS,
    Deployment, DeploymentSpec, MAX_VARIANTS, RolloutSpec, RolloutStrategy, VariantSpec,
};
pub use pipeline::{
    ArtifactRef, BaselineRef, DEFAULT_ALERT_PSI, Device, MAX_WARMUP_BYTES, MonitoringSpec,
    Pipeline, PipelineSpec, StepKind, StepLimitsSpec, StepSpec, WarmupSpec, model_step,
};
pub use selector::{LabelSelector, MatchExpression, Operator};

/// The only API version this release reads.
pub const API_VERSION: &str = "tern.dev/v1alpha1";

/// A manifest that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {path}: {message}")]
pub struct ManifestError {
    pub file: String,
    /// Field path, e.g. `spec.steps[1].limits.timeoutMs` (`.` for the document itself).
    pub path: String,
    pub message: String,
}

/// Most bytes of all annotations of one resource, keys and values together (Kubernetes'
/// limit).
pub const MAX_ANNOTATION_BYTES: usize = 256 << 10;

/// `metadata`: the name, and labels and annotations as Kubernetes has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique among resources of its kind: a DNS-1123 label (1-63 characters of a-z, 0-9 and
    /// `-`, starting and ending with a letter or digit).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Identifying key/value pairs: `ternctl get -l` selects by them. Changing them changes
    /// nothing on the agents.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Free-form key/value notes for people and tools (owner, ticket, git commit); not used
    /// to select.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One document of a manifest file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Resource {
    Pipeline(Pipeline),
    Deployment(Deployment),
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Pipeline(_) => "Pipeline",
            Resource::Deployment(_) => "Deployment",
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Resource::Pipeline(p) => &p.metadata,
            Resource::Deployment(d) => &d.metadata,
        }
    }

    /// Checks the document on its own (references to other resources are the control plane's
    /// to check). `file` names the source in errors.
    pub fn validate(&self, file: &str) -> Result<(), ManifestError> {
        match self {
            Resource::Pipeline(p) => p.validate(file),
            Resource::Deployment(d) => d.validate(file),
        }
    }
}

/// Parses one YAML document as `T`, with the field path in errors.
fn typed<T: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
    file: &str,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        error(
            file,
            if path.is_empty() {
                ".".to_owned()
            } else {
                path
            },
            e.into_inner().to_string(),
        )
    })
}

/// The YAML documents of `text`, with the name each is known by in errors: `file` when there
/// is one, `file#N` when there are several.
fn documents(text: &str, file: &str) -> Result<Vec<(String, serde_yaml_ng::Value)>, ManifestError> {
    let mut values = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| error(file, format!("document {}", i + 1), e.to_string()))?;
        // A trailing `---` or a comment-only document is not a resource.
        if !value.is_null() {
            values.push(value);
        }
    }
    let several = values.len() > 1;
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let name = if several {
                format!("{file}#{}", i + 1)
            } else {
                file.to_owned()
            };
            (name, v)
        })
        .collect())
}

/// Parses and validates every document of a manifest file (`Pipeline` and `Deployment`).
pub fn parse_resources(text: &str, file: &str) -> Result<Vec<Resource>, ManifestError> {
    Ok(parse_sourced(text, file)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Like [`parse_resources`], with the name each document goes by in errors (`file#N`).
pub fn parse_sourced(text: &str, file: &str) -> Result<Vec<(String, Resource)>, ManifestError> {
    let mut resources: Vec<(String, Resource)> = Vec::new();
    for (name, value) in documents(text, file)? {
        let resource = match value.get("kind").and_then(|k| k.as_str()) {
            Some("Pipeline") => Resource::Pipeline(typed(value, &name)?),
            Some("Deployment") => Resource::Deployment(typed(value, &name)?),
            Some(other) => {
                return Err(error(
                    &name,
                    "kind",
                    format!("expected `Pipeline` or `Deployment`, got `{other}`"),
                ));
            }
            None => return Err(error(&name, "kind", "expected `Pipeline` or `Deployment`")),
        };
        resource.validate(&name)?;
        if resources
            .iter()
            .any(|(_, r)| r.kind() == resource.kind() && r.name() == resource.name())
        {
            return Err(error(
                &name,
                "metadata.name",
                format!("{} `{}` appears twice", resource.kind(), resource.name()),
            ));
        }
        resources.push((name, resource));
    }
    if resources.is_empty() {
        return Err(error(file, ".", "no documents"));
    }
    Ok(resources)
}

/// Reads and parses a manifest file of any resources, with each document's name in errors.
pub fn resources_from_file(path: &Path) -> Result<Vec<(String, Resource)>, ManifestError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| error(&file, ".", e.to_string()))?;
    parse_sourced(&text, &file)
}

fn error(file: &str, path: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError {
        file: file.to_owned(),
        path: path.into(),
        message: message.into(),
    }
}

/// Checks `apiVersion` and `metadata`.
fn check_header(
    api_version: &str,
    kind: (&str, &str),
    metadata: &Metadata,
    file: &str,
) -> Result<(), ManifestError> {
    if kind.0 != kind.1 {
        return Err(error(
            file,
            "kind",
            format!("expected `{}`, got `{}`", kind.1, kind.0),
        ));
    }
    if api_version != API_VERSION {
        return Err(error(
            file,
            "apiVersion",
            format!("expected `{API_VERSION}`, got `{api_version}`"),
        ));
    }
    if !crate::labels::dns_label(&metadata.name) {
        return Err(error(
            file,
            "metadata.name",
            format!(
                "expected a DNS-1123 label (1-63 characters of a-z, 0-9 and `-`, starting and ending with a letter or digit), got `{}`",
                metadata.name
            ),
        ));
    }
    crate::labels::validate(&metadata.labels)
        .map_err(|e| error(file, "metadata.labels", e.to_string()))?;
    let mut size = 0;
    for (key, value) in &metadata.annotations {
        if !crate::labels::valid_key(key) {
            return Err(error(
                file,
                format!("metadata.annotations.{key}"),
                "expected a key of 1-63 characters of a-z, A-Z, 0-9, `.`, `_`, `-`, with an optional `prefix/`",
            ));
        }
        size += key.len() + value.len();
    }
    if size > MAX_ANNOTATION_BYTES {
        return Err(error(
            file,
            "metadata.annotations",
            format!("expected at most {MAX_ANNOTATION_BYTES} bytes in all, got {size}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: tern.dev/v1alpha1
kind: Pipeline
metadata: { name: defect-detector }
spec:
  steps:
    - name: prep
      plugin: image-prep:3
      config: { size: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
      limits: { timeoutMs: 50, memoryMiB: 64 }
    - name: classify
      model: mobilenet-v2:7
      device: auto
    - name: post
      plugin: ./topk.wasm
      config: { k: 5 }
---
apiVersion: tern.dev/v1alpha1
kind: Deployment
metadata: { name: other }
spec: {}
"#;

    #[test]
    fn parses_the_design_example() {
        let p = Pipeline::parse(GOOD, "p.yaml").expect("valid");
        assert_eq!(p.metadata.name, "defect-detector");
        assert_eq!(p.spec.steps.len(), 3);
        assert_eq!(p.spec.steps[0].limits.and_then(|l| l.timeout_ms), Some(50));
        assert_eq!(p.spec.steps[1].kind(), StepKind::Model("mobilenet-v2:7"));
        assert_eq!(p.spec.steps[2].config_json(), r#"{"k":5}"#);
        assert_eq!(
            ArtifactRef::parse("image-prep:3"),
            Some(ArtifactRef::Release {
                name: "image-prep".into(),
                version: 3
            })
        );
        assert_eq!(
            ArtifactRef::parse("./topk.wasm"),
            Some(ArtifactRef::Path("./topk.wasm".into()))
        );
    }

    fn err(yaml: &str) -> ManifestError {
        Pipeline::parse(yaml, "bad.yaml").expect_err("invalid")
    }

    #[test]
    fn errors_name_the_file_the_field_and_the_expectation() {
        let e = err(&GOOD.replace("timeoutMs: 50", "timeoutMz: 50"));
        assert_eq!(e.file, "bad.yaml");
        assert_eq!(e.path, "spec.steps[0].limits.timeoutMz");
        assert!(e.message.contains("timeoutMz"), "{e}");

        let e = err(&GOOD.replace("timeoutMs: 50", "timeoutMs: 0"));
        assert_eq!(e.path, "spec.steps[0].limits.timeoutMs");

        let e = err(&GOOD.replace("timeoutMs: 50", "timeoutMs: soon"));
        assert_eq!(e.path, "spec.steps[0].limits.timeoutMs", "{e}");

        let e = err(&GOOD.replace("plugin: image-prep:3", "plugin: image-prep"));
        assert_eq!(e.path, "spec.steps[0].plugin");

        let e = err(&GOOD.replace("name: post", "name: prep"));
        assert!(e.message.contains("used twice"), "{e}");

        let e = err(&GOOD.replace(
            "tern.dev/v1alpha1\nkind: Pipeline",
            "tern.dev/v2\nkind: Pipeline",
        ));
        assert_eq!(e.path, "apiVersion");

        let with_warmup = |w: &str| {
            GOOD.replace(
                "spec:\n  steps:",
                &format!("spec:\n  warmup: {w}\n  steps:"),
            )
        };
        Pipeline::parse(
            &with_warmup("{ mediaType: text/plain, dataBase64: aGk= }"),
            "w.yaml",
        )
        .expect("a blob sample");
        Pipeline::parse(&with_warmup("{ inputs: [] }"), "w.yaml").expect("tensors");
        let e = err(&with_warmup("{ dataBase64: aGk= }"));
        assert_eq!(e.path, "spec.warmup.mediaType");
        let e = err(&with_warmup(
            "{ mediaType: a/b, dataBase64: aGk=, file: x.png }",
        ));
        assert_eq!(e.path, "spec.warmup");
        let e = err(&with_warmup("{ mediaType: a/b, dataBase64: '***' }"));
        assert_eq!(e.path, "spec.warmup.dataBase64");

        let with_monitoring = |m: &str| {
            GOOD.replace(
                "spec:\n  steps:",
                &format!("spec:\n  monitoring: {m}\n  steps:"),
            )
        };
        let p = Pipeline::parse(&with_monitoring("{ baseline: shapes:2 }"), "m.yaml")
            .expect("a stored baseline");
        let monitoring = p.spec.monitoring.as_ref().expect("monitoring");
        assert_eq!(monitoring.alert_psi, DEFAULT_ALERT_PSI);
        assert_eq!(monitoring.watched_step(&p.spec.steps), Some("classify"));
        assert_eq!(
            BaselineRef::parse("./b.json"),
            Some(BaselineRef::File("./b.json".into()))
        );
        let e = err(&with_monitoring("{ alertPsi: -1 }"));
        assert_eq!(e.path, "spec.monitoring.alertPsi");
        let e = err(&with_monitoring("{ step: prep }"));
        assert!(e.message.contains("is a plugin"), "{e}");
        let e = err(&with_monitoring("{ baseline: nothing }"));
        assert_eq!(e.path, "spec.monitoring.baseline");
        let e = err(&with_monitoring(
            "{ baselineData: { features: [{ feature: f, edges: [2, 1], fractions: [1, 0, 0] }] } }",
        ));
        assert_eq!(e.path, "spec.monitoring.baselineData");

        let e = err("kind: Deployment\n");
        assert!(e.message.contains("no document of kind Pipeline"));
        assert!(err(": : :").to_string().starts_with("bad.yaml: document 1"));
    }
}
