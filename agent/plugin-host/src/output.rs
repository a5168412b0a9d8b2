//! Checking a plugin's output before it leaves the host.
//!
//! Known limit: wasmtime copies an output out of guest memory before the host sees it, and the
//! component model lets lists in one result point at the same guest bytes, so a hostile plugin
//! can make that copy larger than its memory limit. Bounding it needs a budget inside
//! wasmtime's lifting (post-return runs within the call, so lazy views cannot be used).

use crate::{Dtype, Payload};

/// Most tensors one output may hold.
pub(crate) const MAX_OUTPUT_TENSORS: usize = 4096;

fn element_size(dtype: Dtype) -> usize {
    match dtype {
        Dtype::Fp32 | Dtype::Int32 => 4,
        Dtype::Fp16 => 2,
        Dtype::Int64 => 8,
        Dtype::Uint8 | Dtype::Boolean => 1,
    }
}

/// Checks that an output is well-formed: a bounded number of tensors, each with exactly the data
/// its shape and dtype describe.
pub(crate) fn validate(payload: &Payload) -> Result<(), String> {
    let Payload::Tensors(tensors) = payload else {
        return Ok(());
    };
    if tensors.len() > MAX_OUTPUT_TENSORS {
        return Err(format!(
            "{} tensors in the output; at most {MAX_OUTPUT_TENSORS}",
            tensors.len()
        ));
    }
    for t in tensors {
        let expected = t
            .shape
            .iter()
            .try_fold(element_size(t.dtype), |acc, &d| {
                acc.checked_mul(usize::try_from(d).ok()?)
            })
            .ok_or_else(|| format!("output tensor `{}`: shape {:?} overflows", t.name, t.shape))?;
        if expected != t.data.len() {
            return Err(format!(
                "output tensor `{}`: shape {:?} of {:?} needs {expected} bytes, data has {}",
                t.name,
                t.shape,
                t.dtype,
                t.data.len()
            ));
        }
    }
    Ok(())
}
