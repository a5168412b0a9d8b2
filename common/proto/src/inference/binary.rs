//! The binary tensor data extension: a request body is a JSON part of
//! `Inference-Header-Content-Length` bytes, then the bytes of each input that has a
//! `binary_data_size` parameter, in the order of `inputs`. BYTES elements are each a 4-byte
//! little-endian length, then that many bytes.

use super::{InferRequest, InputError, InputTensor};

/// The elements of BYTES data, or why they are malformed.
pub fn bytes_elements(mut data: &[u8]) -> Result<Vec<&[u8]>, String> {
    let mut elements = Vec::new();
    while !data.is_empty() {
        let Some((length, rest)) = data.split_first_chunk::<4>() else {
            return Err(format!(
                "BYTES element {} has {} bytes of its 4-byte length",
                elements.len(),
                data.len()
            ));
        };
        let length = u32::from_le_bytes(*length) as usize;
        if length > rest.len() {
            return Err(format!(
                "BYTES element {} says {length} bytes, {} are left",
                elements.len(),
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(length);
        elements.push(element);
        data = rest;
    }
    Ok(elements)
}

/// BYTES data of `elements`.
pub fn encode_bytes_elements<'a>(elements: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for element in elements {
        // An element longer than 4 GiB cannot be framed; bodies are far smaller.
        let length = u32::try_from(element.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&element[..length as usize]);
    }
    out
}

/// Reads a request body: all JSON when `header_length` (the value of the
/// `Inference-Header-Content-Length` header) is absent, else that many bytes of JSON, then the
/// binary inputs in order. Every input is checked; an error names the input.
pub fn read_request(
    body: &[u8],
    header_length: Option<&str>,
) -> Result<(InferRequest, Vec<InputTensor>), InputError> {
    let (json, mut rest) = match header_length {
        None => (body, &[][..]),
        Some(value) => {
            let length: usize = value.trim().parse().map_err(|_| {
                InputError(format!(
                    "Inference-Header-Content-Length `{value}` is not a byte count"
                ))
            })?;
            if length > body.len() {
                return Err(InputError(format!(
                    "Inference-Header-Content-Length {length} is past the end of the {}-byte body",
                    body.len()
                )));
            }
            body.split_at(length)
        }
    };
    let request = InferRequest::from_json(json)?;
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in &request.inputs {
        let tensor = match (input.parameters.binary_data_size, &input.data) {
            (Some(_), Some(_)) => {
                return Err(input.error("both `data` and a `binary_data_size` parameter"));
            }
            (None, _) => input.check()?,
            (Some(size), None) => {
                let size = usize::try_from(size)
                    .ok()
                    .filter(|&s| s <= rest.len())
                    .ok_or_else(|| {
                        input.error(format_args!(
                            "binary_data_size {size} is past the end of the body ({} bytes left{})",
                            rest.len(),
                            if header_length.is_none() {
                                "; binary data needs the Inference-Header-Content-Length header"
                            } else {
                                ""
                            }
                        ))
                    })?;
                let (bytes, after) = rest.split_at(size);
                rest = after;
                input.check_binary(bytes)?
            }
        };
        tensors.push(tensor);
    }
    if !rest.is_empty() {
        return Err(InputError(format!(
            "{} bytes after the last binary input",
            rest.len()
        )));
    }
    Ok((request, tensors))
}
