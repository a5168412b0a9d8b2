//! Mutual TLS and framing at the agent endpoint: what is refused, and that a refusal closes only
//! the offending connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_agent::AgentDataDir;
use tern_e2e::{Agent, ControlPlane, enroll, fast_config};
use tern_proto::api::AgentStatus;
use tern_proto::{AgentMessage, Capacity, Hello, MAX_FRAME_LEN, PROTOCOL_VERSION};
use tern_transport::{CertificateAuthority, Identity};

const TIMEOUT: Duration = Duration::from_secs(30);

fn transport() -> Arc<quinn::TransportConfig> {
    tern_transport::quic::transport_config(Duration::from_secs(10), None)
}

/// Connects and waits for the connection to end; returns how it ended.
async fn outcome(
    client: quinn::ClientConfig,
    addr: SocketAddr,
) -> anyhow::Result<quinn::ConnectionError> {
    let endpoint = tern_transport::quic::client_endpoint(addr)?;
    let conn = match endpoint
        .connect_with(client, addr, tern_proto::CONTROL_PLANE_SERVER_NAME)?
        .await
    {
        Ok(conn) => conn,
        Err(e) => return Ok(e),
    };
    Ok(tokio::time::timeout(Duration::from_secs(5), conn.closed()).await?)
}

/// A TLS alert during the handshake surfaces as a QUIC CRYPTO_ERROR (0x100 + alert).
fn is_handshake_refusal(e: &quinn::ConnectionError) -> bool {
    let crypto = |code: u64| (0x100..0x200).contains(&code);
    match e {
        quinn::ConnectionError::TransportError(t) => crypto(u64::from(t.code)),
        quinn::ConnectionError::ConnectionClosed(c) => crypto(u64::from(c.error_code)),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_from_another_ca_is_refused_in_the_handshake() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let ca_pem = std::fs::read_to_string(cp.dir.join("ca.crt"))?;
    let rogue_ca = CertificateAuthority::generate("rogue")?;
    let rogue = rogue_ca.issue_agent("rogue-agent")?;
    let client = tern_transport::tls::quic_client(
        &ca_pem,
        Identity::from_pem(&rogue.cert_pem, &rogue.key_pem)?,
        transport(),
    )?;
    let ended = outcome(client, cp.agent_addr).await?;
    assert!(
        is_handshake_refusal(&ended),
        "expected a TLS refusal, got {ended:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_client_certificate_is_refused_in_the_handshake() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let ca_pem = std::fs::read_to_string(cp.dir.join("ca.crt"))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tern_transport::pki::first_certificate(&ca_pem)?)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(tern_transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![tern_proto::ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client.transport_config(transport());
    let ended = outcome(client, cp.agent_addr).await?;
    assert!(
        is_handshake_refusal(&ended),
        "expected a TLS refusal, got {ended:?}"
    );
    Ok(())
}

/// The hello an agent opens its session with: unlabelled, no capacity.
pub(crate) fn hello(
    protocol_version: u32,
    agent_id: String,
    name: &str,
    software_version: &str,
) -> AgentMessage {
    AgentMessage::Hello(Hello {
        protocol_version,
        agent_id,
        name: name.into(),
        labels: Default::default(),
        capacity: Capacity::default(),
        software_version: software_version.into(),
    })
}

/// A QUIC connection with an enrolled agent's identity.
pub(crate) async fn connect_as(
    cp: &ControlPlane,
    dir: &AgentDataDir,
) -> anyhow::Result<quinn::Connection> {
    let identity = Identity::from_pem(&dir.read(&dir.cert())?, &dir.read(&dir.key())?)?;
    let client = tern_transport::tls::quic_client(&dir.read(&dir.ca())?, identity, transport())?;
    let endpoint = tern_transport::quic::client_endpoint(cp.agent_addr)?;
    Ok(endpoint
        .connect_with(client, cp.agent_addr, tern_proto::CONTROL_PLANE_SERVER_NAME)?
        .await?)
}

/// Opens a raw control stream as an enrolled agent, sends `bytes`, and returns how the
/// connection ended.
async fn send_raw(
    cp: &ControlPlane,
    dir: &AgentDataDir,
    bytes: Vec<u8>,
) -> anyhow::Result<quinn::ConnectionError> {
    let conn = connect_as(cp, dir).await?;
    let (mut send, _recv) = conn.open_bi().await?;
    send.write_all(&bytes).await?;
    Ok(tokio::time::timeout(Duration::from_secs(5), conn.closed()).await?)
}

fn closed_for(e: &quinn::ConnectionError, needle: &str) -> bool {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            u64::from(c.error_code) == u64::from(tern_transport::quic::close::PROTOCOL)
                && String::from_utf8_lossy(&c.reason).contains(needle)
        }
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_garbage_close_only_that_connection() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let bystander = Agent::join(&cp, tmp.path(), "bystander", &cp.token("", "10m")?, "")?;
    let mallory = enroll(&cp, tmp.path(), "mallory")?;
    let mallory_id = mallory.load_config()?.agent_id;
    tokio::task::block_in_place(|| cp.wait_status("bystander", AgentStatus::Ready, TIMEOUT))?;

    // A length prefix past the maximum.
    let oversized = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
    let ended = send_raw(&cp, &mallory, oversized).await?;
    assert!(closed_for(&ended, "exceeds the maximum"), "{ended:?}");

    // A well-sized frame of garbage.
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 16]);
    let ended = send_raw(&cp, &mallory, garbage).await?;
    assert!(closed_for(&ended, "malformed frame"), "{ended:?}");

    // A proper hello, then garbage.
    let hello = hello(PROTOCOL_VERSION, mallory_id, "mallory", "0");
    let mut bytes = tern_proto::frame::encode_frame(&hello, MAX_FRAME_LEN)?;
    bytes.extend([0, 0, 0, 3, 0x42, 0x42, 0x42]);
    let ended = send_raw(&cp, &mallory, bytes).await?;
    assert!(closed_for(&ended, "malformed frame"), "{ended:?}");

    // Everyone else is unaffected, and the endpoint still admits the same agent when it behaves.
    let agents = tokio::task::block_in_place(|| cp.agents())?;
    let by = agents
        .iter()
        .find(|a| a.name == "bystander")
        .expect("listed");
    assert_eq!(by.status, AgentStatus::Ready);
    let _reformed = Agent::run(tmp.path(), "mallory")?;
    tokio::task::block_in_place(|| cp.wait_status("mallory", AgentStatus::Ready, TIMEOUT))?;
    drop(bystander);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_wrong_protocol_version_is_refused_with_a_reason() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let dir = enroll(&cp, tmp.path(), "future")?;
    let conn = connect_as(&cp, &dir).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = hello(
        PROTOCOL_VERSION + 1,
        dir.load_config()?.agent_id,
        "future",
        "9",
    );
    tern_proto::io::write_frame(&mut send, &hello, MAX_FRAME_LEN).await?;
    let answer: Option<tern_proto::ControlMessage> =
        tern_proto::io::read_frame(&mut recv, MAX_FRAME_LEN).await?;
    match answer {
        Some(tern_proto::ControlMessage::Refused { reason }) => {
            assert!(reason.contains("not supported"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

/// Asks for `digest` on a transfer stream of `conn`; returns the control plane's answer.
async fn ask_for(
    conn: &quinn::Connection,
    digest: tern_proto::release::Digest,
) -> anyhow::Result<tern_proto::message::FetchResponse> {
    use tern_proto::message::{FetchRequest, StreamOpen};
    let (mut send, mut recv) = conn.open_bi().await?;
    let open = StreamOpen::Fetch(FetchRequest {
        digest: digest.0,
        offset: 0,
    });
    tern_proto::io::write_frame(&mut send, &open, 1024).await?;
    let _ = send.finish();
    tern_proto::io::read_frame(&mut recv, 1024)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_may_fetch_only_artifacts_of_its_own_desired_state() -> anyhow::Result<()> {
    use tern_proto::message::FetchResponse;
    let mut fleet = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let fleet = tern_e2e::Fleet::start(1)?;
        fleet.push(&fleet.topk("deployed", 0)?, 1)?;
        // Pushed, never deployed to this agent.
        fleet.push(&fleet.topk("elsewhere", 0)?, 2)?;
        fleet.apply("topk:1", 2)?;
        fleet.wait_phase(1, "Complete")?;
        Ok(fleet)
    })?;
    let digest = |tag: &str| -> anyhow::Result<tern_proto::release::Digest> {
        let path = fleet.tmp.path().join(format!("topk-{tag}.wasm"));
        Ok(tern_e2e::Publisher::release(&path)?.signed.digest)
    };
    let (deployed, elsewhere) = (digest("deployed")?, digest("elsewhere")?);
    // The agent's identity, on a connection of our own making.
    let agent = &mut fleet.agents[0];
    agent.process.terminate(Duration::from_secs(10))?;
    let dir = AgentDataDir::new(&agent.dir);
    let conn = connect_as(&fleet.cp, &dir).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = hello(PROTOCOL_VERSION, dir.load_config()?.agent_id, "edge-1", "0");
    tern_proto::io::write_frame(&mut send, &hello, MAX_FRAME_LEN).await?;
    let _welcome: Option<tern_proto::ControlMessage> =
        tern_proto::io::read_frame(&mut recv, MAX_FRAME_LEN).await?;

    match ask_for(&conn, elsewhere).await? {
        FetchResponse::Refused { reason } => {
            assert!(
                reason.contains("not in this agent's desired state"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        matches!(
            ask_for(&conn, deployed).await?,
            FetchResponse::Sending { .. }
        ),
        "its own artifact is served"
    );
    let log = fleet.cp.log_text();
    assert!(log.contains("fetch refused"), "the refusal is logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_oversized_status_reports_is_cut_held_to_a_rate_and_counted()
-> anyhow::Result<()> {
    use tern_proto::message::{PipelinePhase, PipelineStatus, StatusReport};
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let bystander = Agent::join(&cp, tmp.path(), "bystander", &cp.token("", "10m")?, "")?;
    let mallory = enroll(&cp, tmp.path(), "mallory")?;
    tokio::task::block_in_place(|| cp.wait_status("bystander", AgentStatus::Ready, TIMEOUT))?;
    let conn = connect_as(&cp, &mallory).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = hello(
        PROTOCOL_VERSION,
        mallory.load_config()?.agent_id,
        "mallory",
        "0",
    );
    tern_proto::io::write_frame(&mut send, &hello, MAX_FRAME_LEN).await?;
    // Reads whatever the control plane sends (welcome, acks), so the stream never blocks.
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) =
            tern_proto::io::read_frame::<_, tern_proto::ControlMessage>(&mut recv, MAX_FRAME_LEN)
                .await
        {}
    });
    // Five reports of almost a megabyte each (a message of 100,000 characters in each of 9
    // pipelines), then 400 small ones as fast as the link takes them (the rate's unit test
    // pins the budget itself; 400 at once is ten times its burst).
    for seq in 1..=405u64 {
        let (pipelines, length) = if seq <= 5 { (9, 100_000) } else { (1, 10) };
        let report = AgentMessage::Status(StatusReport {
            seq,
            applied_generation: 0,
            pipelines: (0..pipelines)
                .map(|i| PipelineStatus {
                    name: format!("p{i}"),
                    revision: seq,
                    phase: PipelinePhase::Failed,
                    message: "m".repeat(length),
                    serving: None,
                })
                .collect(),
            refused: None,
            warnings: vec![],
        });
        tern_proto::io::write_frame(&mut send, &report, MAX_FRAME_LEN).await?;
    }
    let counter = |reason: &str| {
        let metrics = cp.admin_get("/metrics").unwrap_or_default();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("tern_agent_reports_refused_total{")
                    && l.contains("kind=\"status\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    tokio::task::block_in_place(|| {
        tern_e2e::wait_for(TIMEOUT, "the reports counted", || {
            (counter("size") >= 5.0 && counter("rate") > 0.0).then_some(())
        })
    })?;
    assert_eq!(counter("size"), 5.0, "only the oversized ones are cut");
    // What is kept is cut to its bounds, and the bystander is served as before.
    let view = tokio::task::block_in_place(|| cp.agent("mallory"))?;
    assert!(
        view.pipelines.iter().all(|p| p.message.len() <= 512),
        "messages kept short"
    );
    let by = tokio::task::block_in_place(|| cp.agent("bystander"))?;
    assert_eq!(by.status, AgentStatus::Ready);
    reader.abort();
    drop(bystander);
    Ok(())
}
