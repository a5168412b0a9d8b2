//! `Pipeline`: the steps a request runs through (plugins and models, with their limits),
//! warm-up and drift monitoring.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{ManifestError, Metadata, check_header, documents, error, typed};

/// A `Pipeline`: the steps a request runs through (plugins and models, with their limits),
/// warm-up and drift monitoring. Each change to what agents run makes a new revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pipeline {
    /// The API version of the manifest: `tern.dev/v1alpha1`.
    #[schemars(extend("const" = super::API_VERSION))]
    pub api_version: String,
    /// `Pipeline`.
    #[schemars(extend("const" = "Pipeline"))]
    pub kind: String,
    /// Name, labels and annotations.
    pub metadata: Metadata,
    pub spec: PipelineSpec,
}

/// What the pipeline runs: its steps in order, a warm-up sample and drift monitoring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The steps in order: each one's output is the next one's input.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepSpec>,
    /// A sample input run once through every new revision before it takes traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<WarmupSpec>,
    /// Drift monitoring of the model step's inputs and outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// The PSI above which a feature raises a drift alert when the manifest does not say.
pub const DEFAULT_ALERT_PSI: f64 = 0.2;

/// `spec.monitoring`: agents stream per-feature distributions of a model step's inputs and
/// outputs; with a baseline, the control plane raises an alert for each feature whose PSI
/// goes above `alertPsi`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// `name:version` of a baseline stored on the control plane (`ternctl baseline create`),
    /// or a baseline JSON file, which `ternctl` reads relative to the manifest and sends
    /// inline as `baselineData`. Without one, distributions are collected but not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// A baseline given inline (what `ternctl` sends for a `baseline` file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_data: Option<crate::drift::Baseline>,
    /// The population stability index above which a feature raises a drift alert.
    #[serde(default = "default_alert_psi")]
    #[schemars(range(min = 0.0))]
    pub alert_psi: f64,
    /// The model step watched; the first model step when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

fn default_alert_psi() -> f64 {
    DEFAULT_ALERT_PSI
}

/// A baseline reference: stored on the control plane, or a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaselineRef {
    Stored { name: String, version: u64 },
    File(PathBuf),
}

impl BaselineRef {
    /// `name:version`, or a path (it contains a `/` or ends in `.json`).
    pub fn parse(text: &str) -> Option<Self> {
        if text.contains('/') || text.ends_with(".json") {
            return Some(BaselineRef::File(PathBuf::from(text)));
        }
        let (name, version) = text.split_once(':')?;
        let version = version.parse().ok()?;
        crate::labels::valid_name(name).then(|| BaselineRef::Stored {
            name: name.to_owned(),
            version,
        })
    }
}

impl MonitoringSpec {
    fn validate(&self, steps: &[StepSpec], file: &str) -> Result<(), ManifestError> {
        if !self.alert_psi.is_finite() || self.alert_psi <= 0.0 || self.alert_psi > 10.0 {
            return Err(error(
                file,
                "spec.monitoring.alertPsi",
                "expected a number above 0 and at most 10",
            ));
        }
        match (&self.baseline, &self.baseline_data) {
            (Some(_), Some(_)) => {
                return Err(error(
                    file,
                    "spec.monitoring",
                    "expected `baseline` or `baselineData`, not both",
                ));
            }
            (Some(text), None) if BaselineRef::parse(text).is_none() => {
                return Err(error(
                    file,
                    "spec.monitoring.baseline",
                    format!("expected `name:version` or a `.json` file, got `{text}`"),
                ));
            }
            (None, Some(data)) => data
                .validate()
                .map_err(|e| error(file, "spec.monitoring.baselineData", e.to_string()))?,
            _ => {}
        }
        match model_step(steps, self.step.as_deref()) {
            Some(step) if step.model.is_some() => Ok(()),
            Some(step) => Err(error(
                file,
                "spec.monitoring.step",
                format!("step `{}` is a plugin; expected a model step", step.name),
            )),
            None if self.step.is_some() => Err(error(
                file,
                "spec.monitoring.step",
                "expected the name of a step of this pipeline",
            )),
            None => Err(error(
                file,
                "spec.monitoring",
                "the pipeline has no model step to monitor",
            )),
        }
    }

    /// The name of the watched step.
    pub fn watched_step<'a>(&self, steps: &'a [StepSpec]) -> Option<&'a str> {
        model_step(steps, self.step.as_deref()).map(|s| s.name.as_str())
    }
}

/// The step named `named` (whatever it runs), or without a name the first model step: the
/// step that monitoring watches and that variants replace.
pub fn model_step<'a>(steps: &'a [StepSpec], named: Option<&str>) -> Option<&'a StepSpec> {
    match named {
        Some(name) => steps.iter().find(|s| s.name == name),
        None => steps.iter().find(|s| s.model.is_some()),
    }
}

/// Largest warm-up input a manifest may carry (it travels inside the agents' desired states,
/// which must fit one 1 MiB frame).
pub const MAX_WARMUP_BYTES: usize = 256 << 10;

/// `spec.warmup`: a blob (`mediaType` with `dataBase64`, or with `file`, which `ternctl`
/// reads relative to the manifest and sends inline) or Open Inference Protocol `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WarmupSpec {
    /// The media type of a blob sample (`image/png`, `text/csv`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The blob sample, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// The blob sample as a file, relative to the manifest (`ternctl` reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// v2 request tensors: `[{name, shape, datatype, data}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<serde_json::Value>,
}

impl WarmupSpec {
    fn validate(&self, file: &str) -> Result<(), ManifestError> {
        let given = [
            self.data_base64.is_some(),
            self.file.is_some(),
            self.inputs.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(error(
                file,
                "spec.warmup",
                "expected exactly one of `dataBase64`, `file` or `inputs`",
            ));
        }
        if self.inputs.is_none() && self.media_type.is_none() {
            return Err(error(
                file,
                "spec.warmup.mediaType",
                "expected the media type of the sample",
            ));
        }
        if let Some(data) = &self.data_base64 {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| {
                    error(
                        file,
                        "spec.warmup.dataBase64",
                        format!("expected base64: {e}"),
                    )
                })?;
            if bytes.len() > MAX_WARMUP_BYTES {
                return Err(error(
                    file,
                    "spec.warmup.dataBase64",
                    format!("expected at most {MAX_WARMUP_BYTES} bytes"),
                ));
            }
        }
        if let Some(inputs) = &self.inputs
            && (!inputs.is_array() || inputs.to_string().len() > MAX_WARMUP_BYTES)
        {
            return Err(error(
                file,
                "spec.warmup.inputs",
                format!("expected an array of tensors, at most {MAX_WARMUP_BYTES} bytes of JSON"),
            ));
        }
        Ok(())
    }
}

/// Where a model step runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The GPU when the host has one, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The GPU; the step fails to load on a host without one.
    Gpu,
}

/// One step: a plugin or a model (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the pipeline: 1-63 characters of a-z, 0-9, `-`, `.`, `_`.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9][-a-z0-9._]*$"))]
    pub name: String,
    /// `name:version` of a plugin release (or, in `run-local`, a path to a `.wasm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// `name:version` of a model release (or, in `run-local`, a path to an `.onnx`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The plugin's configuration, handed to it as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Hard limits of a plugin step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<StepLimitsSpec>,
    /// Where a model step runs: `auto`, `cpu` or `gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
}

/// `limits` of a plugin step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StepLimitsSpec {
    /// Longest time one call may take, in milliseconds; the call is cut off after it.
    #[serde(default, rename = "timeoutMs", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_ms: Option<u64>,
    /// Most linear memory the plugin may grow to, in MiB.
    #[serde(default, rename = "memoryMiB", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub memory_mib: Option<u64>,
}

/// What a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind<'a> {
    Plugin(&'a str),
    Model(&'a str),
}

impl StepSpec {
    pub fn kind(&self) -> StepKind<'_> {
        match (&self.plugin, &self.model) {
            (Some(p), _) => StepKind::Plugin(p),
            (None, Some(m)) => StepKind::Model(m),
            // `validate` guarantees one of them.
            (None, None) => StepKind::Plugin(""),
        }
    }

    /// The configuration as JSON text (`{}` when absent).
    pub fn config_json(&self) -> String {
        self.config
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "{}".to_owned())
    }
}

/// A reference to an artifact: a release by name and version, or a local file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactRef {
    Release { name: String, version: u64 },
    Path(PathBuf),
}

impl ArtifactRef {
    /// `name:version`, or a path (it contains a `/` or ends in `.wasm`/`.onnx`).
    pub fn parse(text: &str) -> Option<Self> {
        if text.contains('/') || text.ends_with(".wasm") || text.ends_with(".onnx") {
            return Some(ArtifactRef::Path(PathBuf::from(text)));
        }
        let (name, version) = text.split_once(':')?;
        let version = version.parse().ok()?;
        crate::labels::valid_name(name).then(|| ArtifactRef::Release {
            name: name.to_owned(),
            version,
        })
    }
}

/// Limits on what a manifest may ask for.
const MAX_TIMEOUT_MS: u64 = 10 * 60 * 1000;
const MAX_MEMORY_MIB: u64 = 16 * 1024;

impl Pipeline {
    /// Parses the single `Pipeline` document of `text` (other kinds in the same file are
    /// skipped) and validates it. `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ManifestError> {
        let mut found = None;
        for (_, value) in documents(text, file)? {
            if value.get("kind").and_then(|k| k.as_str()) != Some("Pipeline") {
                continue;
            }
            if found.is_some() {
                return Err(error(file, ".", "more than one Pipeline document"));
            }
            found = Some(typed::<Pipeline>(value, file)?);
        }
        let pipeline = found.ok_or_else(|| error(file, "kind", "no document of kind Pipeline"))?;
        pipeline.validate(file)?;
        Ok(pipeline)
    }

    /// Reads and parses a manifest file.
    pub fn from_file(path: &Path) -> Result<Self, ManifestError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| error(&file, ".", e.to_string()))?;
        Self::parse(&text, &file)
    }

    pub(super) fn validate(&self, file: &str) -> Result<(), ManifestError> {
        check_header(
            &self.api_version,
            (&self.kind, "Pipeline"),
            &self.metadata,
            file,
        )?;
        if self.spec.steps.is_empty() {
            return Err(error(file, "spec.steps", "expected at least one step"));
        }
        if let Some(warmup) = &self.spec.warmup {
            warmup.validate(file)?;
        }
        if let Some(monitoring) = &self.spec.monitoring {
            monitoring.validate(&self.spec.steps, file)?;
        }
        let mut names = BTreeSet::new();
        for (i, step) in self.spec.steps.iter().enumerate() {
            let at = |field: &str| format!("spec.steps[{i}]{field}");
            if !crate::labels::valid_name(&step.name) {
                return Err(error(
                    file,
                    at(".name"),
                    "expected 1-63 characters of a-z, 0-9, `-`, `.`, `_`",
                ));
            }
            if !names.insert(step.name.as_str()) {
                return Err(error(
                    file,
                    at(".name"),
                    format!("step name `{}` is used twice", step.name),
                ));
            }
            let reference = match (&step.plugin, &step.model) {
                (Some(_), Some(_)) => {
                    return Err(error(
                        file,
                        at(""),
                        "expected either `plugin` or `model`, not both",
                    ));
                }
                (None, None) => return Err(error(file, at(""), "expected `plugin` or `model`")),
                (Some(p), None) => ("plugin", p),
                (None, Some(m)) => ("model", m),
            };
            if ArtifactRef::parse(reference.1).is_none() {
                return Err(error(
                    file,
                    at(&format!(".{}", reference.0)),
                    format!(
                        "expected `name:version` or a file path, got `{}`",
                        reference.1
                    ),
                ));
            }
            if step.plugin.is_some() && step.device.is_some() {
                return Err(error(file, at(".device"), "only model steps take a device"));
            }
            if step.model.is_some() && (step.limits.is_some() || step.config.is_some()) {
                return Err(error(
                    file,
                    at(""),
                    "model steps take no `config` or `limits`",
                ));
            }
            if let Some(limits) = &step.limits {
                if let Some(ms) = limits.timeout_ms
                    && !(1..=MAX_TIMEOUT_MS).contains(&ms)
                {
                    return Err(error(
                        file,
                        at(".limits.timeoutMs"),
                        format!("expected 1 to {MAX_TIMEOUT_MS}"),
                    ));
                }
                if let Some(mib) = limits.memory_mib
                    && !(1..=MAX_MEMORY_MIB).contains(&mib)
                {
                    return Err(error(
                        file,
                        at(".limits.memoryMiB"),
                        format!("expected 1 to {MAX_MEMORY_MIB}"),
                    ));
                }
            }
        }
        Ok(())
    }
}
