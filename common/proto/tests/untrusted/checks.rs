//! What each fuzz target does with its bytes, shared by the fuzz targets (`fuzz/`) and the
//! regression test that replays every input they ever found (`tests/untrusted.rs`). Each
//! check decodes untrusted bytes the way a daemon does and asserts what must hold; a panic
//! anywhere is a finding.

use tern_proto::desired::DesiredState;
use tern_proto::frame::{decode_frame, encode_frame};
use tern_proto::inference::{InferRequest, read_request};
use tern_proto::manifest::parse_sourced;
use tern_proto::message::SignedDesiredState;
use tern_proto::release::{Clocks, SignedRelease};
use tern_proto::signing::PublicKey;
use tern_proto::trust::{SignedTrustRoot, TrustRoot, TrustUpdate};
use tern_proto::{AgentMessage, ControlMessage, MAX_FRAME_LEN};

/// The Ed25519 public key of the all-zero seed: a valid point, fixed so that runs repeat.
const KEY: [u8; 32] = [
    0x3b, 0x6a, 0x27, 0xbc, 0xce, 0xb6, 0xa4, 0x2d, 0x62, 0xa3, 0xa8, 0xd0, 0x2a, 0x6f, 0x0d, 0x73,
    0x65, 0x32, 0x15, 0x77, 0x1d, 0xe2, 0x43, 0xa6, 0x3a, 0xc0, 0x48, 0xa1, 0x8b, 0x59, 0xda, 0x29,
];

/// A check of one fuzz target's input.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, each with its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("frame", frame),
    ("desired_state", desired_state),
    ("release_json", release_json),
    ("trust_root_json", trust_root_json),
    ("inference_json", inference_json),
    ("inference_binary", inference_binary),
    ("manifest_yaml", manifest_yaml),
];

/// Frames from a peer: the length header, then either message enum; a decoded message encodes
/// back into a frame that decodes again.
pub fn frame(data: &[u8]) {
    if let Ok(Some((message, used))) = decode_frame::<AgentMessage>(data, MAX_FRAME_LEN) {
        assert!(used <= data.len());
        let again = encode_frame(&message, MAX_FRAME_LEN).expect("a decoded message encodes");
        assert!(decode_frame::<AgentMessage>(&again, MAX_FRAME_LEN).is_ok());
    }
    if let Ok(Some((message, used))) = decode_frame::<ControlMessage>(data, MAX_FRAME_LEN) {
        assert!(used <= data.len());
        let again = encode_frame(&message, MAX_FRAME_LEN).expect("a decoded message encodes");
        assert!(decode_frame::<ControlMessage>(&again, MAX_FRAME_LEN).is_ok());
    }
}

/// A desired state as the agent receives and stores it: the signed envelope, then a body
/// (decoded without the signature check, as a compromised control plane could make it), and
/// what the reconciler asks of it.
pub fn desired_state(data: &[u8]) {
    if let Ok(signed) = postcard::from_bytes::<SignedDesiredState>(data) {
        let _ = signed.open(&PublicKey::from_bytes(KEY), "agent", 0);
    }
    if let Ok(state) = postcard::from_bytes::<DesiredState>(data) {
        let _ = state.content_digest();
        for pipeline in &state.pipelines {
            assert!(
                pipeline.same_run(pipeline),
                "a pipeline runs the same as itself"
            );
            let _ = pipeline.releases().count();
        }
    }
}

/// A signed release as JSON (what `ternctl push` sends and the catalog keeps), put through
/// every check an agent runs before it fetches a byte.
pub fn release_json(data: &[u8]) {
    let Ok(release) = serde_json::from_slice::<SignedRelease>(data) else {
        return;
    };
    let _ = release.signed.validate();
    let publisher = PublicKey::from_bytes(KEY);
    let trust = TrustRoot {
        version: 1,
        root_keys: vec![publisher],
        root_threshold: 1,
        publishers: vec![publisher],
        threshold: 1,
        created_ms: 0,
        expires_ms: None,
    };
    let clocks = Clocks {
        local_ms: 1,
        control_plane_ms: 1,
    };
    let _ = release.check(&trust, None, clocks);
    let _ = release.signed.check_content(data);
}

/// A signed trust root as JSON (what an operator rotates to and agents pin): validated,
/// checked against the clock, and offered as the first root and as its own successor.
pub fn trust_root_json(data: &[u8]) {
    let Ok(root) = serde_json::from_slice::<SignedTrustRoot>(data) else {
        return;
    };
    let _ = root.signed.validate();
    let _ = root.signed.expiry(u64::MAX);
    let _ = root.accept(None);
    if let Ok(update) = root.accept(Some(&root)) {
        assert_eq!(
            update,
            TrustUpdate::Unchanged,
            "a trust root is never its own successor"
        );
    }
}

/// An Open Inference Protocol request body from a local application: parsed into typed
/// scalars, then each tensor checked against its shape and datatype.
pub fn inference_json(data: &[u8]) {
    let Ok(request) = InferRequest::from_json(data) else {
        return;
    };
    for tensor in &request.inputs {
        if let Ok(checked) = tensor.check() {
            assert_eq!(checked.shape, tensor.shape);
        }
    }
}

/// A body of the binary tensor data extension: the first two bytes give the length of the
/// JSON part (as `Inference-Header-Content-Length` would), the rest is the body. What is read
/// matches what was declared: one tensor per input, each as many bytes as its shape and
/// datatype make.
pub fn inference_binary(data: &[u8]) {
    let Some((length, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let length = u16::from_le_bytes(*length).to_string();
    let Ok((request, tensors)) = read_request(body, Some(&length)) else {
        return;
    };
    assert_eq!(request.inputs.len(), tensors.len());
    for (input, tensor) in request.inputs.iter().zip(&tensors) {
        assert_eq!(input.shape, tensor.shape);
        if let Some(size) = tensor.datatype.size() {
            let count: u64 = tensor.shape.iter().product();
            assert_eq!(tensor.data.len() as u64, count * size);
        }
    }
}

/// A manifest file as `ternctl apply` and the admin API read it: YAML documents of every kind.
pub fn manifest_yaml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_sourced(text, "fuzz.yaml");
    }
}
