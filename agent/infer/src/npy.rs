//! Reading and writing NumPy `.npy` files (`run-local --npy NAME=FILE.npy`, model fixtures).
//!
//! Supports little-endian (or byte-sized) `f4`, `f2`, `i8`, `i4`, `u1`, `b1` arrays in C order.
//! Malformed files are errors, never panics.

use crate::tensor::{DType, Tensor};

/// Why a file is not a usable `.npy`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a usable .npy file: {0}")]
pub struct NpyError(String);

fn bad(why: impl Into<String>) -> NpyError {
    NpyError(why.into())
}

/// The value of `'key': value` in the header dictionary.
fn field<'a>(header: &'a str, key: &str) -> Result<&'a str, NpyError> {
    let pattern = format!("'{key}':");
    let start = header
        .find(&pattern)
        .ok_or_else(|| bad(format!("header has no `{key}`")))?
        + pattern.len();
    Ok(header[start..].trim_start())
}

fn parse_shape(value: &str) -> Result<Vec<usize>, NpyError> {
    let inner = value
        .strip_prefix('(')
        .ok_or_else(|| bad("shape is not a tuple"))?;
    let end = inner
        .find(')')
        .ok_or_else(|| bad("shape tuple is not closed"))?;
    inner[..end]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| {
            d.parse::<usize>()
                .map_err(|_| bad(format!("shape dimension `{d}` is not a number")))
        })
        .collect()
}

/// Parses `.npy` bytes into a tensor called `name`.
pub fn parse(name: &str, bytes: &[u8]) -> Result<Tensor, NpyError> {
    let rest = bytes
        .strip_prefix(b"\x93NUMPY")
        .ok_or_else(|| bad("missing the \\x93NUMPY magic"))?;
    let (&major, rest) = rest.split_first().ok_or_else(|| bad("truncated header"))?;
    let rest = rest.get(1..).ok_or_else(|| bad("truncated header"))?;
    let (header_len, rest) = match major {
        1 => {
            let len = rest.get(..2).ok_or_else(|| bad("truncated header"))?;
            (
                usize::from(u16::from_le_bytes([len[0], len[1]])),
                &rest[2..],
            )
        }
        2 | 3 => {
            let len = rest.get(..4).ok_or_else(|| bad("truncated header"))?;
            (
                u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize,
                &rest[4..],
            )
        }
        v => return Err(bad(format!("format version {v} is not supported"))),
    };
    let header = rest
        .get(..header_len)
        .ok_or_else(|| bad("truncated header"))?;
    let data = &rest[header_len..];
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;

    let descr = field(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| bad("descr is not a string"))?;
    let (dtype, size) = match descr {
        "<f4" => (DType::F32, 4),
        "<f2" => (DType::F16, 2),
        "<f8" => (DType::F64, 8),
        "<i8" => (DType::I64, 8),
        "<i4" => (DType::I32, 4),
        "<i2" => (DType::I16, 2),
        "|i1" | "<i1" => (DType::I8, 1),
        "<u8" => (DType::U64, 8),
        "<u4" => (DType::U32, 4),
        "<u2" => (DType::U16, 2),
        "|u1" | "<u1" => (DType::U8, 1),
        "|b1" => (DType::Bool, 1),
        other => return Err(bad(format!("dtype `{other}` is not supported"))),
    };
    if field(header, "fortran_order")?.starts_with("True") {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape = parse_shape(field(header, "shape")?)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(size))
        .ok_or_else(|| bad("shape is too large"))?;
    if data.len() != count {
        return Err(bad(format!(
            "shape {shape:?} needs {count} bytes of data, the file has {}",
            data.len()
        )));
    }
    Ok(Tensor {
        name: name.to_owned(),
        dtype,
        shape,
        data: data.to_vec(),
    })
}

/// Writes a tensor as `.npy` bytes (version 1), for tests and tools.
pub fn write(tensor: &Tensor) -> Vec<u8> {
    let descr = match tensor.dtype {
        DType::F32 => "<f4",
        DType::F16 => "<f2",
        DType::F64 => "<f8",
        DType::I64 => "<i8",
        DType::I32 => "<i4",
        DType::I16 => "<i2",
        DType::I8 => "|i1",
        DType::U64 => "<u8",
        DType::U32 => "<u4",
        DType::U16 => "<u2",
        DType::U8 => "|u1",
        DType::Bool => "|b1",
    };
    let dims: Vec<String> = tensor.shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(&tensor.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_reads_numpy_headers() {
        let t = Tensor {
            name: "x".into(),
            dtype: DType::F32,
            shape: vec![2, 3],
            data: (0..24).collect(),
        };
        let back = parse("x", &write(&t)).expect("round trip");
        assert_eq!(
            (back.name, back.dtype, back.shape, back.data),
            (t.name, t.dtype, t.shape, t.data)
        );
        let mut numpy = b"\x93NUMPY\x01\x00".to_vec();
        let header = "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }          \n";
        numpy.extend((header.len() as u16).to_le_bytes());
        numpy.extend(header.as_bytes());
        numpy.extend([1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()));
        let t = parse("ids", &numpy).expect("numpy file");
        assert_eq!((t.dtype, t.shape), (DType::I64, vec![3]));
    }

    #[test]
    fn refuses_mismatched_and_unsupported_files() {
        let t = Tensor {
            name: "x".into(),
            dtype: DType::U8,
            shape: vec![4],
            data: vec![1, 2, 3, 4],
        };
        let mut bytes = write(&t);
        bytes.pop();
        assert!(
            parse("x", &bytes)
                .unwrap_err()
                .to_string()
                .contains("needs 4 bytes")
        );
        assert!(parse("x", b"PK\x03\x04").is_err());
        let mut big_endian = write(&t);
        let at = big_endian
            .windows(3)
            .position(|w| w == b"|u1")
            .expect("descr in header");
        big_endian[at..at + 3].copy_from_slice(b">f8");
        assert!(
            parse("x", &big_endian)
                .expect_err("big-endian")
                .to_string()
                .contains("dtype `>f8`")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse("x", &bytes);
            let mut framed = b"\x93NUMPY\x01\x00".to_vec();
            framed.extend(&bytes);
            let _ = parse("x", &framed);
        }
    }
}
