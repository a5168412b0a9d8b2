//! A tensor's elements written as a JSON array straight from its bytes, with no JSON value per
//! element.

use serde::ser::{Error as _, SerializeSeq as _};
use serde::{Serialize, Serializer};

use super::{Datatype, bytes_elements};

/// The elements of `data` (little-endian, row-major; BYTES length-prefixed) as `datatype`.
pub struct Elements<'a> {
    pub datatype: Datatype,
    pub data: &'a [u8],
}

fn each<const N: usize, S: Serializer, T: Serialize>(
    serializer: S,
    data: &[u8],
    value: impl Fn([u8; N]) -> T,
) -> Result<S::Ok, S::Error> {
    let chunks = data.chunks_exact(N);
    let mut seq = serializer.serialize_seq(Some(chunks.len()))?;
    for chunk in chunks {
        let mut bytes = [0; N];
        bytes.copy_from_slice(chunk);
        seq.serialize_element(&value(bytes))?;
    }
    seq.end()
}

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.datatype {
            Datatype::Fp32 => each(serializer, self.data, f32::from_le_bytes),
            Datatype::Fp16 => each(serializer, self.data, |b| {
                half::f16::from_le_bytes(b).to_f32()
            }),
            Datatype::Int64 => each(serializer, self.data, i64::from_le_bytes),
            Datatype::Int32 => each(serializer, self.data, i32::from_le_bytes),
            Datatype::Uint8 => each(serializer, self.data, |[b]: [u8; 1]| b),
            Datatype::Bool => each(serializer, self.data, |[b]: [u8; 1]| b != 0),
            Datatype::Bytes => {
                let elements = bytes_elements(self.data).map_err(S::Error::custom)?;
                let mut seq = serializer.serialize_seq(Some(elements.len()))?;
                for element in elements {
                    seq.serialize_element(&String::from_utf8_lossy(element))?;
                }
                seq.end()
            }
        }
    }
}
