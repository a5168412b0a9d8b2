//! The check of the `accel_calls` fuzz target, which the plugin tests replay: a hostile guest
//! (the hostile fixture in mode `accel`) makes one `accel` call with arguments read from
//! arbitrary bytes. The host answers or refuses it, never panics, and the instance serves a
//! well-formed call after it.

use tern_plugin_host::{Blob, Payload, Step};

/// The bytes of one call, as the fixture reads them (see `accel_call` there).
#[allow(clippy::too_many_arguments)]
pub fn encode(
    operation: u8,
    dtype: u8,
    layouts: (u8, u8),
    dims: &[u16],
    size: (u32, u32),
    mean: &[f32],
    std: &[f32],
    data: &[u8],
) -> Vec<u8> {
    let mut bytes = vec![operation, dtype, layouts.0, layouts.1, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_le_bytes());
    }
    bytes.extend_from_slice(&size.0.to_le_bytes());
    bytes.extend_from_slice(&size.1.to_le_bytes());
    bytes.push(mean.len().min(std.len()) as u8);
    for v in mean.iter().chain(std) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

/// A well-formed resize: a 1×3×4×4 `uint8` image to 2×2.
pub fn well_formed() -> Vec<u8> {
    encode(0, 4, (0, 0), &[1, 3, 4, 4], (2, 2), &[], &[], &[9; 48])
}

/// Calls that have broken hosts: sizes that overflow, nothing at all, the wrong amount of
/// data, unsupported datatypes, zero and NaN deviations, outputs past any memory.
pub fn edge_cases() -> Vec<Vec<u8>> {
    let big = u16::MAX; // reads as u64::MAX
    vec![
        Vec::new(),
        well_formed(),
        encode(
            0,
            4,
            (0, 0),
            &[big, big, big, big],
            (2, 2),
            &[],
            &[],
            &[1; 16],
        ),
        encode(
            0,
            4,
            (0, 0),
            &[1, 3, 4, 4],
            (u32::MAX, u32::MAX),
            &[],
            &[],
            &[9; 48],
        ),
        encode(0, 0, (1, 1), &[1, 4, 4, 3], (0, 0), &[], &[], &[0; 10]),
        encode(0, 4, (0, 0), &[], (2, 2), &[], &[], &[]),
        encode(0, 1, (0, 0), &[1, 3, 4, 4], (2, 2), &[], &[], &[0; 96]),
        encode(
            1,
            4,
            (0, 1),
            &[1, 3, 4, 4],
            (0, 0),
            &[0.5; 3],
            &[0.0; 3],
            &[9; 48],
        ),
        encode(
            1,
            0,
            (1, 0),
            &[1, 4, 4, 3],
            (0, 0),
            &[f32::NAN; 3],
            &[f32::INFINITY; 3],
            &[7; 192],
        ),
        encode(
            1,
            4,
            (0, 0),
            &[1, 3, 4, 4],
            (0, 0),
            &[0.5; 2],
            &[0.5; 2],
            &[9; 48],
        ),
        encode(
            1,
            4,
            (0, 0),
            &[big, 3, 0xfffe, 0xfffe],
            (0, 0),
            &[0.5; 3],
            &[0.5; 3],
            &[9; 48],
        ),
        encode(1, 5, (0, 0), &[1, 1, 1, 1, 1, 1], (0, 0), &[], &[], &[1]),
        encode(0, 4, (0, 0), &[1, 3, 4, 4], (2, 2), &[], &[], &[9; 47]),
        encode(
            0,
            4,
            (0, 0),
            &[1, 3, 4, 4],
            (60_000, 60_000),
            &[],
            &[],
            &[9; 48],
        ),
    ]
}

fn bytes(data: &[u8]) -> Payload {
    Payload::Bytes(Blob {
        media_type: "application/octet-stream".into(),
        data: data.to_vec(),
    })
}

/// One call with `data` as its arguments, then a well-formed one that must be answered.
pub fn check(step: &Step, data: &[u8]) {
    // Refused or answered: either is fine, a panic is not (it would unwind through here).
    let _ = step.process(&bytes(data));
    match step.process(&bytes(&well_formed())) {
        Ok(Payload::Tensors(tensors)) => {
            assert_eq!(tensors.len(), 1);
            assert_eq!(tensors[0].shape, [1, 3, 2, 2], "the resize after it");
        }
        other => panic!("a well-formed call after {data:?} got {other:?}"),
    }
}
