//! Codes and words: how tract's element-wise ops and constants become our kernels' opcodes,
//! parameters and 32-bit words.

use super::*;

pub(super) fn u(n: usize) -> u32 {
    n as u32
}

pub(super) fn fbits(f: f32) -> u32 {
    f.to_bits()
}

pub(super) fn words_of(t: &Tensor) -> Result<(Vec<u32>, Word), String> {
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

/// A float vector of `len` from a constant broadcast along `axis` of a result of rank `rank`, if
/// the constant varies along that axis only.
pub(super) fn per_channel(t: &Tensor, rank: usize, axis: usize, len: usize) -> Option<Vec<f32>> {
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
pub(super) fn is_float(dt: DatumType) -> bool {
    matches!(dt, DatumType::F32 | DatumType::F16)
}

pub(super) fn scalar_f32(t: &Tensor) -> Option<f32> {
    if t.len() != 1 {
        return None;
    }
    t.cast_to_scalar::<f32>().ok()
}

/// Unary kernel code for an element-wise op of tract, with its two parameters.
pub(super) fn unary_code(op: &ElementWiseOp) -> Option<(u32, f32, f32)> {
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
pub(super) fn parametric_unary(op: &ElementWiseOp) -> Option<(u32, f32, f32)> {
    if let Some(leaky) = op.0.downcast_ref::<LeakyRelu>() {
        return Some((23, leaky.alpha, 0.0));
    }
    if let Some(pow) = op.0.downcast_ref::<PowConst>() {
        return Some((37, pow.exponent, 0.0));
    }
    None
}

pub(super) fn binary_code(name: &str, word: Word) -> Option<(u32, bool)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_codes_follow_the_word_type() {
        assert_eq!(binary_code("Add", Word::F32), Some((0, false)));
        assert_eq!(binary_code("LT", Word::F32), Some((7, true)));
        // Integer arithmetic is the float code plus 20; there is no integer power.
        assert_eq!(binary_code("Mul", Word::I32), Some((22, false)));
        assert_eq!(binary_code("Pow", Word::I32), None);
        // Logic only on booleans.
        assert_eq!(binary_code("And", Word::Bool), Some((40, false)));
        assert_eq!(binary_code("And", Word::F32), None);
        assert_eq!(binary_code("Atan2", Word::F32), None);
    }

    #[test]
    fn constants_become_words_or_a_reason() {
        let floats = tensor1(&[1.5f32, -2.0]);
        assert_eq!(
            words_of(&floats).expect("f32"),
            (vec![1.5f32.to_bits(), (-2.0f32).to_bits()], Word::F32)
        );
        let ints = tensor1(&[-1i64, 7]);
        assert_eq!(
            words_of(&ints).expect("i64"),
            (vec![u32::MAX, 7], Word::I32)
        );
        assert!(words_of(&tensor1(&[1i64 << 40])).is_err(), "over 32 bits");
        assert_eq!(
            words_of(&tensor1(&[true, false])).expect("bool"),
            (vec![1, 0], Word::Bool)
        );
    }

    #[test]
    fn per_channel_values_are_found_along_one_axis_only() {
        // Shape [1, 3, 1, 1] against a rank-4 result, channel axis 1.
        let bias = tensor1(&[1f32, 2.0, 3.0])
            .into_shape(&[1, 3, 1, 1])
            .expect("reshape");
        assert_eq!(per_channel(&bias, 4, 1, 3), Some(vec![1.0, 2.0, 3.0]));
        assert_eq!(per_channel(&bias, 4, 2, 3), None, "it varies along axis 1");
        assert_eq!(
            per_channel(&tensor0(0.5f32), 4, 1, 3),
            Some(vec![0.5; 3]),
            "a scalar fills the channels"
        );
        assert_eq!(
            per_channel(&tensor1(&[1i64, 2, 3]), 4, 1, 3),
            None,
            "not float"
        );
        assert_eq!(scalar_f32(&tensor0(2.5f32)), Some(2.5));
        assert_eq!(scalar_f32(&tensor1(&[1f32, 2.0])), None);
    }
}
