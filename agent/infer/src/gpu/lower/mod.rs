//! Lowering tract's typed, decluttered graph (with concrete shapes) to a [`Program`].
//!
//! Each tract op maps to one or a few dispatches of our kernels. Subgraphs of constants are
//! folded on the CPU with tract's own evaluation; reshapes are free (views of the same buffer);
//! Conv and MatMul absorb the per-channel affine ops (folded BatchNormalization, bias) and the
//! activation that follow them.
//!
//! By kind of op: [`codes`] and [`geometry`] (pure helpers), [`epilogue`] (fusion),
//! [`linalg`], [`movement`], [`elementwise`], [`reduce`].

mod codes;
mod elementwise;
mod epilogue;
mod geometry;
mod linalg;
mod movement;
mod reduce;

use codes::*;
use geometry::*;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::ops::array::{
    Gather, MultiBroadcastTo, Pad, PadMode, Slice, Tile, TypedConcat,
};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, MaxPool, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::logic::Iff;
use tract_onnx::tract_core::ops::math::PowConst;
use tract_onnx::tract_core::ops::nn::LeakyRelu;
use tract_onnx::tract_core::ops::nn::rms_norm::RmsNorm;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, Softmax, SoftmaxKind};
use tract_onnx::tract_core::ops::source::TypedSource;

use crate::error::InferError;
use crate::gpu::kernels::{Kernel, ROW_PER_WORKGROUP_FROM, gemm_tile, grid_1d, grid_rows};
use crate::gpu::program::{
    BufId, BufferKind, BufferSpec, InputSpec, OutputSpec, Program, Step, Word,
};
use crate::tensor::DType;

const MAX_RANK: usize = 8;
/// Workgroups per dispatch dimension that every adapter accepts.
const MAX_WORKGROUPS: u32 = 65_535;
const NO_CLAMP: f32 = f32::INFINITY;

/// A value during lowering: on the GPU, or a constant still on the host.
#[derive(Debug, Clone)]
enum Val {
    Gpu(GpuVal),
    Const(Arc<Tensor>),
}

#[derive(Debug, Clone)]
struct GpuVal {
    buf: BufId,
    shape: Vec<usize>,
    word: Word,
}

/// Lowers `model`, whose shapes must all be concrete.
pub fn lower(model: &TypedModel) -> Result<Program, InferError> {
    let mut l = Lowering {
        model,
        values: HashMap::new(),
        program: Program::default(),
        fused: HashSet::new(),
    };
    l.run()?;
    Ok(l.program)
}

struct Lowering<'a> {
    model: &'a TypedModel,
    values: HashMap<OutletId, Val>,
    program: Program,
    fused: HashSet<usize>,
}

fn unsupported(node: &TypedNode, why: impl std::fmt::Display) -> InferError {
    InferError::UnsupportedOp {
        op: format!("{} ({why})", node.op.name()),
        node: node.name.clone(),
    }
}

impl Lowering<'_> {
    fn run(&mut self) -> Result<(), InferError> {
        let model = self.model;
        let order = model
            .eval_order()
            .map_err(|e| InferError::Internal(format!("{e:#}")))?;
        for id in order {
            if self.fused.contains(&id) {
                continue;
            }
            let node = model.node(id);
            self.lower_node(node)?;
        }
        if let Some(step) = self.program.steps.iter().find(|s| {
            [s.grid.0, s.grid.1, s.grid.2]
                .iter()
                .any(|&g| g > MAX_WORKGROUPS)
        }) {
            return Err(InferError::UnsupportedOp {
                op: format!(
                    "{} over {MAX_WORKGROUPS} workgroups in one dimension",
                    step.kernel.label()
                ),
                node: step.node.clone(),
            });
        }
        let outlets = model
            .output_outlets()
            .map_err(|e| InferError::Internal(format!("{e:#}")))?
            .to_vec();
        for outlet in outlets {
            let fact = model
                .outlet_fact(outlet)
                .map_err(|e| InferError::Internal(format!("{e:#}")))?;
            let dtype =
                DType::from_tract(fact.datum_type).ok_or_else(|| InferError::UnsupportedOp {
                    op: format!("output of type {:?}", fact.datum_type),
                    node: model.node(outlet.node).name.clone(),
                })?;
            let node = model.node(outlet.node);
            let v = self.gpu_input(node, outlet)?;
            self.program.outputs.push(OutputSpec {
                buffer: v.buf,
                shape: v.shape,
                word: v.word,
                dtype,
            });
        }
        Ok(())
    }

    fn new_buffer(&mut self, kind: BufferKind, words: usize) -> BufId {
        self.program.buffers.push(BufferSpec {
            kind,
            words: words.max(1),
        });
        self.program.buffers.len() - 1
    }

    fn activation(&mut self, shape: &[usize], word: Word) -> GpuVal {
        let n = shape.iter().product::<usize>();
        GpuVal {
            buf: self.new_buffer(BufferKind::Activation, n),
            shape: shape.to_vec(),
            word,
        }
    }

    fn upload(&mut self, node: &TypedNode, t: &Tensor) -> Result<GpuVal, InferError> {
        let (words, word) = words_of(t).map_err(|why| unsupported(node, why))?;
        let n = words.len();
        Ok(GpuVal {
            buf: self.new_buffer(
                BufferKind::Weight {
                    words: Arc::new(words),
                },
                n,
            ),
            shape: t.shape().to_vec(),
            word,
        })
    }

    fn value(&self, outlet: OutletId) -> Result<Val, InferError> {
        self.values
            .get(&outlet)
            .cloned()
            .ok_or_else(|| InferError::Internal(format!("no value for {outlet:?}")))
    }

    /// The value of `outlet` on the GPU, uploading a constant if needed.
    fn gpu_input(&mut self, node: &TypedNode, outlet: OutletId) -> Result<GpuVal, InferError> {
        match self.value(outlet)? {
            Val::Gpu(v) => Ok(v),
            Val::Const(t) => {
                let v = self.upload(node, &t)?;
                self.values.insert(outlet, Val::Gpu(v.clone()));
                Ok(v)
            }
        }
    }

    fn out_shape(&self, node: &TypedNode, slot: usize) -> Result<Vec<usize>, InferError> {
        node.outputs[slot]
            .fact
            .shape
            .as_concrete()
            .map(<[usize]>::to_vec)
            .ok_or_else(|| unsupported(node, "dynamic shape"))
    }

    fn push(
        &mut self,
        node: &TypedNode,
        kernel: Kernel,
        params: Vec<u32>,
        buffers: Vec<BufId>,
        grid: (u32, u32, u32),
    ) {
        self.program.steps.push(Step {
            kernel,
            params,
            buffers,
            grid,
            node: node.name.clone(),
        });
    }

    fn set(&mut self, node: &TypedNode, slot: usize, v: GpuVal) {
        self.values
            .insert(OutletId::new(node.id, slot), Val::Gpu(v));
    }

    fn lower_node(&mut self, node: &TypedNode) -> Result<(), InferError> {
        if node.op_as::<TypedSource>().is_some() {
            return self.source(node);
        }
        if let Some(k) = node.op_as::<Const>() {
            self.values
                .insert(OutletId::new(node.id, 0), Val::Const(k.val().clone()));
            return Ok(());
        }
        if self.try_fold(node)? {
            return Ok(());
        }
        if let Some(op) = node.op_as::<AxisOp>() {
            return self.axis_op(node, op);
        }
        if let Some(op) = node.op_as::<TypedBinOp>() {
            return self.binary(node, op);
        }
        if let Some(op) = node.op_as::<ElementWiseOp>() {
            return self.elementwise(node, op);
        }
        if let Some(op) = node.op_as::<Cast>() {
            return self.cast(node, op);
        }
        if let Some(op) = node.op_as::<EinSum>() {
            return self.einsum(node, op);
        }
        if let Some(op) = node.op_as::<Conv>() {
            return self.conv(node, op);
        }
        if let Some(op) = node.op_as::<MaxPool>() {
            if op.with_index_outputs.is_some() {
                return Err(unsupported(node, "index outputs"));
            }
            return self.pool(node, &op.pool_spec, 0, false);
        }
        if let Some(op) = node.op_as::<SumPool>() {
            return self.pool(
                node,
                &op.pool_spec,
                if op.normalize { 1 } else { 2 },
                op.count_include_pad,
            );
        }
        if let Some(op) = node.op_as::<Reduce>() {
            return self.reduce(node, op);
        }
        if let Some(op) = node.op_as::<Softmax>() {
            return self.softmax(node, op);
        }
        if let Some(op) = node.op_as::<TypedConcat>() {
            return self.concat(node, op);
        }
        if let Some(op) = node.op_as::<Slice>() {
            return self.slice(node, op);
        }
        if node.op_as::<MultiBroadcastTo>().is_some() {
            return self.broadcast(node);
        }
        if let Some(op) = node.op_as::<Gather>() {
            return self.gather(node, op);
        }
        if let Some(op) = node.op_as::<Pad>() {
            return self.pad(node, op);
        }
        if let Some(op) = node.op_as::<Deconv>() {
            return self.deconv(node, op);
        }
        if let Some(op) = node.op_as::<RmsNorm>() {
            return self.rms_norm(node, op);
        }
        if node.op_as::<Iff>().is_some() {
            return self.select(node);
        }
        if let Some(op) = node.op_as::<Tile>() {
            return self.tile(node, op);
        }
        if let Some(op) = node.op_as::<Downsample>() {
            return self.downsample(node, op);
        }
        if node.op.name() == "Identity" {
            let v = self.value(node.inputs[0])?;
            self.values.insert(OutletId::new(node.id, 0), v);
            return Ok(());
        }
        Err(InferError::UnsupportedOp {
            op: node.op.name().to_string(),
            node: node.name.clone(),
        })
    }

    fn source(&mut self, node: &TypedNode) -> Result<(), InferError> {
        let fact = &node.outputs[0].fact;
        let shape = self.out_shape(node, 0)?;
        let dtype =
            DType::from_tract(fact.datum_type).ok_or_else(|| unsupported(node, "input dtype"))?;
        let word = Word::for_dtype(dtype)
            .ok_or_else(|| unsupported(node, format!("inputs of type {dtype}")))?;
        let index = self
            .model
            .input_outlets()
            .map_err(|e| InferError::Internal(format!("{e:#}")))?
            .iter()
            .position(|o| o.node == node.id)
            .ok_or_else(|| unsupported(node, "a source that is not a model input"))?;
        let v = self.activation(&shape, word);
        self.program.buffers[v.buf].kind = BufferKind::Input { index };
        self.program.inputs.push(InputSpec {
            index,
            buffer: v.buf,
            shape,
            dtype,
        });
        self.set(node, 0, v);
        Ok(())
    }

    /// Evaluates a node whose inputs are all constants on the CPU.
    fn try_fold(&mut self, node: &TypedNode) -> Result<bool, InferError> {
        let mut inputs = TVec::new();
        for &i in &node.inputs {
            match self.value(i)? {
                Val::Const(t) => inputs.push(t.clone().into_tvalue()),
                Val::Gpu(_) => return Ok(false),
            }
        }
        match node.op.eval_out_of_plan(inputs) {
            Ok(Some(outputs)) => {
                for (slot, v) in outputs.into_iter().enumerate() {
                    self.values.insert(
                        OutletId::new(node.id, slot),
                        Val::Const(v.into_arc_tensor()),
                    );
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
