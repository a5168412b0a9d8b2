//! Tensors between the plugin contract (WIT `tensor`) and the inference API.

use tern_infer::{DType, Tensor as ModelTensor};
use tern_plugin_host::{Dtype, Tensor as PluginTensor};

/// A plugin tensor as a model input.
pub fn to_model(t: PluginTensor) -> Result<ModelTensor, String> {
    let dtype = match t.dtype {
        Dtype::Fp32 => DType::F32,
        Dtype::Fp16 => DType::F16,
        Dtype::Int64 => DType::I64,
        Dtype::Int32 => DType::I32,
        Dtype::Uint8 => DType::U8,
        Dtype::Boolean => DType::Bool,
    };
    let shape = t
        .shape
        .iter()
        .map(|&d| {
            usize::try_from(d)
                .map_err(|_| format!("tensor `{}` has a dimension over usize", t.name))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ModelTensor {
        name: t.name,
        dtype,
        shape,
        data: t.data,
    })
}

/// A model output as a plugin tensor; dtypes the plugin contract lacks are refused.
pub fn to_plugin(t: ModelTensor) -> Result<PluginTensor, String> {
    let dtype = match t.dtype {
        DType::F32 => Dtype::Fp32,
        DType::F16 => Dtype::Fp16,
        DType::I64 => Dtype::Int64,
        DType::I32 => Dtype::Int32,
        DType::U8 => Dtype::Uint8,
        DType::Bool => Dtype::Boolean,
        other => {
            return Err(format!(
                "output `{}` is {other}, which the plugin contract has no type for",
                t.name
            ));
        }
    };
    Ok(PluginTensor {
        name: t.name,
        dtype,
        shape: t.shape.iter().map(|&d| d as u64).collect(),
        data: t.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_types_the_contract_lacks() {
        let t = ModelTensor::from_f32("y", vec![2], &[1.0, 2.0]);
        let back = to_model(to_plugin(t.clone()).expect("f32")).expect("back");
        assert_eq!(back, t);
        let f64s = ModelTensor {
            name: "z".into(),
            dtype: DType::F64,
            shape: vec![1],
            data: vec![0; 8],
        };
        assert!(to_plugin(f64s).unwrap_err().contains("float64"));
    }
}
