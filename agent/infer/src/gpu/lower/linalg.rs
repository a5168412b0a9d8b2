//! Linear algebra: einsum (matmul, GEMM, and any contraction reshaped into a batched GEMM),
//! convolution, deconvolution and pooling.

use super::movement::SourceMap;
use super::*;

/// One axis of a contraction: its position in A, in B and in the output (absent where the
/// operand or the output lacks it).
type AxisPlaces = (Option<usize>, Option<usize>, Option<usize>);

impl Lowering<'_> {
    /// `v` with its axes in `order`: a contiguous copy, or `v` itself when already in order.
    fn permuted(
        &mut self,
        node: &TypedNode,
        v: &GpuVal,
        order: &[usize],
    ) -> Result<GpuVal, InferError> {
        if order.iter().enumerate().all(|(i, &p)| i == p) {
            return Ok(v.clone());
        }
        let shape: Vec<usize> = order.iter().map(|&p| v.shape[p]).collect();
        let strides = contiguous_strides(&v.shape);
        let from: Vec<usize> = order.iter().map(|&p| strides[p]).collect();
        let out = self.activation(&shape, v.word);
        let to = contiguous_strides(&shape);
        self.copy(node, v, &out, &shape, &from, 0, &to, 0, SourceMap::Direct)?;
        Ok(out)
    }

    /// `v` summed over its axes `axes` (which then leave the shape): a reduction, for an
    /// axis only one operand of a contraction has and the output lacks.
    fn summed_over(
        &mut self,
        node: &TypedNode,
        v: &GpuVal,
        axes: &[usize],
    ) -> Result<GpuVal, InferError> {
        let out = self.reduced(node, v, axes, 0)?;
        let shape = (0..v.shape.len())
            .filter(|p| !axes.contains(p))
            .map(|p| v.shape[p])
            .collect();
        Ok(GpuVal { shape, ..out })
    }

    /// A contraction whose operand has axes that neither the other operand nor the output
    /// has: those are summed first (in that operand alone), and the axes rewritten.
    fn sum_lone_axes(
        &mut self,
        node: &TypedNode,
        (a, b): (GpuVal, GpuVal),
        axes: Vec<AxisPlaces>,
    ) -> Result<(GpuVal, GpuVal, Vec<AxisPlaces>), InferError> {
        let lone_a: Vec<usize> = axes
            .iter()
            .filter_map(|&(pa, pb, pc)| match (pa, pb, pc) {
                (Some(pa), None, None) if a.shape[pa] != 1 => Some(pa),
                _ => None,
            })
            .collect();
        let lone_b: Vec<usize> = axes
            .iter()
            .filter_map(|&(pa, pb, pc)| match (pa, pb, pc) {
                (None, Some(pb), None) if b.shape[pb] != 1 => Some(pb),
                _ => None,
            })
            .collect();
        if lone_a.is_empty() && lone_b.is_empty() {
            return Ok((a, b, axes));
        }
        let a = if lone_a.is_empty() {
            a
        } else {
            self.summed_over(node, &a, &lone_a)?
        };
        let b = if lone_b.is_empty() {
            b
        } else {
            self.summed_over(node, &b, &lone_b)?
        };
        // A position after the removed axes before it.
        let moved = |p: Option<usize>, gone: &[usize]| {
            p.map(|p| p - gone.iter().filter(|&&g| g < p).count())
        };
        let rewritten = axes
            .into_iter()
            .filter(|&(pa, pb, pc)| {
                let lone = pc.is_none()
                    && ((pb.is_none() && pa.is_some_and(|p| lone_a.contains(&p)))
                        || (pa.is_none() && pb.is_some_and(|p| lone_b.contains(&p))));
                !lone
            })
            .map(|(pa, pb, pc)| (moved(pa, &lone_a), moved(pb, &lone_b), pc))
            .collect();
        Ok((a, b, rewritten))
    }

    /// A contraction over several summed axes as one over a single axis: each operand's
    /// summed axes moved last (in one order for both, copying an operand whose axes are not
    /// there already) and merged into one, so that the batched GEMM sums over their product.
    /// The axes are rewritten to the new positions.
    fn merge_summed_axes(
        &mut self,
        node: &TypedNode,
        (a, b): (GpuVal, GpuVal),
        axes: Vec<AxisPlaces>,
    ) -> Result<(GpuVal, GpuVal, Vec<AxisPlaces>), InferError> {
        let mut summed: Vec<(usize, usize)> = axes
            .iter()
            .filter_map(|&(pa, pb, pc)| match (pa, pb, pc) {
                (Some(pa), Some(pb), None) if a.shape[pa] != 1 || b.shape[pb] != 1 => {
                    Some((pa, pb))
                }
                _ => None,
            })
            .collect();
        if summed.len() < 2 {
            return Ok((a, b, axes));
        }
        if summed.iter().any(|&(pa, pb)| a.shape[pa] != b.shape[pb]) {
            return Err(unsupported(node, "summed axes differ"));
        }
        summed.sort_unstable();
        let is_summed_a = |p: usize| summed.iter().any(|&(pa, _)| pa == p);
        let is_summed_b = |p: usize| summed.iter().any(|&(_, pb)| pb == p);
        let kept_a: Vec<usize> = (0..a.shape.len()).filter(|&p| !is_summed_a(p)).collect();
        let kept_b: Vec<usize> = (0..b.shape.len()).filter(|&p| !is_summed_b(p)).collect();
        let order_a: Vec<usize> = kept_a
            .iter()
            .copied()
            .chain(summed.iter().map(|s| s.0))
            .collect();
        let order_b: Vec<usize> = kept_b
            .iter()
            .copied()
            .chain(summed.iter().map(|s| s.1))
            .collect();
        let k: usize = summed.iter().map(|&(pa, _)| a.shape[pa]).product();
        // The permuted operand, viewed as its kept axes (in their order) and the merged one.
        let merge = |permuted: GpuVal, original: &GpuVal, kept: &[usize]| {
            let mut shape: Vec<usize> = kept.iter().map(|&p| original.shape[p]).collect();
            shape.push(k);
            GpuVal { shape, ..permuted }
        };
        let a2 = self.permuted(node, &a, &order_a)?;
        let b2 = self.permuted(node, &b, &order_b)?;
        let (a2, b2) = (merge(a2, &a, &kept_a), merge(b2, &b, &kept_b));
        let place =
            |kept: &[usize], p: Option<usize>| p.and_then(|p| kept.iter().position(|&q| q == p));
        let mut rewritten: Vec<AxisPlaces> = axes
            .iter()
            // The summed axes become the merged one; summed axes of size 1 on both sides
            // (kept in place) add nothing.
            .filter(|&&(pa, pb, pc)| pc.is_some() || !(pa.is_some() && pb.is_some()))
            .map(|&(pa, pb, pc)| (place(&kept_a, pa), place(&kept_b, pb), pc))
            .collect();
        rewritten.push((Some(kept_a.len()), Some(kept_b.len()), None));
        Ok((a2, b2, rewritten))
    }

    pub(super) fn einsum(&mut self, node: &TypedNode, op: &EinSum) -> Result<(), InferError> {
        if op.q_params.is_some() || node.inputs.len() != 2 || !is_float(op.operating_dt) {
            return Err(unsupported(node, "only float matmuls"));
        }
        let a = self.gpu_input(node, node.inputs[0])?;
        let b = self.gpu_input(node, node.inputs[1])?;
        let c_shape = self.out_shape(node, 0)?;
        let one = |v: &[usize]| -> Result<Option<usize>, InferError> {
            match v.len() {
                0 => Ok(None),
                1 => Ok(Some(v[0])),
                _ => Err(unsupported(node, "repeated axis")),
            }
        };
        let mut all: Vec<AxisPlaces> = vec![];
        for axis in op.axes.iter_all_axes() {
            let pa = one(&axis.inputs[0])?;
            let pb = one(&axis.inputs[1])?;
            let pc = one(&axis.outputs[0])?;
            all.push((pa, pb, pc));
        }
        let (a, b, all) = self.sum_lone_axes(node, (a, b), all)?;
        let (a, b, mut all) = self.merge_summed_axes(node, (a, b), all)?;
        let (sa, sb, sc) = (
            contiguous_strides(&a.shape),
            contiguous_strides(&b.shape),
            contiguous_strides(&c_shape),
        );
        let mut k_axis: Option<(usize, usize)> = None;
        let mut m_axis: Option<(Option<usize>, usize)> = None; // (pos in a, pos in c)
        let mut n_axis: Option<(Option<usize>, usize)> = None;
        let mut others: Vec<(Option<usize>, Option<usize>, usize)> = vec![];
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
        let stride = |shape: &[usize], strides: &[usize], p: Option<usize>| -> usize {
            match p {
                Some(p) if shape[p] != 1 => strides[p],
                _ => 0,
            }
        };
        // Batch axes as (extent, A, B and output strides), outer first; neighbours that
        // every operand walks as one run (or broadcasts both) merge, so that any number of
        // them fits the kernel's four.
        let mut batch: Vec<[usize; 4]> = Vec::new();
        others.sort_by_key(|&(_, _, pc)| pc);
        for &(pa, pb, pc) in &others {
            let axis = [
                c_shape[pc],
                stride(&a.shape, &sa, pa),
                stride(&b.shape, &sb, pb),
                sc[pc],
            ];
            match batch.last_mut() {
                Some(outer) if (1..4).all(|i| outer[i] == axis[i] * axis[0]) => {
                    outer[0] *= axis[0];
                    outer[1..].copy_from_slice(&axis[1..]);
                }
                _ => batch.push(axis),
            }
        }
        if batch.len() > 4 {
            return Err(unsupported(
                node,
                "more than four batch axes that cannot merge",
            ));
        }
        let m = m_axis.map_or(1, |(_, pc)| c_shape[pc]);
        let n = n_axis.map_or(1, |(_, pc)| c_shape[pc]);
        let k = k_axis.map_or(1, |(pa, pb)| a.shape[pa].max(b.shape[pb]).max(1));
        let mut batch_shape = [1usize; 4];
        let mut a_batch = [0usize; 4];
        let mut b_batch = [0usize; 4];
        let mut c_batch = [0usize; 4];
        let lead = 4 - batch.len();
        for (i, &[extent, in_a, in_b, in_c]) in batch.iter().enumerate() {
            batch_shape[lead + i] = extent;
            a_batch[lead + i] = in_a;
            b_batch[lead + i] = in_b;
            c_batch[lead + i] = in_c;
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
    pub(super) fn kernel_and_bias(
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
    pub(super) fn upload_f32(
        &mut self,
        node: &TypedNode,
        values: &[f32],
    ) -> Result<GpuVal, InferError> {
        let t = Tensor::from_shape(&[values.len()], values).map_err(|e| unsupported(node, e))?;
        self.upload(node, &t)
    }

    pub(super) fn conv(&mut self, node: &TypedNode, op: &Conv) -> Result<(), InferError> {
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

    pub(super) fn pool(
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

    /// Transposed convolution (1-D and 2-D), direct.
    pub(super) fn deconv(&mut self, node: &TypedNode, op: &Deconv) -> Result<(), InferError> {
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
