//! `tern-agent run-local`: run a Pipeline manifest once on one input, without a control plane.
//! The inner loop of plugin authors and data scientists.

use std::path::{Path, PathBuf};

use tern_plugin_host::{Blob, EngineOptions, LoadError, Payload, PluginEngine, StepLimits};
use tern_proto::manifest::{ArtifactRef, ManifestError, Pipeline, StepKind};

use crate::npy;
use crate::oip::payload_json;
use crate::pipeline::{LoadedPipeline, PipelineStep, StepError};

/// Largest input file read.
const MAX_INPUT_BYTES: u64 = 512 << 20;

/// What the first step receives.
#[derive(Debug, Clone)]
pub enum LocalInput {
    /// A file as a blob; the media type comes from the extension unless given.
    File {
        path: PathBuf,
        media_type: Option<String>,
    },
    /// Named tensors from `.npy` files.
    Npy(Vec<(String, PathBuf)>),
}

/// Options of `run-local`.
#[derive(Debug, Clone)]
pub struct RunLocalOptions {
    pub manifest: PathBuf,
    pub input: LocalInput,
    /// Accept local, unsigned artifacts (the only kind `run-local` can use today).
    pub allow_unsigned: bool,
    /// Where compiled plugins are cached between runs.
    pub cache_dir: Option<PathBuf>,
}

/// Why a local run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunLocalError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("cannot read input {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("step {step}: {path} is a local, unsigned artifact; pass --allow-unsigned to run it")]
    Unsigned { step: String, path: PathBuf },
    #[error(
        "step {step}: `{reference}` is a release; run-local takes local files (a release needs a control plane)"
    )]
    Release { step: String, reference: String },
    #[error("cannot start the plugin engine: {0}")]
    Engine(LoadError),
    /// A step failed to load or to run; its display is `step <name>: <reason>`.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// The media type of a file, from its extension.
pub fn media_type_of(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, RunLocalError> {
    use std::io::Read;
    let err = |reason: String| RunLocalError::Input {
        path: path.to_owned(),
        reason,
    };
    // Read at most one byte past the limit (the size in metadata lies for pipes and devices).
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(err(format!(
            "more than the {MAX_INPUT_BYTES} bytes accepted"
        )));
    }
    Ok(bytes)
}

fn first_payload(input: &LocalInput) -> Result<Payload, RunLocalError> {
    match input {
        LocalInput::File { path, media_type } => {
            let media_type = media_type
                .clone()
                .unwrap_or_else(|| media_type_of(path).to_owned());
            Ok(Payload::Bytes(Blob {
                media_type,
                data: read_input(path)?,
            }))
        }
        LocalInput::Npy(files) => files
            .iter()
            .map(|(name, path)| {
                npy::parse(name, &read_input(path)?).map_err(|e| RunLocalError::Input {
                    path: path.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<_, _>>()
            .map(Payload::Tensors),
    }
}

/// Runs the pipeline and returns the final payload as JSON (see [`payload_json`]).
pub fn run_local(options: &RunLocalOptions) -> Result<serde_json::Value, RunLocalError> {
    let pipeline = Pipeline::from_file(&options.manifest)?;
    let base = options.manifest.parent().unwrap_or(Path::new("."));
    let engine = PluginEngine::new(EngineOptions {
        cache_dir: options.cache_dir.clone(),
        ..EngineOptions::default()
    })
    .map_err(RunLocalError::Engine)?;

    // Load every step before running any: a bad artifact fails fast, before the input is read.
    let mut steps = Vec::new();
    for spec in &pipeline.spec.steps {
        let reference = match spec.kind() {
            StepKind::Model(reference) | StepKind::Plugin(reference) => reference,
        };
        let path = match ArtifactRef::parse(reference) {
            Some(ArtifactRef::Path(path)) => base.join(path),
            _ => {
                return Err(RunLocalError::Release {
                    step: spec.name.clone(),
                    reference: reference.to_owned(),
                });
            }
        };
        if !options.allow_unsigned {
            return Err(RunLocalError::Unsigned {
                step: spec.name.clone(),
                path,
            });
        }
        if let StepKind::Model(_) = spec.kind() {
            steps.push(PipelineStep::model_file(
                &spec.name,
                &path,
                spec.device.unwrap_or_default(),
                crate::limits::AgentLimits::default().max_tensor_bytes,
            )?);
            continue;
        }
        let plugin = engine.load_file(&path).map_err(|error| StepError::Load {
            step: spec.name.clone(),
            error,
        })?;
        let limits = spec
            .limits
            .map(|l| StepLimits::from_manifest(l.timeout_ms, l.memory_mib))
            .unwrap_or_default();
        steps.push(PipelineStep::plugin(
            &plugin,
            &spec.name,
            &spec.config_json(),
            limits,
            None,
        )?);
    }

    let payload = LoadedPipeline { steps }.run(first_payload(&options.input)?)?;
    Ok(payload_json(&payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_come_from_extensions() {
        assert_eq!(media_type_of(Path::new("a/b.JPG")), "image/jpeg");
        assert_eq!(media_type_of(Path::new("row.csv")), "text/csv");
        assert_eq!(media_type_of(Path::new("blob")), "application/octet-stream");
    }
}
