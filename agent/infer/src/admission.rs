//! What a model must pass before tract sees its graph: every tensor in its own bytes (no
//! external data), and no declared tensor larger than the configured bound, so a hostile model
//! is an error and never an allocation that aborts the process.

use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension;

use crate::error::InferError;

/// The size of one element of an ONNX data type, in bytes (8 for types we do not know: the
/// bound stays conservative).
fn element_bytes(data_type: i32) -> u64 {
    use pb::tensor_proto::DataType as T;
    match T::try_from(data_type) {
        Ok(T::Uint8 | T::Int8 | T::Bool) => 1,
        Ok(T::Uint16 | T::Int16 | T::Float16 | T::Bfloat16) => 2,
        Ok(T::Float | T::Int32 | T::Uint32) => 4,
        Ok(T::Complex128) => 16,
        _ => 8,
    }
}

/// Bytes of a tensor with these dimensions; `None` for a negative dimension.
fn tensor_bytes(dims: impl IntoIterator<Item = i64>, data_type: i32) -> Option<u128> {
    dims.into_iter()
        .try_fold(u128::from(element_bytes(data_type)), |n, d| {
            u64::try_from(d)
                .ok()
                .map(|d| n.saturating_mul(u128::from(d)))
        })
}

/// Checks every tensor the graph declares, subgraphs included.
pub(crate) fn check_graph(graph: &pb::GraphProto, max_tensor_bytes: u64) -> Result<(), InferError> {
    let external = |t: &pb::TensorProto| {
        !t.external_data.is_empty()
            || t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
    };
    let bounded = |name: &str, bytes: Option<u128>| match bytes {
        Some(bytes) if bytes <= u128::from(max_tensor_bytes) => Ok(()),
        Some(bytes) => Err(InferError::TensorTooLarge {
            tensor: name.to_owned(),
            bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
            limit: max_tensor_bytes,
        }),
        None => Err(InferError::InvalidModel(format!(
            "tensor `{name}` has a negative dimension"
        ))),
    };
    let check_tensor = |name: &str, t: &pb::TensorProto| {
        if external(t) {
            return Err(InferError::ExternalData {
                tensor: name.to_owned(),
            });
        }
        bounded(name, tensor_bytes(t.dims.iter().copied(), t.data_type))
    };
    for t in &graph.initializer {
        check_tensor(&t.name, t)?;
    }
    // Declared inputs, outputs and intermediate values: fixed dimensions count as given,
    // symbolic ones (a batch) as 1.
    for value in graph
        .input
        .iter()
        .chain(&graph.output)
        .chain(&graph.value_info)
    {
        let Some(pb::type_proto::Value::TensorType(tensor)) =
            value.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            continue;
        };
        let Some(shape) = &tensor.shape else { continue };
        let dims = shape.dim.iter().map(|d| match d.value {
            Some(dimension::Value::DimValue(n)) => n,
            _ => 1,
        });
        bounded(&value.name, tensor_bytes(dims, tensor.elem_type))?;
    }
    for node in &graph.node {
        for attr in &node.attribute {
            for t in attr.t.iter().chain(attr.tensors.iter()) {
                check_tensor(&format!("{}.{}", node.name, attr.name), t)?;
            }
            for g in attr.g.iter().chain(attr.graphs.iter()) {
                check_graph(g, max_tensor_bytes)?;
            }
        }
    }
    Ok(())
}

/// Every output of the model's graph names a value the graph has: an input, an initializer,
/// or a node's output. tract indexes its values by these names and panics on one it lacks.
pub(crate) fn check_outputs(graph: &pb::GraphProto) -> Result<(), InferError> {
    let known: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .chain(
            graph
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(String::as_str)),
        )
        .collect();
    match graph
        .output
        .iter()
        .find(|o| !known.contains(o.name.as_str()))
    {
        Some(output) => Err(InferError::InvalidModel(format!(
            "graph output `{}` is no input, initializer or node output",
            output.name
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_element_type_and_saturate() {
        let float = pb::tensor_proto::DataType::Float as i32;
        assert_eq!(tensor_bytes([2, 3], float), Some(24));
        assert_eq!(tensor_bytes([], float), Some(4), "a scalar");
        assert_eq!(tensor_bytes([2, -1], float), None);
        assert_eq!(
            tensor_bytes([i64::MAX, i64::MAX, i64::MAX], float),
            Some(u128::MAX),
            "saturates instead of overflowing"
        );
        let uint8 = pb::tensor_proto::DataType::Uint8 as i32;
        assert_eq!(tensor_bytes([1 << 20], uint8), Some(1 << 20));
    }
}
