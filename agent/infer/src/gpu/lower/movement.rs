//! Data movement: axis changes, copies, concatenation, slices, broadcast, gather, padding,
//! select, tiling, downsampling and casts.

use super::*;

/// How a copy maps each output coordinate to a source coordinate, per axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SourceMap<'a> {
    /// As is (through the strides).
    Direct,
    /// Modulo the source extent.
    Tile,
    /// Shifted by the padding before it, reflected into the source.
    Reflect(&'a [usize]),
    /// Shifted by the padding before it, clamped into the source.
    Edge(&'a [usize]),
}

impl Lowering<'_> {
    pub(super) fn axis_op(&mut self, node: &TypedNode, op: &AxisOp) -> Result<(), InferError> {
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
    pub(super) fn copy(
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

    pub(super) fn cast(&mut self, node: &TypedNode, op: &Cast) -> Result<(), InferError> {
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

    pub(super) fn concat(&mut self, node: &TypedNode, op: &TypedConcat) -> Result<(), InferError> {
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

    pub(super) fn slice(&mut self, node: &TypedNode, op: &Slice) -> Result<(), InferError> {
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

    pub(super) fn broadcast(&mut self, node: &TypedNode) -> Result<(), InferError> {
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

    pub(super) fn gather(&mut self, node: &TypedNode, op: &Gather) -> Result<(), InferError> {
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

    pub(super) fn pad(&mut self, node: &TypedNode, op: &Pad) -> Result<(), InferError> {
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

    pub(super) fn select(&mut self, node: &TypedNode) -> Result<(), InferError> {
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

    pub(super) fn tile(&mut self, node: &TypedNode, _op: &Tile) -> Result<(), InferError> {
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

    pub(super) fn downsample(
        &mut self,
        node: &TypedNode,
        op: &Downsample,
    ) -> Result<(), InferError> {
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
}
