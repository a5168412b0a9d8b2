//! Reductions: sum, mean, max and friends over axes, softmax and RMS normalization.

use super::*;

impl Lowering<'_> {
    pub(super) fn reduce(&mut self, node: &TypedNode, op: &Reduce) -> Result<(), InferError> {
        let code = match op.reducer {
            Reducer::Sum => 0,
            Reducer::Max => 2,
            Reducer::Min => 3,
            Reducer::Prod => 4,
            Reducer::MeanOfSquares => 5,
            ref other => return Err(unsupported(node, format!("{other:?}"))),
        };
        let x = self.gpu_input(node, node.inputs[0])?;
        let y = self.reduced(node, &x, &op.axes, code)?;
        let shape = self.out_shape(node, 0)?;
        self.set(node, 0, GpuVal { shape, ..y });
        Ok(())
    }

    /// `x` reduced over `axes` with the reduce kernels' op `code`; the reduced axes stay, with
    /// extent 1.
    pub(super) fn reduced(
        &mut self,
        node: &TypedNode,
        x: &GpuVal,
        axes: &[usize],
        code: u32,
    ) -> Result<GpuVal, InferError> {
        if x.word != Word::F32 || x.shape.len() > MAX_RANK {
            return Err(unsupported(node, "non-float or rank over 8"));
        }
        let strides = contiguous_strides(&x.shape);
        let mut y_shape = x.shape.clone();
        for &a in axes {
            y_shape[a] = 1;
        }
        let red_shape: Vec<usize> = axes.iter().map(|&a| x.shape[a]).collect();
        let red_strides: Vec<usize> = axes.iter().map(|&a| strides[a]).collect();
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
            self.push_reduce(node, params, vec![x.buf, y.buf], n, count);
        }
        Ok(y)
    }

    /// A reduction of `n` outputs of `count` elements each: a workgroup per output for long
    /// ones, an invocation per output for short ones (same parameters).
    fn push_reduce(
        &mut self,
        node: &TypedNode,
        params: Vec<u32>,
        buffers: Vec<BufId>,
        n: usize,
        count: usize,
    ) {
        if count >= ROW_PER_WORKGROUP_FROM {
            self.push(node, Kernel::ReduceRows, params, buffers, grid_rows(n));
        } else {
            self.push(node, Kernel::Reduce, params, buffers, grid_1d(n));
        }
    }

    pub(super) fn softmax(&mut self, node: &TypedNode, op: &Softmax) -> Result<(), InferError> {
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
            let params = vec![u(rows), u(len), u(inner.max(1)), log];
            let buffers = vec![x.buf, y.buf];
            if len >= ROW_PER_WORKGROUP_FROM {
                self.push(node, Kernel::SoftmaxRows, params, buffers, grid_rows(rows));
            } else {
                self.push(node, Kernel::Softmax, params, buffers, grid_1d(rows));
            }
        }
        self.set(node, 0, y);
        Ok(())
    }

    /// x / sqrt(mean(x², axis) + eps): a mean of squares, a fused rsqrt, a broadcast multiply.
    pub(super) fn rms_norm(&mut self, node: &TypedNode, op: &RmsNorm) -> Result<(), InferError> {
        let x = self.gpu_input(node, node.inputs[0])?;
        if x.word != Word::F32 || x.shape.len() > MAX_RANK {
            return Err(unsupported(node, "non-float or rank over 8"));
        }
        let eps = op
            .eps
            .cast_to_scalar::<f32>()
            .map_err(|e| unsupported(node, e))?;
        let rows: usize = (0..x.shape.len())
            .filter(|&a| a != op.axis)
            .map(|a| x.shape[a])
            .product();
        if rows == 0 {
            return Err(unsupported(node, "empty tensor"));
        }
        let r = self.reduced(node, &x, &[op.axis], 5)?;
        let strides = contiguous_strides(&x.shape);
        let r_shape = r.shape.clone();
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
}
