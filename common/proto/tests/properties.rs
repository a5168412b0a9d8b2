//! Property tests: every message survives a round trip through a frame, and no byte string can
//! make a decoder panic.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tern_proto::frame::{self, decode_frame, encode_frame};
use tern_proto::message::*;
use tern_proto::telemetry::*;
use tern_proto::{EnrollmentToken, MAX_FRAME_LEN};

/// Histograms as an untrusted peer might send them: any indices, any counts, any order.
fn histogram() -> impl Strategy<Value = Histogram> {
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec((any::<u16>(), any::<u64>()), 0..12),
    )
        .prop_map(|(count, sum, buckets)| Histogram {
            count,
            sum,
            buckets,
        })
}

fn telemetry_batch() -> impl Strategy<Value = TelemetryBatch> {
    let step = (
        "[a-z]{1,8}",
        any::<u64>(),
        histogram(),
        prop::collection::btree_map("[a-z]{1,6}", any::<u64>(), 0..3),
    )
        .prop_map(|(step, requests, latency_us, counters)| StepStats {
            step,
            requests,
            latency_us,
            counters,
            ..StepStats::default()
        });
    let pipeline = (
        "[a-z]{1,8}",
        any::<u64>(),
        any::<u64>(),
        histogram(),
        prop::collection::vec(step, 0..3),
    )
        .prop_map(
            |(pipeline, revision, requests, latency_us, steps)| PipelineStats {
                pipeline,
                revision,
                requests,
                latency_us,
                steps,
                ..PipelineStats::default()
            },
        );
    (
        any::<u64>(),
        any::<u64>(),
        0f32..100.0,
        prop::collection::vec(pipeline, 0..3),
    )
        .prop_map(|(seq, start_ms, cpu_percent, pipelines)| TelemetryBatch {
            seq,
            start_ms,
            end_ms: start_ms.saturating_add(10_000),
            host: HostStats {
                cpu_percent,
                ..HostStats::default()
            },
            pipelines,
            dropped_batches: seq / 2,
        })
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z]{1,8}", ".{0,12}", 0..4)
}

fn gpu() -> impl Strategy<Value = GpuAdapter> {
    (
        ".{0,24}",
        "vulkan|metal|dx12",
        "cpu|discrete-gpu|other",
        ".{0,12}",
    )
        .prop_map(|(name, backend, device_type, driver)| GpuAdapter {
            name,
            backend,
            device_type,
            driver,
        })
}

fn capacity() -> impl Strategy<Value = Capacity> {
    (
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(gpu(), 0..3),
    )
        .prop_map(|(cores, memory_bytes, disk_free_bytes, gpus)| Capacity {
            cores,
            memory_bytes,
            disk_free_bytes,
            gpus,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u32>(),
        "[0-9a-f]{0,32}",
        ".{0,16}",
        labels(),
        capacity(),
        "[0-9.]{0,8}",
    )
        .prop_map(
            |(protocol_version, agent_id, name, labels, capacity, software_version)| Hello {
                protocol_version,
                agent_id,
                name,
                labels,
                capacity,
                software_version,
            },
        )
}

fn phase() -> impl Strategy<Value = PipelinePhase> {
    prop_oneof![
        Just(PipelinePhase::Fetching),
        Just(PipelinePhase::Verifying),
        Just(PipelinePhase::Loading),
        Just(PipelinePhase::Ready),
        Just(PipelinePhase::Failed),
    ]
}

fn status() -> impl Strategy<Value = StatusReport> {
    let pipeline = (
        ".{0,12}",
        any::<u64>(),
        phase(),
        ".{0,20}",
        any::<Option<u64>>(),
    )
        .prop_map(|(name, revision, phase, message, serving)| PipelineStatus {
            name,
            revision,
            phase,
            message,
            serving,
        });
    (
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(pipeline, 0..4),
    )
        .prop_map(|(seq, applied_generation, pipelines)| StatusReport {
            seq,
            applied_generation,
            refused: pipelines
                .first()
                .map(|p: &PipelineStatus| p.message.clone()),
            warnings: pipelines.iter().map(|p| p.name.clone()).collect(),
            pipelines,
        })
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        hello().prop_map(AgentMessage::Hello),
        any::<u64>().prop_map(|seq| AgentMessage::Heartbeat(Heartbeat { seq })),
        status().prop_map(AgentMessage::Status),
        any::<u64>().prop_map(|seq| AgentMessage::Ack(Ack { seq })),
        capacity().prop_map(AgentMessage::Capacity),
        ".{0,80}".prop_map(|csr_pem| AgentMessage::Renew { csr_pem }),
        exits().prop_map(AgentMessage::Exits),
    ]
}

fn exits() -> impl Strategy<Value = ExitReport> {
    let revision = ("[a-z]{1,8}", any::<u64>())
        .prop_map(|(pipeline, revision)| RunningRevision { pipeline, revision });
    let exit = (
        "[0-9a-f]{1,16}",
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(revision.clone(), 0..3),
        prop::collection::vec(revision, 0..2),
        ".{0,40}",
    )
        .prop_map(
            |(run, started_ms, detected_ms, serving, loading, reason)| UncleanExit {
                run,
                started_ms,
                detected_ms,
                serving,
                loading,
                reason,
            },
        );
    (
        "[0-9a-f]{1,16}",
        any::<u64>(),
        prop::collection::vec(exit, 0..4),
    )
        .prop_map(|(run, window_ms, exits)| ExitReport {
            run,
            window_ms,
            exits,
        })
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(heartbeat_interval_ms, server_time_ms)| {
            ControlMessage::Welcome(Welcome {
                heartbeat_interval_ms,
                server_time_ms,
            })
        }),
        any::<u64>().prop_map(|seq| ControlMessage::Ack(Ack { seq })),
        ".{0,40}".prop_map(|reason| ControlMessage::Refused { reason }),
        (any::<bool>(), ".{0,80}").prop_map(|(ok, text)| {
            ControlMessage::Renewed(if ok { Ok(text) } else { Err(text) })
        }),
        Just(ControlMessage::TrustChain(Vec::new())),
        (
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(generation, body, signature)| {
                ControlMessage::DesiredState(SignedDesiredState {
                    generation,
                    body,
                    signature,
                })
            }),
    ]
}

fn round_trip<T>(msg: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let bytes = encode_frame(msg, MAX_FRAME_LEN).expect("encodes");
    let (back, used) = decode_frame::<T>(&bytes, MAX_FRAME_LEN)
        .expect("decodes")
        .expect("complete frame");
    assert_eq!(used, bytes.len());
    back
}

proptest! {
    #[test]
    fn agent_messages_round_trip(msg in agent_message()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn control_messages_round_trip(msg in control_message()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn transfer_messages_round_trip(
        digest in any::<[u8; 32]>(),
        offset in any::<u64>(),
        reason in ".{0,40}",
    ) {
        let req = FetchRequest { digest, offset };
        prop_assert_eq!(round_trip(&req), req);
        for response in [
            FetchResponse::Sending { size: offset },
            FetchResponse::NotFound,
            FetchResponse::Refused { reason },
        ] {
            prop_assert_eq!(round_trip(&response), response.clone());
        }
    }

    #[test]
    fn telemetry_round_trips_and_merges_without_panicking(batch in telemetry_batch(), other in histogram()) {
        prop_assert_eq!(round_trip(&batch), batch.clone());
        let open = StreamOpen::Telemetry;
        prop_assert_eq!(round_trip(&open), open);
        let ack = TelemetryAck { up_to: batch.seq };
        prop_assert_eq!(round_trip(&ack), ack);
        for pipeline in &batch.pipelines {
            let mut merged = pipeline.latency_us.clone();
            merged.merge(&other);
            prop_assert!(merged.buckets.windows(2).all(|w| w[0].0 < w[1].0));
            let _ = merged.quantile(0.99);
        }
    }

    #[test]
    fn several_frames_in_one_buffer_decode_in_order(msgs in prop::collection::vec(agent_message(), 1..8)) {
        let mut buf = Vec::new();
        for m in &msgs {
            buf.extend(encode_frame(m, MAX_FRAME_LEN).expect("encodes"));
        }
        let mut at = 0;
        for m in &msgs {
            let (got, used) = decode_frame::<AgentMessage>(&buf[at..], MAX_FRAME_LEN)
                .expect("decodes")
                .expect("complete");
            prop_assert_eq!(&got, m);
            at += used;
        }
        prop_assert_eq!(at, buf.len());
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_frame::<AgentMessage>(&bytes, MAX_FRAME_LEN);
        let _ = decode_frame::<ControlMessage>(&bytes, MAX_FRAME_LEN);
        let _ = decode_frame::<FetchRequest>(&bytes, MAX_FRAME_LEN);
        let _ = decode_frame::<FetchResponse>(&bytes, MAX_FRAME_LEN);
        let _ = decode_frame::<StreamOpen>(&bytes, MAX_FRAME_LEN);
        let _ = decode_frame::<TelemetryAck>(&bytes, MAX_FRAME_LEN);
        if let Ok(Some((batch, _))) = decode_frame::<TelemetryBatch>(&bytes, MAX_FRAME_LEN) {
            let mut h = Histogram::default();
            for p in &batch.pipelines {
                h.merge(&p.latency_us);
            }
            let _ = (h.quantile(0.5), batch.points());
        }
        // A desired state's body is only decoded after its signature verified, but the
        // decoder must hold up anyway.
        let _ = postcard::from_bytes::<tern_proto::desired::DesiredState>(&bytes);
        let _ = serde_json::from_slice::<tern_proto::release::SignedRelease>(&bytes);
        let _ = serde_json::from_slice::<tern_proto::trust::SignedTrustRoot>(&bytes);
        let _ = frame::decode_payload::<AgentMessage>(&bytes);
        let _ = frame::decode_payload::<ControlMessage>(&bytes);
        let _ = EnrollmentToken::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn corrupted_frames_never_panic_and_never_exceed_the_maximum(
        msg in agent_message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode_frame(&msg, MAX_FRAME_LEN).expect("encodes");
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(Some((_, used))) = decode_frame::<AgentMessage>(&bytes, 4096) {
            prop_assert!(used <= 4096 + frame::HEADER_LEN);
        }
    }

    #[test]
    fn tokens_round_trip(id in any::<[u8; 16]>(), secret in any::<[u8; 32]>(), ca in any::<[u8; 32]>()) {
        let token = EnrollmentToken { id, secret, ca_sha256: ca };
        prop_assert_eq!(EnrollmentToken::parse(&token.to_string()), Ok(token));
    }

    #[test]
    fn binary_inference_bodies_read_back_what_was_sent_and_cut_ones_are_refused(
        values in prop::collection::vec(any::<f32>(), 0..48),
        blobs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        use tern_proto::inference::{encode_bytes_elements, read_request};
        let floats: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = encode_bytes_elements(blobs.iter().map(Vec::as_slice));
        let header = serde_json::json!({"inputs": [
            {"name": "x", "shape": [values.len()], "datatype": "FP32",
             "parameters": {"binary_data_size": floats.len()}},
            {"name": "s", "shape": [blobs.len()], "datatype": "BYTES",
             "parameters": {"binary_data_size": bytes.len()}},
        ]})
        .to_string();
        let length = header.len().to_string();
        let body = [header.into_bytes(), floats.clone(), bytes.clone()].concat();
        let (_, tensors) = read_request(&body, Some(&length)).expect("a well-formed body");
        prop_assert_eq!(&tensors[0].data, &floats);
        prop_assert_eq!(&tensors[1].data, &bytes);
        let short = cut.index(body.len());
        prop_assert!(read_request(&body[..short], Some(&length)).is_err());
    }
}
