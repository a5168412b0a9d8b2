//! `tern-agent run-local`: run a Pipeline manifest once on one input, without a control plane.
//! The inner loop of plugin authors and data scientists.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use tern_plugin_host::{
    Blob, Dtype, EngineOptions, LoadError, Payload, PluginEngine, StepLimits, Tensor,
};
use tern_proto::manifest::{ArtifactRef, ManifestError, Pipeline, StepKind};

use crate::npy;
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
        )?);
    }

    let payload = LoadedPipeline { steps }.run(first_payload(&options.input)?)?;
    Ok(payload_json(&payload))
}

fn half_to_f32(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let frac = f32::from(bits & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

fn tensor_json(t: &Tensor) -> serde_json::Value {
    use serde_json::json;
    let (datatype, data): (&str, Vec<serde_json::Value>) = match t.dtype {
        Dtype::Fp32 => (
            "FP32",
            t.data
                .chunks_exact(4)
                .map(|b| json!(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
        Dtype::Fp16 => (
            "FP16",
            t.data
                .chunks_exact(2)
                .map(|b| json!(half_to_f32(u16::from_le_bytes([b[0], b[1]]))))
                .collect(),
        ),
        Dtype::Int64 => (
            "INT64",
            t.data
                .chunks_exact(8)
                .map(|b| {
                    json!(i64::from_le_bytes([
                        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
                    ]))
                })
                .collect(),
        ),
        Dtype::Int32 => (
            "INT32",
            t.data
                .chunks_exact(4)
                .map(|b| json!(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
        Dtype::Uint8 => ("UINT8", t.data.iter().map(|b| json!(b)).collect()),
        Dtype::Boolean => ("BOOL", t.data.iter().map(|b| json!(*b != 0)).collect()),
    };
    json!({ "name": t.name, "datatype": datatype, "shape": t.shape, "data": data })
}

/// The final payload as `run-local` prints it: tensors in the Open Inference Protocol response
/// form, a JSON blob as-is, any other blob as `{"media_type", "data_base64"}`.
pub fn payload_json(payload: &Payload) -> serde_json::Value {
    match payload {
        Payload::Tensors(tensors) => {
            serde_json::json!({ "outputs": tensors.iter().map(tensor_json).collect::<Vec<_>>() })
        }
        Payload::Bytes(blob) => {
            let is_json = blob
                .media_type
                .split(';')
                .next()
                .is_some_and(|m| m.trim() == "application/json");
            match serde_json::from_slice(&blob.data) {
                Ok(value) if is_json => value,
                _ => serde_json::json!({
                    "media_type": blob.media_type,
                    "data_base64": base64::engine::general_purpose::STANDARD.encode(&blob.data),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_tensors_in_the_inference_protocol_form() {
        let t = Tensor {
            name: "y".into(),
            dtype: Dtype::Fp32,
            shape: vec![2],
            data: [1.5f32, -2.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let json = payload_json(&Payload::Tensors(vec![t]));
        assert_eq!(
            json,
            serde_json::json!({"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.5, -2.0]}]})
        );
        let blob = payload_json(&Payload::Bytes(Blob {
            media_type: "image/png".into(),
            data: vec![1, 2],
        }));
        assert_eq!(blob["data_base64"], "AQI=");
        let answer = payload_json(&Payload::Bytes(Blob {
            media_type: "application/json".into(),
            data: br#"{"a":1}"#.to_vec(),
        }));
        assert_eq!(answer, serde_json::json!({"a": 1}));
        assert_eq!(half_to_f32(0x3c00), 1.0);
        assert_eq!(half_to_f32(0xc000), -2.0);
    }

    #[test]
    fn media_types_come_from_extensions() {
        assert_eq!(media_type_of(Path::new("a/b.JPG")), "image/jpeg");
        assert_eq!(media_type_of(Path::new("row.csv")), "text/csv");
        assert_eq!(media_type_of(Path::new("blob")), "application/octet-stream");
    }
}
