//! Element-wise ops: unary and binary kernels, with broadcasting.

use super::*;

impl Lowering<'_> {
    pub(super) fn binary(&mut self, node: &TypedNode, op: &TypedBinOp) -> Result<(), InferError> {
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

    pub(super) fn unary_step(
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

    pub(super) fn elementwise(
        &mut self,
        node: &TypedNode,
        op: &ElementWiseOp,
    ) -> Result<(), InferError> {
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
}
