//! The conformance suite: real models and ONNX's own backend test data, run through the public
//! API on a chosen backend, with a verdict per case: pass, unsupported (and why), or fail.
//!
//! Suites:
//! - `generated`: the project's own fixtures, `agent/infer/fixtures/models/*` (common
//!   architectures built by `fixtures/make_models.py` with ONNX's helpers, seeded weights and
//!   ONNX Runtime's outputs; `cargo xtask fixtures` rebuilds them): every element within
//!   `1e-4 + 1e-3·|expected|`;
//! - outside the repository (`TERN_FIXTURES`, default `../shared` beside the checkout):
//!   `models/*/{model.onnx,input.npy,expected_output.npy}`: max abs difference ≤ 1e-4;
//!   `onnx-backend-tests/*/*/{model.onnx,test_data_set_0/{input,output}_N.pb}`: every element
//!   within `atol + rtol·|expected|` with rtol 1e-3, atol 1e-5 (ONNX's defaults).

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::InferError;
use crate::model::{Device, Model, ModelOptions, Placement};
use crate::npy;
use crate::tensor::Tensor;

/// How outputs are compared.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    MaxAbs(f64),
    Relative { rtol: f64, atol: f64 },
}

/// One case: a model with inputs and expected outputs.
#[derive(Debug, Clone)]
pub struct Case {
    pub suite: String,
    pub name: String,
    pub dir: PathBuf,
    pub tolerance: Tolerance,
}

/// The verdict for one case on one backend.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass { max_abs_diff: f64 },
    Unsupported { reason: String },
    Fail { reason: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass { max_abs_diff } => write!(f, "pass (max abs diff {max_abs_diff:.2e})"),
            Outcome::Unsupported { reason } => write!(f, "unsupported: {reason}"),
            Outcome::Fail { reason } => write!(f, "FAIL: {reason}"),
        }
    }
}

/// A case's verdict on a backend.
#[derive(Debug, Clone)]
pub struct Report {
    pub suite: String,
    pub case: String,
    pub device: Device,
    pub outcome: Outcome,
}

/// Where the fixtures are: `TERN_FIXTURES`, else `../shared` beside the workspace.
pub fn fixtures_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TERN_FIXTURES") {
        return PathBuf::from(dir);
    }
    manifest_dir().join("../../../shared")
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// The project's own fixtures (`agent/infer/fixtures/models`).
pub fn generated_dir() -> PathBuf {
    manifest_dir().join("fixtures/models")
}

/// The cases of `parent`: each subdirectory with a `model.onnx`, named after it.
fn cases_in(parent: &Path, suite: &str, tolerance: Tolerance) -> Vec<Case> {
    subdirs(parent)
        .into_iter()
        .filter(|dir| dir.join("model.onnx").is_file())
        .map(|dir| Case {
            suite: suite.to_owned(),
            name: file_name(&dir),
            dir,
            tolerance,
        })
        .collect()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The project's own fixtures (see the module docs).
pub fn discover_generated() -> Vec<Case> {
    let tolerance = Tolerance::Relative {
        rtol: 1e-3,
        atol: 1e-4,
    };
    cases_in(&generated_dir(), "generated", tolerance)
}

/// Every case under `root` (see the module docs for the layout).
pub fn discover(root: &Path) -> Vec<Case> {
    let mut cases = cases_in(&root.join("models"), "models", Tolerance::MaxAbs(1e-4));
    // ONNX's defaults.
    let onnx = Tolerance::Relative {
        rtol: 1e-3,
        atol: 1e-5,
    };
    for group in subdirs(&root.join("onnx-backend-tests")) {
        cases.extend(cases_in(&group, &file_name(&group), onnx));
    }
    cases
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_pb(path: &Path) -> Result<Tensor, String> {
    let bytes = read(path)?;
    let proto = tract_onnx::tensor::proto_from_reader(&bytes[..])
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let t = tract_onnx::tensor::load_tensor(
        &tract_onnx::data_resolver::FopenDataResolver,
        &proto,
        None,
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Tensor::from_tract(&proto.name, &t).map_err(|e| e.to_string())
}

/// Inputs and expected outputs of a case.
fn data(case: &Case) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
    if case.dir.join("input.npy").is_file() {
        let input =
            npy::parse("input", &read(&case.dir.join("input.npy"))?).map_err(|e| e.to_string())?;
        let expected = npy::parse("output", &read(&case.dir.join("expected_output.npy"))?)
            .map_err(|e| e.to_string())?;
        return Ok((vec![input], vec![expected]));
    }
    let set = case.dir.join("test_data_set_0");
    let mut inputs = vec![];
    let mut outputs = vec![];
    for i in 0.. {
        let p = set.join(format!("input_{i}.pb"));
        if !p.is_file() {
            break;
        }
        inputs.push(load_pb(&p)?);
    }
    for i in 0.. {
        let p = set.join(format!("output_{i}.pb"));
        if !p.is_file() {
            break;
        }
        outputs.push(load_pb(&p)?);
    }
    Ok((inputs, outputs))
}

/// Compares `got` with `want`, returning the largest absolute difference or why they differ.
pub fn compare(got: &Tensor, want: &Tensor, tolerance: Tolerance) -> Result<f64, String> {
    if got.shape != want.shape {
        let squeezed = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
        if squeezed(&got.shape) != squeezed(&want.shape) {
            return Err(format!("shape {:?}, expected {:?}", got.shape, want.shape));
        }
    }
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    if g.len() != w.len() {
        return Err(format!("{} values, expected {}", g.len(), w.len()));
    }
    let mut worst = 0.0f64;
    for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
        if a.is_nan() && b.is_nan() {
            continue;
        }
        let diff = (a - b).abs();
        let ok = match tolerance {
            Tolerance::MaxAbs(t) => diff <= t,
            Tolerance::Relative { rtol, atol } => diff <= atol + rtol * b.abs() || a == b,
        };
        if !ok {
            return Err(format!(
                "element {i}: got {a}, expected {b} (diff {diff:.3e})"
            ));
        }
        worst = worst.max(diff);
    }
    Ok(worst)
}

/// Runs one case on `device` (`cpu` or `gpu`).
pub fn run_case(case: &Case, device: Device) -> Report {
    let outcome = run(case, device);
    Report {
        suite: case.suite.clone(),
        case: case.name.clone(),
        device,
        outcome,
    }
}

fn run(case: &Case, device: Device) -> Outcome {
    let fail = |reason: String| Outcome::Fail { reason };
    let (inputs, expected) = match data(case) {
        Ok(d) => d,
        Err(e) => return fail(format!("test data: {e}")),
    };
    let bytes = match read(&case.dir.join("model.onnx")) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let model = match Model::load(
        &bytes,
        &ModelOptions {
            device,
            ..ModelOptions::default()
        },
    ) {
        Ok(m) => m,
        Err(
            e @ (InferError::UnsupportedOp { .. }
            | InferError::Unsupported { .. }
            | InferError::InvalidModel(_)
            | InferError::Panicked { .. }),
        ) => {
            return Outcome::Unsupported {
                reason: e.to_string(),
            };
        }
        Err(e) => return fail(e.to_string()),
    };
    if device == Device::Gpu && model.placement() == Placement::Cpu {
        return fail("asked for the GPU, got the CPU".into());
    }
    // Inputs by position: ONNX test data names do not always match the graph's input names.
    let named: Vec<Tensor> = inputs
        .into_iter()
        .zip(model.inputs())
        .map(|(mut t, spec)| {
            t.name.clone_from(&spec.name);
            t
        })
        .collect();
    let outputs = match model.run(named) {
        Ok(o) => o,
        Err(e) => return fail(format!("run: {e}")),
    };
    if outputs.len() < expected.len() {
        return fail(format!(
            "{} outputs, expected {}",
            outputs.len(),
            expected.len()
        ));
    }
    let mut worst = 0.0f64;
    for (i, (got, want)) in outputs.iter().zip(&expected).enumerate() {
        match compare(got, want, case.tolerance) {
            Ok(d) => worst = worst.max(d),
            Err(e) => return fail(format!("output {i} (`{}`): {e}", got.name)),
        }
    }
    Outcome::Pass {
        max_abs_diff: worst,
    }
}

/// This package's directory: where cargo says it is now (the build may come from a checkout
/// at another path sharing the target directory), else where it was built.
/// This crate's directory, read at run time (builds are shared between checkouts at different
/// paths), falling back to where it was built.
pub fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}
