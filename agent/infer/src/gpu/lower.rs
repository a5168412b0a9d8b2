//! Lowering tract's typed, decluttered graph (with concrete shapes) to a [`Program`].
//!
//! Each tract op maps to one or a few dispatches of our kernels. Subgraphs of constants are
//! folded on the CPU with tract's own evaluation; reshapes are free (views of the same buffer);
//! Conv and MatMul absorb the per-channel affine ops (folded BatchNormalization, bias) and the
//! activation that follow them.

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
use crate::gpu::kernels::{Kernel, gemm_tile, grid_1d};
use crate::gpu::program::{
    BufId, BufferKind, BufferSpec, InputSpec, OutputSpec, Program, Step, Word,
};
use crate::tensor::DType;

const MAX_RANK: usize = 8;
/// Workgroups per dispatch dimension that every adapter accepts.
const MAX_WORKGROUPS: u32 = 65_535;
const NO_CLAMP: f32 = f32::INFINITY;

/// How a copy maps each output coordinate to a source coordinate, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceMap<'a> {
    /// As is (through the strides).
    Direct,
    /// Modulo the source extent.
    Tile,
    /// Shifted by the padding before it, reflected into the source.
    Reflect(&'a [usize]),
    /// Shifted by the padding before it, clamped into the source.
    Edge(&'a [usize]),
}

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

/// Bias, clamp and activation applied as a GEMM or convolution writes its result.
#[derive(Debug, Clone)]
struct Epilogue {
    bias: Option<Vec<f32>>,
    scale: Option<Vec<f32>>,
    lo: f32,
    hi: f32,
    act: u32,
    act_a: f32,
    act_b: f32,
}

impl Epilogue {
    /// Whether a clamp was fused (an unclamped epilogue must keep NaN and infinities).
    fn clamps(&self) -> bool {
        self.lo != -NO_CLAMP || self.hi != NO_CLAMP
    }
}

impl Default for Epilogue {
    fn default() -> Self {
        Epilogue {
            bias: None,
            scale: None,
            lo: -NO_CLAMP,
            hi: NO_CLAMP,
            act: 0,
            act_a: 0.0,
            act_b: 0.0,
        }
    }
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

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// Strides of `shape` broadcast (aligned right) to a result of rank `rank`: 0 on broadcast axes.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let strides = contiguous_strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 && out[i] != 1 {
                0
            } else {
                strides[i - lead]
            }
        })
        .collect()
}

fn u(n: usize) -> u32 {
    n as u32
}

fn fbits(f: f32) -> u32 {
    f.to_bits()
}

/// `values` padded to eight entries with `fill`.
fn pad8(values: &[usize], fill: usize) -> Vec<u32> {
    let mut out: Vec<u32> = values.iter().map(|&v| u(v)).collect();
    out.resize(MAX_RANK, u(fill));
    out
}

fn words_of(t: &Tensor) -> Result<(Vec<u32>, Word), String> {
    let dt = t.datum_type();
    let cast = |to: DatumType| t.cast_to_dt(to).map_err(|e| e.to_string());
    match dt {
        DatumType::F32 | DatumType::F16 => {
            let t = cast(DatumType::F32)?;
            let v = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .map_err(|e| e.to_string())?;
            Ok((v.iter().map(|x| x.to_bits()).collect(), Word::F32))
        }
        DatumType::Bool => {
            let v = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<bool>())
                .map_err(|e| e.to_string())?;
            Ok((v.iter().map(|&b| u32::from(b)).collect(), Word::Bool))
        }
        DatumType::I64
        | DatumType::I32
        | DatumType::I16
        | DatumType::I8
        | DatumType::U8
        | DatumType::U16 => {
            let t = cast(DatumType::I64)?;
            let v = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<i64>())
                .map_err(|e| e.to_string())?;
            v.iter()
                .map(|&x| i32::try_from(x).map(|x| x as u32))
                .collect::<Result<Vec<_>, _>>()
                .map(|w| (w, Word::I32))
                .map_err(|_| "an integer constant does not fit 32 bits".to_owned())
        }
        other => Err(format!("constants of type {other:?}")),
    }
}

/// Spatial geometry of a convolution or pool, as (depth, height, width) with leading 1s for 1-D
/// and 2-D: input, output, kernel, strides, padding before, dilations.
struct Geometry {
    input: [usize; 3],
    output: [usize; 3],
    kernel: [usize; 3],
    strides: [usize; 3],
    pad: [usize; 3],
    dilations: [usize; 3],
}

impl Geometry {
    /// A convolution's or pool's.
    fn new(spec: &PoolSpec, in_sp: &[usize], out_sp: &[usize]) -> Option<Geometry> {
        let pad = spec
            .computed_padding(in_sp)
            .iter()
            .map(|p| p.pad_before)
            .collect();
        Self::with_padding(spec, in_sp, out_sp, pad)
    }

    /// A transposed convolution's.
    fn for_deconv(
        spec: &PoolSpec,
        in_sp: &[usize],
        out_sp: &[usize],
        adjustments: &[usize],
    ) -> Option<Geometry> {
        let pad = spec
            .padding
            .compute_for_deconv(
                in_sp,
                &spec.kernel_shape,
                &spec.dilations(),
                &spec.strides(),
                adjustments,
            )
            .ok()?
            .iter()
            .map(|p| p.pad_before)
            .collect();
        Self::with_padding(spec, in_sp, out_sp, pad)
    }

    fn with_padding(
        spec: &PoolSpec,
        in_sp: &[usize],
        out_sp: &[usize],
        pad: Vec<usize>,
    ) -> Option<Geometry> {
        let rank = spec.kernel_shape.len();
        if !(1..=3).contains(&rank)
            || in_sp.len() != rank
            || out_sp.len() != rank
            || pad.len() != rank
        {
            return None;
        }
        let (dil, strides) = (spec.dilations(), spec.strides());
        let lift = |f: &dyn Fn(usize) -> usize, fill: usize| {
            let mut v = [fill; 3];
            for (i, slot) in v.iter_mut().skip(3 - rank).enumerate() {
                *slot = f(i);
            }
            v
        };
        Some(Geometry {
            input: lift(&|i| in_sp[i], 1),
            output: lift(&|i| out_sp[i], 1),
            kernel: lift(&|i| spec.kernel_shape[i], 1),
            strides: lift(&|i| strides[i], 1),
            pad: lift(&|i| pad[i], 0),
            dilations: lift(&|i| dil[i], 1),
        })
    }

    /// [H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW]
    fn plane(&self) -> [u32; 12] {
        [
            self.input[1],
            self.input[2],
            self.output[1],
            self.output[2],
            self.kernel[1],
            self.kernel[2],
            self.strides[1],
            self.strides[2],
            self.pad[1],
            self.pad[2],
            self.dilations[1],
            self.dilations[2],
        ]
        .map(u)
    }

    /// [D, OD, KD, SD, PD, DD]
    fn depth(&self) -> [u32; 6] {
        [
            self.input[0],
            self.output[0],
            self.kernel[0],
            self.strides[0],
            self.pad[0],
            self.dilations[0],
        ]
        .map(u)
    }

    fn output_points(&self) -> usize {
        self.output.iter().product()
    }

    fn kernel_points(&self) -> usize {
        self.kernel.iter().product()
    }
}

/// A float vector of `len` from a constant broadcast along `axis` of a result of rank `rank`, if
/// the constant varies along that axis only.
fn per_channel(t: &Tensor, rank: usize, axis: usize, len: usize) -> Option<Vec<f32>> {
    if !is_float(t.datum_type()) || t.rank() > rank {
        return None;
    }
    let t = t.cast_to::<f32>().ok()?;
    let lead = rank - t.rank();
    for (i, &d) in t.shape().iter().enumerate() {
        if i + lead != axis && d != 1 {
            return None;
        }
    }
    let values = t
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>())
        .ok()?;
    match values.len() {
        1 => Some(vec![values[0]; len]),
        n if n == len => Some(values.to_vec()),
        _ => None,
    }
}

/// Float types the GPU computes (in f32).
fn is_float(dt: DatumType) -> bool {
    matches!(dt, DatumType::F32 | DatumType::F16)
}

fn scalar_f32(t: &Tensor) -> Option<f32> {
    if t.len() != 1 {
        return None;
    }
    t.cast_to_scalar::<f32>().ok()
}

/// Unary kernel code for an element-wise op of tract, with its two parameters.
fn unary_code(op: &ElementWiseOp) -> Option<(u32, f32, f32)> {
    let name = op.0.name();
    let code = match name.as_str() {
        "Sigmoid" => 2,
        "Tanh" => 3,
        "Erf" => 4,
        "GeluExact" | "Gelu" => 5,
        "GeluApproximate" => 6,
        "HardSwish" => 8,
        "Exp" => 9,
        "Ln" | "Log" => 10,
        "Sqrt" => 11,
        "Rsqrt" => 12,
        "Recip" | "Reciprocal" => 13,
        "Abs" => 14,
        "Neg" => 15,
        "Floor" => 16,
        "Ceil" => 17,
        "Round" | "RoundHalfToEven" => 18,
        "Sin" => 19,
        "Cos" => 20,
        "Square" => 21,
        "Silu" => 22,
        "Sign" => 26,
        "Tan" => 30,
        "Asin" => 31,
        "Acos" => 32,
        "Atan" => 33,
        "Sinh" => 34,
        "Cosh" => 35,
        _ => return parametric_unary(op),
    };
    Some((code, 0.0, 0.0))
}

/// The element-wise ops of tract's core with parameters (the others with parameters in ONNX,
/// such as HardSigmoid or Elu, reach us already expanded into primitive ops).
fn parametric_unary(op: &ElementWiseOp) -> Option<(u32, f32, f32)> {
    if let Some(leaky) = op.0.downcast_ref::<LeakyRelu>() {
        return Some((23, leaky.alpha, 0.0));
    }
    if let Some(pow) = op.0.downcast_ref::<PowConst>() {
        return Some((37, pow.exponent, 0.0));
    }
    None
}

fn binary_code(name: &str, word: Word) -> Option<(u32, bool)> {
    // (code, result is boolean)
    let float = match name {
        "Add" => (0, false),
        "Sub" => (1, false),
        "Mul" => (2, false),
        "Div" => (3, false),
        "Pow" => (4, false),
        "Max" => (5, false),
        "Min" => (6, false),
        "LT" => (7, true),
        "GT" => (8, true),
        "Eq" => (9, true),
        "LTE" => (10, true),
        "GTE" => (11, true),
        "Rem" => (12, false),
        "NE" => (13, true),
        "And" => (40, false),
        "Or" => (41, false),
        "Xor" => (42, false),
        _ => return None,
    };
    match word {
        Word::F32 if float.0 < 40 => Some(float),
        Word::I32 | Word::Bool if float.0 == 4 => None,
        Word::I32 | Word::Bool if float.0 < 40 => Some((float.0 + 20, float.1)),
        Word::Bool if float.0 >= 40 => Some(float),
        _ => None,
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

    fn axis_op(&mut self, node: &TypedNode, op: &AxisOp) -> Result<(), InferError> {
        let input = self.gpu_input(node, node.inputs[0])?;
        let shape = self.out_shape(node, 0)?;
        match op {
            AxisOp::Move(from, to) => {
                let rank = input.shape.len();
                let mut perm: Vec<usize> = (0..rank).collect();
                let a = perm.remove(*from);
                perm.insert(*to, a);
                let in_strides = contiguous_strides(&input.shape);
                let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
                let out = self.activation(&shape, input.word);
                self.copy(
                    node,
                    &input,
                    &out,
                    &shape,
                    &strides,
                    0,
                    &contiguous_strides(&shape),
                    0,
                    SourceMap::Direct,
                )?;
                self.set(node, 0, out);
            }
            _ => {
                // Adding, removing or reshaping axes keeps the row-major order: a view.
                self.set(
                    node,
                    0,
                    GpuVal {
                        buf: input.buf,
                        shape,
                        word: input.word,
                    },
                );
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &mut self,
        node: &TypedNode,
        src: &GpuVal,
        dst: &GpuVal,
        shape: &[usize],
        src_strides: &[usize],
        src_offset: usize,
        dst_strides: &[usize],
        dst_offset: usize,
        map: SourceMap,
    ) -> Result<(), InferError> {
        if shape.len() > MAX_RANK || src.shape.len() > MAX_RANK {
            return Err(unsupported(node, "rank over 8"));
        }
        let n: usize = shape.iter().product();
        if n == 0 || (map != SourceMap::Direct && src.shape.contains(&0)) {
            return Ok(());
        }
        let (code, before) = match map {
            SourceMap::Direct => (0, &[][..]),
            SourceMap::Tile => (1, &[][..]),
            SourceMap::Reflect(before) => (2, before),
            SourceMap::Edge(before) => (3, before),
        };
        let mut params = vec![u(n), u(shape.len()), u(src_offset), u(dst_offset)];
        params.extend(pad8(shape, 1));
        params.extend(pad8(src_strides, 0));
        params.extend(pad8(dst_strides, 0));
        params.extend([code, 0, 0, 0]);
        params.extend(pad8(&src.shape, 1));
        params.extend(pad8(before, 0));
        self.push(
            node,
            Kernel::Copy,
            params,
            vec![src.buf, dst.buf],
            grid_1d(n),
        );
        Ok(())
    }

    fn binary(&mut self, node: &TypedNode, op: &TypedBinOp) -> Result<(), InferError> {
        let mut a = self.gpu_input(node, node.inputs[0])?;
        let mut b = self.gpu_input(node, node.inputs[1])?;
        let mut name = op.0.name().to_string();
        if name == "SubF" {
            // SubF(a, b) = b - a
            std::mem::swap(&mut a, &mut b);
            name = "Sub".to_owned();
        }
        if a.word != b.word {
            return Err(unsupported(node, "mixed operand types"));
        }
        let (code, boolean) = binary_code(&name, a.word)
            .ok_or_else(|| unsupported(node, format!("{name} on {:?}", a.word)))?;
        let shape = self.out_shape(node, 0)?;
        if shape.len() > MAX_RANK || a.shape.len() > shape.len() || b.shape.len() > shape.len() {
            return Err(unsupported(node, "rank"));
        }
        let out = self.activation(&shape, if boolean { Word::Bool } else { a.word });
        let n: usize = shape.iter().product();
        let mut params = vec![u(n), code, u(shape.len()), 0];
        params.extend(pad8(&shape, 1));
        params.extend(pad8(&broadcast_strides(&a.shape, &shape), 0));
        params.extend(pad8(&broadcast_strides(&b.shape, &shape), 0));
        params.extend([0, 0]);
        if n > 0 {
            self.push(
                node,
                Kernel::Binary,
                params,
                vec![a.buf, b.buf, out.buf],
                grid_1d(n),
            );
        }
        self.set(node, 0, out);
        Ok(())
    }

    fn unary_step(
        &mut self,
        node: &TypedNode,
        input: &GpuVal,
        code: u32,
        a: f32,
        b: f32,
    ) -> GpuVal {
        let out = self.activation(&input.shape, Word::F32);
        let n: usize = input.shape.iter().product();
        if n > 0 {
            self.push(
                node,
                Kernel::Elementwise,
                vec![u(n), code, fbits(a), fbits(b)],
                vec![input.buf, out.buf],
                grid_1d(n),
            );
        }
        out
    }

    fn elementwise(&mut self, node: &TypedNode, op: &ElementWiseOp) -> Result<(), InferError> {
        let input = self.gpu_input(node, node.inputs[0])?;
        let (code, a, b) = unary_code(op).ok_or_else(|| InferError::UnsupportedOp {
            op: op.0.name().to_string(),
            node: node.name.clone(),
        })?;
        if input.word != Word::F32 || !is_float(node.outputs[0].fact.datum_type) {
            return Err(unsupported(node, "non-float operand"));
        }
        let out = self.unary_step(node, &input, code, a, b);
        self.set(node, 0, out);
        Ok(())
    }

    fn cast(&mut self, node: &TypedNode, op: &Cast) -> Result<(), InferError> {
        let input = self.gpu_input(node, node.inputs[0])?;
        let to_dtype =
            DType::from_tract(op.to).ok_or_else(|| unsupported(node, format!("to {:?}", op.to)))?;
        let to =
            Word::for_dtype(to_dtype).ok_or_else(|| unsupported(node, format!("to {to_dtype}")))?;
        let narrowing = match to_dtype {
            DType::U8 => Some(6),
            DType::I8 => Some(7),
            DType::U16 => Some(8),
            DType::I16 => Some(9),
            DType::F16 => Some(10),
            _ => None,
        };
        let mode = match (input.word, to) {
            (a, b) if a == b && narrowing.is_some() => narrowing.unwrap_or_default(),
            (a, b) if a == b => {
                self.set(node, 0, input);
                return Ok(());
            }
            (Word::F32, Word::I32) => 0,
            (Word::I32, Word::F32) => 1,
            (Word::F32, Word::Bool) => 2,
            (Word::I32, Word::Bool) => 3,
            (Word::Bool, Word::F32) => 4,
            _ => 5,
        };
        let out = self.activation(&input.shape, to);
        let n: usize = input.shape.iter().product();
        if n > 0 {
            self.push(
                node,
                Kernel::Cast,
                vec![u(n), mode],
                vec![input.buf, out.buf],
                grid_1d(n),
            );
        }
        self.set(node, 0, out);
        Ok(())
    }

    /// The chain of per-channel affine ops and activations after `node` that can run in its
    /// epilogue. `channel_axis` is the output axis of the channels; `allow_scale` says whether a
    /// per-channel multiplication can be folded into the weights.
    fn fuse_epilogue(
        &mut self,
        node: &TypedNode,
        channel_axis: Option<usize>,
        channels: usize,
        allow_scale: bool,
    ) -> (Epilogue, usize) {
        let model = self.model;
        let mut ep = Epilogue::default();
        let mut current = node.id;
        let rank = node.outputs[0].fact.rank();
        // stage 0: affine, 1: clamps, 2: done
        let mut stage = 0;
        loop {
            let outputs = &model.node(current).outputs;
            if outputs.len() != 1 || outputs[0].successors.len() != 1 {
                break;
            }
            if model
                .output_outlets()
                .map(|o| o.contains(&OutletId::new(current, 0)))
                .unwrap_or(true)
            {
                break;
            }
            let succ = model.node(outputs[0].successors[0].node);
            if succ.outputs.len() != 1
                || succ.outputs[0].fact.rank() != rank
                || succ.outputs[0].fact.datum_type != DatumType::F32
            {
                break;
            }
            let other_const = |l: &Self| -> Option<Arc<Tensor>> {
                if succ.inputs.len() != 2 {
                    return None;
                }
                let other = if succ.inputs[0].node == current {
                    succ.inputs[1]
                } else {
                    succ.inputs[0]
                };
                match l.values.get(&other) {
                    Some(Val::Const(t)) => Some(t.clone()),
                    _ => None,
                }
            };
            let mut absorbed = false;
            if let Some(bin) = succ.op_as::<TypedBinOp>() {
                let name = bin.0.name();
                let Some(c) = other_const(self) else { break };
                let divisor_side = succ.inputs[1].node == current;
                match name {
                    "Add" | "Sub" if stage == 0 && !(name == "Sub" && divisor_side) => {
                        if let Some(axis) = channel_axis
                            && let Some(mut v) = per_channel(&c, rank, axis, channels)
                        {
                            if name == "Sub" {
                                v.iter_mut().for_each(|x| *x = -*x);
                            }
                            let bias = ep.bias.get_or_insert_with(|| vec![0.0; channels]);
                            bias.iter_mut().zip(&v).for_each(|(b, x)| *b += x);
                            absorbed = true;
                        }
                    }
                    "Mul" if stage == 0 && allow_scale => {
                        if let Some(axis) = channel_axis
                            && let Some(v) = per_channel(&c, rank, axis, channels)
                        {
                            let scale = ep.scale.get_or_insert_with(|| vec![1.0; channels]);
                            scale.iter_mut().zip(&v).for_each(|(s, x)| *s *= x);
                            if let Some(bias) = ep.bias.as_mut() {
                                bias.iter_mut().zip(&v).for_each(|(b, x)| *b *= x);
                            }
                            absorbed = true;
                        }
                    }
                    "Max" if stage <= 1 => {
                        if let Some(s) = scalar_f32(&c) {
                            ep.lo = ep.lo.max(s);
                            ep.hi = ep.hi.max(s);
                            stage = 1;
                            absorbed = true;
                        }
                    }
                    "Min" if stage <= 1 => {
                        if let Some(s) = scalar_f32(&c) {
                            ep.hi = ep.hi.min(s);
                            ep.lo = ep.lo.min(s);
                            stage = 1;
                            absorbed = true;
                        }
                    }
                    _ => {}
                }
            } else if let Some(ew) = succ.op_as::<ElementWiseOp>()
                && stage <= 1
                && (ep.lo == -NO_CLAMP && ep.hi == NO_CLAMP)
                && let Some((code, a, b)) = unary_code(ew)
            {
                ep.act = code;
                ep.act_a = a;
                ep.act_b = b;
                stage = 2;
                absorbed = true;
            }
            if !absorbed {
                break;
            }
            self.fused.insert(succ.id);
            current = succ.id;
            if stage == 2 {
                break;
            }
        }
        (ep, current)
    }

    fn epilogue_params(ep: &Epilogue) -> [u32; 5] {
        [
            fbits(ep.lo),
            fbits(ep.hi),
            ep.act,
            fbits(ep.act_a),
            fbits(ep.act_b),
        ]
    }

    fn einsum(&mut self, node: &TypedNode, op: &EinSum) -> Result<(), InferError> {
        if op.q_params.is_some() || node.inputs.len() != 2 || !is_float(op.operating_dt) {
            return Err(unsupported(node, "only float matmuls"));
        }
        let a = self.gpu_input(node, node.inputs[0])?;
        let b = self.gpu_input(node, node.inputs[1])?;
        let c_shape = self.out_shape(node, 0)?;
        let (sa, sb, sc) = (
            contiguous_strides(&a.shape),
            contiguous_strides(&b.shape),
            contiguous_strides(&c_shape),
        );
        let one = |v: &[usize]| -> Result<Option<usize>, InferError> {
            match v.len() {
                0 => Ok(None),
                1 => Ok(Some(v[0])),
                _ => Err(unsupported(node, "repeated axis")),
            }
        };
        let mut k_axis: Option<(usize, usize)> = None;
        let mut m_axis: Option<(Option<usize>, usize)> = None; // (pos in a, pos in c)
        let mut n_axis: Option<(Option<usize>, usize)> = None;
        let mut others: Vec<(Option<usize>, Option<usize>, usize)> = vec![];
        let mut all: Vec<(Option<usize>, Option<usize>, Option<usize>)> = vec![];
        for axis in op.axes.iter_all_axes() {
            let pa = one(&axis.inputs[0])?;
            let pb = one(&axis.inputs[1])?;
            let pc = one(&axis.outputs[0])?;
            all.push((pa, pb, pc));
        }
        // the rightmost output axis that only A has is m; the rightmost that only B has is n
        all.sort_by_key(|&(_, _, pc)| pc);
        for &(pa, pb, pc) in &all {
            match (pa, pb, pc) {
                (Some(pa), Some(pb), None) => {
                    if a.shape[pa] != b.shape[pb] && a.shape[pa] != 1 && b.shape[pb] != 1 {
                        return Err(unsupported(node, "summed axes differ"));
                    }
                    if k_axis.is_some() {
                        if a.shape[pa] == 1 && b.shape[pb] == 1 {
                            continue;
                        }
                        return Err(unsupported(node, "several summed axes"));
                    }
                    k_axis = Some((pa, pb));
                }
                (_, _, None) => {
                    if pa.map(|p| a.shape[p]).unwrap_or(1) == 1
                        && pb.map(|p| b.shape[p]).unwrap_or(1) == 1
                    {
                        continue;
                    }
                    return Err(unsupported(node, "axis summed in one operand"));
                }
                (Some(pa), None, Some(pc)) => {
                    if let Some((ma, mc)) = m_axis.replace((Some(pa), pc)) {
                        others.push((ma, None, mc));
                    }
                }
                (None, Some(pb), Some(pc)) => {
                    if let Some((nb, nc)) = n_axis.replace((Some(pb), pc)) {
                        others.push((None, nb, nc));
                    }
                }
                (pa, pb, Some(pc)) => others.push((pa, pb, pc)),
            }
        }
        if others.len() > 4 {
            return Err(unsupported(node, "more than four batch axes"));
        }
        let stride = |shape: &[usize], strides: &[usize], p: Option<usize>| -> usize {
            match p {
                Some(p) if shape[p] != 1 => strides[p],
                _ => 0,
            }
        };
        let m = m_axis.map_or(1, |(_, pc)| c_shape[pc]);
        let n = n_axis.map_or(1, |(_, pc)| c_shape[pc]);
        let k = k_axis.map_or(1, |(pa, pb)| a.shape[pa].max(b.shape[pb]).max(1));
        let mut batch_shape = [1usize; 4];
        let mut a_batch = [0usize; 4];
        let mut b_batch = [0usize; 4];
        let mut c_batch = [0usize; 4];
        let lead = 4 - others.len();
        for (i, &(pa, pb, pc)) in others.iter().enumerate() {
            batch_shape[lead + i] = c_shape[pc];
            a_batch[lead + i] = stride(&a.shape, &sa, pa);
            b_batch[lead + i] = stride(&b.shape, &sb, pb);
            c_batch[lead + i] = sc[pc];
        }
        let batches: usize = batch_shape.iter().product();
        if batches > 65_535 {
            return Err(unsupported(node, "batch over 65,535"));
        }
        let (channel_axis, channels, bias_on_m) = match (n_axis, m_axis) {
            (Some((_, pc)), _) => (Some(pc), n, 0),
            (None, Some((_, pc))) => (Some(pc), m, 1),
            _ => (None, 1, 0),
        };
        let (ep, last) = self.fuse_epilogue(node, channel_axis, channels, false);
        let bias = match &ep.bias {
            Some(v) => Some(self.upload_f32(node, v)?),
            None => None,
        };
        let out = self.activation(&c_shape, Word::F32);
        let tile = gemm_tile(m, n);
        let mut params = vec![u(m), u(n), u(k), u32::from(bias.is_some()), bias_on_m];
        params.extend(Self::epilogue_params(&ep));
        params.extend([0, u32::from(ep.clamps())]);
        params.resize(16, 0);
        params.extend(batch_shape.iter().map(|&v| u(v)));
        params.extend(a_batch.iter().map(|&v| u(v)));
        params.extend(b_batch.iter().map(|&v| u(v)));
        params.extend(c_batch.iter().map(|&v| u(v)));
        params.extend([
            u(m_axis
                .and_then(|(pa, _)| pa)
                .map_or(0, |p| stride(&a.shape, &sa, Some(p)))),
            u(k_axis.map_or(0, |(pa, _)| stride(&a.shape, &sa, Some(pa)))),
            u(k_axis.map_or(0, |(_, pb)| stride(&b.shape, &sb, Some(pb)))),
            u(n_axis
                .and_then(|(pb, _)| pb)
                .map_or(0, |p| stride(&b.shape, &sb, Some(p)))),
            u(m_axis.map_or(0, |(_, pc)| sc[pc])),
            u(n_axis.map_or(0, |(_, pc)| sc[pc])),
            0,
            0,
        ]);
        let bias_buf = bias.as_ref().map_or(out.buf, |b| b.buf);
        let bias_buf = if bias.is_some() { bias_buf } else { a.buf };
        let span = 16 * tile as usize;
        let grid = (u(n.div_ceil(span)), u(m.div_ceil(span)), u(batches));
        if m * n * batches > 0 {
            self.push(
                node,
                Kernel::Matmul { tile },
                params,
                vec![a.buf, b.buf, bias_buf, out.buf],
                grid,
            );
        }
        let last_node = self.model.node(last);
        self.set(last_node, 0, out);
        Ok(())
    }

    /// A convolution's constant kernel (as f32, `expected` values) and bias (one per output
    /// channel, a scalar bias broadcast).
    fn kernel_and_bias(
        &self,
        node: &TypedNode,
        expected: usize,
        cout: usize,
    ) -> Result<(Vec<f32>, Vec<f32>), InferError> {
        let constant = |slot: usize, what: &str| -> Result<Vec<f32>, InferError> {
            let Val::Const(t) = self.value(node.inputs[slot])? else {
                return Err(unsupported(node, format!("{what} is not a constant")));
            };
            let t = t.cast_to::<f32>().map_err(|e| unsupported(node, e))?;
            let values = t
                .try_as_plain_ram()
                .and_then(|v| v.as_slice::<f32>())
                .map_err(|e| unsupported(node, e))?;
            Ok(values.to_vec())
        };
        let kernel = constant(1, "kernel")?;
        if kernel.len() != expected {
            return Err(unsupported(node, "kernel shape"));
        }
        let bias = constant(2, "bias")?;
        let bias = match bias.len() {
            1 => vec![bias[0]; cout],
            n if n == cout => bias,
            _ => return Err(unsupported(node, "bias shape")),
        };
        Ok((kernel, bias))
    }

    /// Uploads f32 values as a vector.
    fn upload_f32(&mut self, node: &TypedNode, values: &[f32]) -> Result<GpuVal, InferError> {
        let t = Tensor::from_shape(&[values.len()], values).map_err(|e| unsupported(node, e))?;
        self.upload(node, &t)
    }

    fn conv(&mut self, node: &TypedNode, op: &Conv) -> Result<(), InferError> {
        if op.q_params.is_some() {
            return Err(unsupported(node, "quantized"));
        }
        if op.kernel_fmt != KernelFormat::OIHW {
            return Err(unsupported(node, "kernel format"));
        }
        let spec = &op.pool_spec;
        let batch_axis = match spec.data_format {
            DataFormat::NCHW => true,
            DataFormat::CHW => false,
            _ => return Err(unsupported(node, "channels-last layout")),
        };
        let x = self.gpu_input(node, node.inputs[0])?;
        if x.word != Word::F32 {
            return Err(unsupported(node, "non-float input"));
        }
        let y_shape = self.out_shape(node, 0)?;
        let in_shape = &x.shape;
        let off = usize::from(batch_axis);
        let nb = if batch_axis { in_shape[0] } else { 1 };
        let cin = in_shape[off];
        let cout = y_shape[off];
        let geo = Geometry::new(spec, &in_shape[off + 1..], &y_shape[off + 1..])
            .ok_or_else(|| unsupported(node, "convolutions of 1 to 3 spatial axes"))?;
        let groups = op.group.max(1);
        let cin_g = cin / groups;
        let cout_g = cout / groups;
        let kdim = cin_g * geo.kernel_points();
        let (mut weights, mut base_bias) = self.kernel_and_bias(node, cout * kdim, cout)?;
        let (ep, last) = self.fuse_epilogue(node, Some(off), cout, true);
        if let Some(scale) = &ep.scale {
            for (co, s) in scale.iter().enumerate() {
                weights[co * kdim..(co + 1) * kdim]
                    .iter_mut()
                    .for_each(|w| *w *= s);
                base_bias[co] *= s;
            }
        }
        if let Some(extra) = &ep.bias {
            base_bias.iter_mut().zip(extra).for_each(|(b, e)| *b += e);
        }
        let wbuf = self.upload_f32(node, &weights)?;
        let b = self.upload_f32(node, &base_bias)?;
        let y = self.activation(&y_shape, Word::F32);
        let ep_params = Self::epilogue_params(&ep);
        let mut geometry: Vec<u32> = vec![u(cin)];
        geometry.extend(geo.plane());
        geometry.extend([cin_g, cout_g, cout].map(u));
        geometry.extend(geo.depth());
        let n_out = nb * cout * geo.output_points();
        if n_out > 0 {
            if kdim <= 32 && groups > 1 {
                let mut params = vec![u(n_out), 1];
                params.extend(ep_params);
                params.push(u32::from(ep.clamps()));
                params.extend(geometry.iter().copied());
                self.push(
                    node,
                    Kernel::ConvDirect,
                    params,
                    vec![x.buf, wbuf.buf, b.buf, y.buf],
                    grid_1d(n_out),
                );
            } else {
                let gemm_n = nb * geo.output_points();
                let tile = gemm_tile(cout_g, gemm_n);
                let mut params = vec![u(cout_g), u(gemm_n), u(kdim), 1, 1];
                params.extend(ep_params);
                // the bias of group g starts at g · Cout_g
                params.extend([u(cout_g), u32::from(ep.clamps())]);
                params.resize(16, 0);
                params.extend(geometry.iter().copied());
                let span = 16 * tile as usize;
                let grid = (
                    u(gemm_n.div_ceil(span)),
                    u(cout_g.div_ceil(span)),
                    u(groups),
                );
                self.push(
                    node,
                    Kernel::ConvGemm { tile },
                    params,
                    vec![x.buf, wbuf.buf, b.buf, y.buf],
                    grid,
                );
            }
        }
        let last_node = self.model.node(last);
        self.set(last_node, 0, y);
        Ok(())
    }

    fn pool(
        &mut self,
        node: &TypedNode,
        spec: &PoolSpec,
        kind: u32,
        include_pad: bool,
    ) -> Result<(), InferError> {
        let batch_axis = match spec.data_format {
            DataFormat::NCHW => true,
            DataFormat::CHW => false,
            _ => return Err(unsupported(node, "channels-last layout")),
        };
        let x = self.gpu_input(node, node.inputs[0])?;
        if x.word != Word::F32 {
            return Err(unsupported(node, "non-float input"));
        }
        let y_shape = self.out_shape(node, 0)?;
        let off = usize::from(batch_axis);
        let geo = Geometry::new(spec, &x.shape[off + 1..], &y_shape[off + 1..])
            .ok_or_else(|| unsupported(node, "pools of 1 to 3 spatial axes"))?;
        let y = self.activation(&y_shape, Word::F32);
        let n: usize = y_shape.iter().product();
        let mut params = vec![u(n), kind, u32::from(include_pad), 0];
        params.extend(geo.plane());
        params.extend(geo.depth());
        if n > 0 {
            self.push(node, Kernel::Pool, params, vec![x.buf, y.buf], grid_1d(n));
        }
        self.set(node, 0, y);
        Ok(())
    }

    fn reduce(&mut self, node: &TypedNode, op: &Reduce) -> Result<(), InferError> {
        let code = match op.reducer {
            Reducer::Sum => 0,
            Reducer::Max => 2,
            Reducer::Min => 3,
            Reducer::Prod => 4,
            Reducer::MeanOfSquares => 5,
            ref other => return Err(unsupported(node, format!("{other:?}"))),
        };
        let x = self.gpu_input(node, node.inputs[0])?;
        if x.word != Word::F32 || x.shape.len() > MAX_RANK {
            return Err(unsupported(node, "non-float or rank over 8"));
        }
        let y_shape = self.out_shape(node, 0)?;
        let strides = contiguous_strides(&x.shape);
        let red_shape: Vec<usize> = op.axes.iter().map(|&a| x.shape[a]).collect();
        let red_strides: Vec<usize> = op.axes.iter().map(|&a| strides[a]).collect();
        let count: usize = red_shape.iter().product();
        let n: usize = y_shape.iter().product();
        let y = self.activation(&y_shape, Word::F32);
        let mut params = vec![
            u(n),
            code,
            u(y_shape.len()),
            u(red_shape.len()),
            u(count),
            0,
            0,
            0,
        ];
        params.extend(pad8(&y_shape, 1));
        params.extend(pad8(&strides, 0));
        params.extend(pad8(&red_shape, 1));
        params.extend(pad8(&red_strides, 0));
        if n > 0 {
            self.push(node, Kernel::Reduce, params, vec![x.buf, y.buf], grid_1d(n));
        }
        self.set(node, 0, y);
        Ok(())
    }

    fn softmax(&mut self, node: &TypedNode, op: &Softmax) -> Result<(), InferError> {
        if op.axes.len() != 1 || op.quant_output_dt.is_some() {
            return Err(unsupported(node, "several axes or quantized"));
        }
        let x = self.gpu_input(node, node.inputs[0])?;
        let axis = op.axes[0];
        let len = x.shape[axis];
        let inner: usize = x.shape[axis + 1..].iter().product();
        let rows = x.shape.iter().product::<usize>() / len.max(1);
        let y = self.activation(&x.shape, Word::F32);
        let log = u32::from(op.kind == SoftmaxKind::LogSoftmax);
        if rows > 0 {
            self.push(
                node,
                Kernel::Softmax,
                vec![u(rows), u(len), u(inner.max(1)), log],
                vec![x.buf, y.buf],
                grid_1d(rows),
            );
        }
        self.set(node, 0, y);
        Ok(())
    }

    fn concat(&mut self, node: &TypedNode, op: &TypedConcat) -> Result<(), InferError> {
        let y_shape = self.out_shape(node, 0)?;
        let out_strides = contiguous_strides(&y_shape);
        let mut parts = vec![];
        for &i in &node.inputs {
            parts.push(self.gpu_input(node, i)?);
        }
        let word = parts.first().map_or(Word::F32, |p| p.word);
        let y = self.activation(&y_shape, word);
        let mut offset = 0;
        for part in &parts {
            let strides = contiguous_strides(&part.shape);
            self.copy(
                node,
                part,
                &y,
                &part.shape,
                &strides,
                0,
                &out_strides,
                offset * out_strides[op.axis],
                SourceMap::Direct,
            )?;
            offset += part.shape[op.axis];
        }
        self.set(node, 0, y);
        Ok(())
    }

    fn slice(&mut self, node: &TypedNode, op: &Slice) -> Result<(), InferError> {
        let x = self.gpu_input(node, node.inputs[0])?;
        let start = op
            .start
            .to_usize()
            .map_err(|_| unsupported(node, "symbolic bounds"))?;
        let y_shape = self.out_shape(node, 0)?;
        let strides = contiguous_strides(&x.shape);
        let y = self.activation(&y_shape, x.word);
        self.copy(
            node,
            &x,
            &y,
            &y_shape,
            &strides,
            start * strides[op.axis],
            &contiguous_strides(&y_shape),
            0,
            SourceMap::Direct,
        )?;
        self.set(node, 0, y);
        Ok(())
    }

    fn broadcast(&mut self, node: &TypedNode) -> Result<(), InferError> {
        let x = self.gpu_input(node, node.inputs[0])?;
        let y_shape = self.out_shape(node, 0)?;
        let y = self.activation(&y_shape, x.word);
        let strides = broadcast_strides(&x.shape, &y_shape);
        self.copy(
            node,
            &x,
            &y,
            &y_shape,
            &strides,
            0,
            &contiguous_strides(&y_shape),
            0,
            SourceMap::Direct,
        )?;
        self.set(node, 0, y);
        Ok(())
    }

    fn gather(&mut self, node: &TypedNode, op: &Gather) -> Result<(), InferError> {
        if op.output_type.is_some() {
            return Err(unsupported(node, "typed output"));
        }
        let data = self.gpu_input(node, node.inputs[0])?;
        let indices = self.gpu_input(node, node.inputs[1])?;
        if indices.word != Word::I32 {
            return Err(unsupported(node, "indices are not integers"));
        }
        let y_shape = self.out_shape(node, 0)?;
        let inner: usize = data.shape[op.axis + 1..].iter().product();
        let n_idx: usize = indices.shape.iter().product();
        let n: usize = y_shape.iter().product();
        let y = self.activation(&y_shape, data.word);
        if n > 0 {
            self.push(
                node,
                Kernel::Gather,
                vec![
                    u(n),
                    u(inner.max(1)),
                    u(n_idx.max(1)),
                    u(data.shape[op.axis]),
                ],
                vec![data.buf, indices.buf, y.buf],
                grid_1d(n),
            );
        }
        self.set(node, 0, y);
        Ok(())
    }

    fn pad(&mut self, node: &TypedNode, op: &Pad) -> Result<(), InferError> {
        let x = self.gpu_input(node, node.inputs[0])?;
        let value = match &op.mode {
            PadMode::Constant(value) => value,
            mode => {
                let y_shape = self.out_shape(node, 0)?;
                let y = self.activation(&y_shape, x.word);
                let before: Vec<usize> = op.pads.iter().map(|p| p.0).collect();
                let map = if matches!(mode, PadMode::Edge) {
                    SourceMap::Edge(&before)
                } else {
                    SourceMap::Reflect(&before)
                };
                let strides = contiguous_strides(&x.shape);
                self.copy(
                    node,
                    &x,
                    &y,
                    &y_shape,
                    &strides,
                    0,
                    &contiguous_strides(&y_shape),
                    0,
                    map,
                )?;
                self.set(node, 0, y);
                return Ok(());
            }
        };
        let (words, _) = words_of(value).map_err(|why| unsupported(node, why))?;
        let fill = words.first().copied().unwrap_or(0);
        let y_shape = self.out_shape(node, 0)?;
        let y = self.activation(&y_shape, x.word);
        let n: usize = y_shape.iter().product();
        if n > 0 {
            self.push(
                node,
                Kernel::Fill,
                vec![u(n), fill],
                vec![y.buf],
                grid_1d(n),
            );
        }
        let out_strides = contiguous_strides(&y_shape);
        let offset: usize = op
            .pads
            .iter()
            .zip(&out_strides)
            .map(|((before, _), s)| before * s)
            .sum();
        self.copy(
            node,
            &x,
            &y,
            &x.shape,
            &contiguous_strides(&x.shape),
            0,
            &out_strides,
            offset,
            SourceMap::Direct,
        )?;
        self.set(node, 0, y);
        Ok(())
    }

    fn select(&mut self, node: &TypedNode) -> Result<(), InferError> {
        let c = self.gpu_input(node, node.inputs[0])?;
        let a = self.gpu_input(node, node.inputs[1])?;
        let b = self.gpu_input(node, node.inputs[2])?;
        if a.word != b.word {
            return Err(unsupported(node, "mixed operand types"));
        }
        let shape = self.out_shape(node, 0)?;
        if shape.len() > MAX_RANK {
            return Err(unsupported(node, "rank over 8"));
        }
        let out = self.activation(&shape, a.word);
        let n: usize = shape.iter().product();
        let mut params = vec![u(n), u(shape.len()), 0, 0];
        params.extend(pad8(&shape, 1));
        for v in [&c, &a, &b] {
            params.extend(pad8(&broadcast_strides(&v.shape, &shape), 0));
        }
        if n > 0 {
            self.push(
                node,
                Kernel::Select,
                params,
                vec![c.buf, a.buf, b.buf, out.buf],
                grid_1d(n),
            );
        }
        self.set(node, 0, out);
        Ok(())
    }

    fn tile(&mut self, node: &TypedNode, _op: &Tile) -> Result<(), InferError> {
        let x = self.gpu_input(node, node.inputs[0])?;
        let shape = self.out_shape(node, 0)?;
        if shape.len() != x.shape.len() {
            return Err(unsupported(node, "rank"));
        }
        let out = self.activation(&shape, x.word);
        let strides = contiguous_strides(&x.shape);
        self.copy(
            node,
            &x,
            &out,
            &shape,
            &strides,
            0,
            &contiguous_strides(&shape),
            0,
            SourceMap::Tile,
        )?;
        self.set(node, 0, out);
        Ok(())
    }

    fn downsample(&mut self, node: &TypedNode, op: &Downsample) -> Result<(), InferError> {
        if op.stride <= 0 {
            return Err(unsupported(node, "negative stride"));
        }
        let x = self.gpu_input(node, node.inputs[0])?;
        let shape = self.out_shape(node, 0)?;
        let mut strides = contiguous_strides(&x.shape);
        let offset = op.modulo * strides[op.axis];
        strides[op.axis] *= op.stride as usize;
        let out = self.activation(&shape, x.word);
        self.copy(
            node,
            &x,
            &out,
            &shape,
            &strides,
            offset,
            &contiguous_strides(&shape),
            0,
            SourceMap::Direct,
        )?;
        self.set(node, 0, out);
        Ok(())
    }

    /// x / sqrt(mean(x², axis) + eps): a mean of squares, a fused rsqrt, a broadcast multiply.
    fn rms_norm(&mut self, node: &TypedNode, op: &RmsNorm) -> Result<(), InferError> {
        let x = self.gpu_input(node, node.inputs[0])?;
        if x.word != Word::F32 || x.shape.len() > MAX_RANK {
            return Err(unsupported(node, "non-float or rank over 8"));
        }
        let eps = op
            .eps
            .cast_to_scalar::<f32>()
            .map_err(|e| unsupported(node, e))?;
        let strides = contiguous_strides(&x.shape);
        let mut r_shape = x.shape.clone();
        r_shape[op.axis] = 1;
        let count = x.shape[op.axis];
        let n: usize = r_shape.iter().product();
        let r = self.activation(&r_shape, Word::F32);
        let mut params = vec![u(n), 5, u(r_shape.len()), 1, u(count), 0, 0, 0];
        params.extend(pad8(&r_shape, 1));
        params.extend(pad8(&strides, 0));
        params.extend(pad8(&[count], 1));
        params.extend(pad8(&[strides[op.axis]], 0));
        if n == 0 {
            return Err(unsupported(node, "empty tensor"));
        }
        self.push(node, Kernel::Reduce, params, vec![x.buf, r.buf], grid_1d(n));
        let inv = self.unary_step(node, &r, 38, eps, 0.0);
        let shape = x.shape.clone();
        let out = self.activation(&shape, Word::F32);
        let total: usize = shape.iter().product();
        let mut params = vec![u(total), 2, u(shape.len()), 0];
        params.extend(pad8(&shape, 1));
        params.extend(pad8(&strides, 0));
        params.extend(pad8(&broadcast_strides(&r_shape, &shape), 0));
        params.extend([0, 0]);
        self.push(
            node,
            Kernel::Binary,
            params,
            vec![x.buf, inv.buf, out.buf],
            grid_1d(total),
        );
        self.set(node, 0, out);
        Ok(())
    }

    /// Transposed convolution (1-D and 2-D), direct.
    fn deconv(&mut self, node: &TypedNode, op: &Deconv) -> Result<(), InferError> {
        if op.kernel_format != KernelFormat::OIHW {
            return Err(unsupported(node, "kernel format"));
        }
        let spec = &op.pool_spec;
        if spec.data_format != DataFormat::NCHW || !(1..=2).contains(&spec.kernel_shape.len()) {
            return Err(unsupported(node, "NCHW with 1 or 2 spatial axes only"));
        }
        let x = self.gpu_input(node, node.inputs[0])?;
        let y_shape = self.out_shape(node, 0)?;
        let (nb, cin, cout) = (x.shape[0], x.shape[1], y_shape[1]);
        let groups = op.group.max(1);
        let geo = Geometry::for_deconv(spec, &x.shape[2..], &y_shape[2..], &op.adjustments)
            .ok_or_else(|| unsupported(node, "padding"))?;
        let (kernel, bias) =
            self.kernel_and_bias(node, cout * (cin / groups) * geo.kernel_points(), cout)?;
        let wbuf = self.upload_f32(node, &kernel)?;
        let b = self.upload_f32(node, &bias)?;
        let y = self.activation(&y_shape, Word::F32);
        let n_out: usize = y_shape.iter().product();
        let mut params = vec![u(n_out), 0, 0, 0, u(cin)];
        params.extend(geo.plane());
        params.extend([cin / groups, cout / groups, cout].map(u));
        if n_out > 0 && nb > 0 {
            self.push(
                node,
                Kernel::Deconv,
                params,
                vec![x.buf, wbuf.buf, b.buf, y.buf],
                grid_1d(n_out),
            );
        }
        self.set(node, 0, y);
        Ok(())
    }
}
