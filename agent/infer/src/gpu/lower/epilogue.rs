//! Epilogue fusion: the per-channel affine ops, clamp and activation that follow a GEMM or a
//! convolution, folded into the kernel that writes its result.

use super::*;

/// Bias, clamp and activation applied as a GEMM or convolution writes its result.
#[derive(Debug, Clone)]
pub(super) struct Epilogue {
    pub(super) bias: Option<Vec<f32>>,
    pub(super) scale: Option<Vec<f32>>,
    pub(super) lo: f32,
    pub(super) hi: f32,
    pub(super) act: u32,
    pub(super) act_a: f32,
    pub(super) act_b: f32,
}

impl Epilogue {
    /// Whether a clamp was fused (an unclamped epilogue must keep NaN and infinities).
    pub(super) fn clamps(&self) -> bool {
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

impl Lowering<'_> {
    /// The chain of per-channel affine ops and activations after `node` that can run in its
    /// epilogue. `channel_axis` is the output axis of the channels; `allow_scale` says whether a
    /// per-channel multiplication can be folded into the weights.
    pub(super) fn fuse_epilogue(
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

    pub(super) fn epilogue_params(ep: &Epilogue) -> [u32; 5] {
        [
            fbits(ep.lo),
            fbits(ep.hi),
            ep.act,
            fbits(ep.act_a),
            fbits(ep.act_b),
        ]
    }
}
