//! Loading a model and running it: the public face of the crate.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;

use crate::cpu::CpuBackend;
use crate::error::{InferError, guarded};
use crate::gpu::{self, GpuBackend};
use crate::tensor::{DType, Tensor};

/// Where a model should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The GPU when there is a hardware adapter and it supports every operator, else the CPU.
    #[default]
    Auto,
    Cpu,
    Gpu,
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            other => Err(format!("device `{other}` is not one of auto, cpu, gpu")),
        }
    }
}

/// Default of [`ModelOptions::max_tensor_bytes`].
pub const DEFAULT_MAX_TENSOR_BYTES: u64 = 4 << 30;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: Device,
    /// Models larger than this are refused before parsing.
    pub max_model_bytes: u64,
    /// Models that declare a tensor larger than this (its element count from the graph, times
    /// its element size) are refused before tract allocates anything.
    pub max_tensor_bytes: u64,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            device: Device::Auto,
            max_model_bytes: 1 << 30,
            max_tensor_bytes: DEFAULT_MAX_TENSOR_BYTES,
        }
    }
}

/// One dimension of an input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A symbolic dimension such as the batch (`N`, `batch_size`).
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// A model input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

/// Which backend a loaded model runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Cpu,
    Gpu { adapter: String },
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Cpu => f.write_str("cpu"),
            Placement::Gpu { adapter } => write!(f, "gpu ({adapter})"),
        }
    }
}

#[derive(Debug)]
enum Backend {
    Cpu(CpuBackend),
    Gpu(Box<GpuBackend>),
}

/// A loaded model. `Send + Sync`: share one behind an `Arc` across concurrent requests.
#[derive(Debug)]
pub struct Model {
    inputs: Vec<IoSpec>,
    outputs: Vec<IoSpec>,
    backend: Backend,
    fallback: Option<String>,
}

/// Parses ONNX bytes into tract's decluttered typed graph, with every guard applied: the
/// model's size, external data and declared tensor sizes before tract sees the graph, and the
/// typed graph's concrete shapes before it is optimized (which folds constants).
pub fn parse_onnx(bytes: &[u8], options: &ModelOptions) -> Result<TypedModel, InferError> {
    let size = bytes.len() as u64;
    if size > options.max_model_bytes {
        return Err(InferError::TooLarge {
            size,
            limit: options.max_model_bytes,
        });
    }
    guarded("parsing the model", || {
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut &bytes[..])
            .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
        if let Some(graph) = &proto.graph {
            crate::admission::check_graph(graph, options.max_tensor_bytes)?;
            crate::admission::check_outputs(graph)?;
        }
        let inference = onnx
            .model_for_proto_model(&proto)
            .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
        let typed = inference
            .into_typed()
            .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
        check_typed_shapes(&typed, options.max_tensor_bytes)?;
        typed
            .into_decluttered()
            .map_err(|e| InferError::InvalidModel(format!("{e:#}")))
    })
}

/// Every value of the typed graph whose shape is concrete stays within `limit` bytes (shapes
/// tract inferred, e.g. of a `ConstantOfShape` or `Expand`, which the graph never declares).
fn check_typed_shapes(model: &TypedModel, limit: u64) -> Result<(), InferError> {
    for node in model.nodes() {
        for (slot, outlet) in node.outputs.iter().enumerate() {
            let fact = &outlet.fact;
            let Some(dims) = fact.shape.as_concrete() else {
                continue;
            };
            let bytes = dims
                .iter()
                .fold(fact.datum_type.size_of() as u128, |n, &d| {
                    n.saturating_mul(d as u128)
                });
            if bytes > u128::from(limit) {
                return Err(InferError::TensorTooLarge {
                    tensor: format!("{}:{slot}", node.name),
                    bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
                    limit,
                });
            }
        }
    }
    Ok(())
}

fn io_spec(model: &TypedModel, outlet: OutletId, name: String) -> Result<IoSpec, InferError> {
    let fact = model
        .outlet_fact(outlet)
        .map_err(|e| InferError::InvalidModel(format!("{e:#}")))?;
    let dtype = DType::from_tract(fact.datum_type).ok_or_else(|| InferError::Unsupported {
        what: format!("`{name}` has dtype {:?}", fact.datum_type),
    })?;
    let shape = fact
        .shape
        .iter()
        .map(|d| match d.to_usize() {
            Ok(n) => Dim::Fixed(n),
            Err(_) => Dim::Symbol(d.to_string()),
        })
        .collect();
    Ok(IoSpec { name, dtype, shape })
}

fn describe(model: &TypedModel) -> Result<(Vec<IoSpec>, Vec<IoSpec>), InferError> {
    let bad = |e: TractError| InferError::InvalidModel(format!("{e:#}"));
    let inputs = model
        .input_outlets()
        .map_err(bad)?
        .iter()
        .map(|&o| io_spec(model, o, model.node(o.node).name.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = model
        .output_outlets()
        .map_err(bad)?
        .iter()
        .map(|&o| {
            let name = model
                .outlet_label(o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone());
            io_spec(model, o, name)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((inputs, outputs))
}

impl Model {
    /// Loads ONNX bytes. With [`Device::Auto`] a model the GPU backend cannot run (an operator it
    /// lacks, no adapter) runs on the CPU and [`Model::fallback_reason`] says why.
    pub fn load(bytes: &[u8], options: &ModelOptions) -> Result<Model, InferError> {
        let typed = parse_onnx(bytes, options)?;
        let (inputs, outputs) = describe(&typed)?;
        let (backend, fallback) = match options.device {
            Device::Cpu => (Backend::Cpu(cpu_backend(typed)?), None),
            Device::Gpu => {
                let context = gpu::shared_context()?;
                (Backend::Gpu(Box::new(gpu_backend(&typed, context)?)), None)
            }
            Device::Auto => match gpu::shared_context() {
                Err(e) => {
                    tracing::debug!(reason = %e, "no GPU, running on the CPU");
                    (Backend::Cpu(cpu_backend(typed)?), Some(e.to_string()))
                }
                Ok(context) if context.is_software() => {
                    let reason = format!(
                        "the only GPU adapter, {}, is a software one",
                        context.adapter_name()
                    );
                    tracing::debug!(%reason, "running on the CPU");
                    (Backend::Cpu(cpu_backend(typed)?), Some(reason))
                }
                Ok(context) => match gpu_backend(&typed, context) {
                    Ok(gpu) => (Backend::Gpu(Box::new(gpu)), None),
                    Err(
                        e @ (InferError::UnsupportedOp { .. } | InferError::Unsupported { .. }),
                    ) => {
                        tracing::warn!(reason = %e, "model falls back to the CPU backend");
                        (Backend::Cpu(cpu_backend(typed)?), Some(e.to_string()))
                    }
                    Err(e) => return Err(e),
                },
            },
        };
        Ok(Model {
            inputs,
            outputs,
            backend,
            fallback,
        })
    }

    pub fn inputs(&self) -> &[IoSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[IoSpec] {
        &self.outputs
    }

    /// Where the model runs.
    pub fn placement(&self) -> Placement {
        match &self.backend {
            Backend::Cpu(_) => Placement::Cpu,
            Backend::Gpu(g) => Placement::Gpu {
                adapter: g.adapter_name().to_owned(),
            },
        }
    }

    /// Why `auto` chose the CPU, when it did.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    /// Runs the model. Inputs are matched by name; a model with one input also takes one tensor
    /// of any name. Outputs come back in the model's order, named as the model names them.
    pub fn run(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
        let ordered = self.order_inputs(inputs)?;
        let _span = tracing::debug_span!("model_run", placement = %self.placement()).entered();
        guarded("running the model", || {
            let outputs = match &self.backend {
                Backend::Cpu(cpu) => {
                    let values = ordered
                        .iter()
                        .map(|t| t.to_tract().map(IntoTValue::into_tvalue))
                        .collect::<Result<TVec<_>, _>>()?;
                    cpu.run(values)?
                        .iter()
                        .zip(&self.outputs)
                        .map(|(v, spec)| Tensor::from_tract(&spec.name, v))
                        .collect::<Result<Vec<_>, _>>()?
                }
                Backend::Gpu(gpu) => {
                    let mut out = gpu.run(&ordered)?;
                    for (t, spec) in out.iter_mut().zip(&self.outputs) {
                        t.name.clone_from(&spec.name);
                    }
                    out
                }
            };
            Ok(outputs)
        })
    }

    /// On the GPU backend, the time of one run's kernels alone (no uploads or readback), averaged
    /// over `repeats` runs recorded into one submission; `None` on the CPU. For benchmarks.
    pub fn time_gpu_dispatches(
        &self,
        inputs: Vec<Tensor>,
        repeats: usize,
    ) -> Option<Result<std::time::Duration, InferError>> {
        let Backend::Gpu(gpu) = &self.backend else {
            return None;
        };
        Some(self.order_inputs(inputs).and_then(|ordered| {
            guarded("timing the model", || {
                gpu.time_dispatches(&ordered, repeats)
            })
        }))
    }

    fn order_inputs(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
        let mut by_name: HashMap<String, Tensor> = HashMap::new();
        if self.inputs.len() == 1 && inputs.len() == 1 {
            let mut only = inputs;
            if let Some(mut t) = only.pop() {
                t.name.clone_from(&self.inputs[0].name);
                by_name.insert(t.name.clone(), t);
            }
        } else {
            for t in inputs {
                if !self.inputs.iter().any(|s| s.name == t.name) {
                    return Err(InferError::BadInput {
                        name: t.name,
                        reason: format!(
                            "the model has no such input (it takes {})",
                            self.inputs
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
                by_name.insert(t.name.clone(), t);
            }
        }
        self.inputs
            .iter()
            .map(|spec| {
                let t = by_name
                    .remove(&spec.name)
                    .ok_or_else(|| InferError::BadInput {
                        name: spec.name.clone(),
                        reason: "missing".to_owned(),
                    })?;
                check_against(&t, spec)?;
                Ok(t)
            })
            .collect()
    }
}

fn check_against(t: &Tensor, spec: &IoSpec) -> Result<(), InferError> {
    t.check()?;
    let bad = |reason: String| InferError::BadInput {
        name: spec.name.clone(),
        reason,
    };
    if t.dtype != spec.dtype {
        return Err(bad(format!(
            "dtype is {}, the model takes {}",
            t.dtype, spec.dtype
        )));
    }
    let fits = t.shape.len() == spec.shape.len()
        && t.shape.iter().zip(&spec.shape).all(|(&n, d)| match d {
            Dim::Fixed(m) => n == *m,
            Dim::Symbol(_) => true,
        });
    if !fits {
        let expected: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
        return Err(bad(format!(
            "shape is {:?}, the model takes [{}]",
            t.shape,
            expected.join(", ")
        )));
    }
    Ok(())
}

fn cpu_backend(typed: TypedModel) -> Result<CpuBackend, InferError> {
    guarded("optimizing the model for the CPU", || {
        CpuBackend::new(typed)
    })
}

fn gpu_backend(
    typed: &TypedModel,
    context: Arc<gpu::GpuContext>,
) -> Result<GpuBackend, InferError> {
    guarded("lowering the model to the GPU", || {
        GpuBackend::new(typed, context)
    })
}
