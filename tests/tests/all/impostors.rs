//! Attacks on the links themselves, performed: a 0-RTT attempt at the agent endpoint,
//! impostors of the control plane on the agent's link and on `ternctl`'s (a certificate from
//! another CA, and an agent's own certificate, signed by the real CA), and a flood of
//! handshakes while a real agent connects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::NamedGroup;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue,
};
use rustls::pki_types::ServerName;
use tern_e2e::{Agent, ControlPlane, Fleet, bin, enroll, fast_config};
use tern_proto::api::AgentStatus;
use tern_transport::{CertificateAuthority, Identity};

const TIMEOUT: Duration = tern_e2e::FLEET_TIMEOUT;

fn transport() -> Arc<quinn::TransportConfig> {
    tern_transport::quic::transport_config(Duration::from_secs(10), None)
}

/// The client's session store, recording the early-data allowance of every ticket the server
/// issues.
#[derive(Debug)]
struct Tickets {
    inner: ClientSessionMemoryCache,
    early_data: Mutex<Vec<u32>>,
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.inner.set_tls12_session(server_name, value);
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.early_data
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value.max_early_data_size());
        self.inner.insert_tls13_ticket(server_name, value);
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_rtt_attempt_gets_no_early_data_accepted() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let data = enroll(&cp, tmp.path(), "early")?;
    let tickets = Arc::new(Tickets {
        inner: ClientSessionMemoryCache::new(8),
        early_data: Mutex::new(Vec::new()),
    });
    let identity = Identity::from_pem(&data.read(&data.cert())?, &data.read(&data.key())?)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tern_transport::pki::first_certificate(
        &data.read(&data.ca())?,
    )?)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(tern_transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![tern_proto::ALPN.to_vec()];
    // The client asks for 0-RTT and keeps the server's tickets to resume with.
    tls.enable_early_data = true;
    tls.resumption = rustls::client::Resumption::store(tickets.clone());
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    client.transport_config(transport());
    let endpoint = tern_transport::quic::client_endpoint(cp.agent_addr)?;

    let first = endpoint
        .connect_with(
            client.clone(),
            cp.agent_addr,
            tern_proto::CONTROL_PLANE_SERVER_NAME,
        )?
        .await?;
    tern_e2e::wait_for(TIMEOUT, "a session ticket", || {
        (!tickets.early_data.lock().ok()?.is_empty()).then_some(())
    })?;
    first.close(0u32.into(), b"done");
    let allowances = tickets
        .early_data
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert!(
        allowances.iter().all(|&bytes| bytes == 0),
        "every ticket allows no early data: {allowances:?}"
    );

    // With a ticket in hand, the client tries to send its first flight early.
    let connecting =
        endpoint.connect_with(client, cp.agent_addr, tern_proto::CONTROL_PLANE_SERVER_NAME)?;
    match connecting.into_0rtt() {
        Ok((_, accepted)) => {
            let accepted = accepted.await;
            anyhow::bail!("0-RTT was possible (accepted: {accepted})")
        }
        // No early data: the connection goes through a whole handshake, and is served.
        Err(connecting) => {
            let second = connecting.await?;
            assert!(
                second.close_reason().is_none(),
                "the full handshake is served"
            );
        }
    }
    Ok(())
}

/// A QUIC server that presents `identity` to whoever connects, and how its handshakes ended.
async fn impostor_endpoint(
    identity: Identity,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<Vec<String>>)> {
    let mut tls = rustls::ServerConfig::builder_with_provider(tern_transport::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    tls.alpn_protocols = vec![tern_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(server, ([127, 0, 0, 1], 0).into())?;
    let addr = endpoint.local_addr()?;
    let seen = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        if let Ok(Some(incoming)) = tokio::time::timeout(TIMEOUT, endpoint.accept()).await {
            outcomes.push(match incoming.await {
                Ok(_) => "a connection was established".to_owned(),
                Err(e) => format!("refused: {e}"),
            });
        }
        outcomes
    });
    Ok((addr, seen))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_a_control_plane_impostor_before_saying_anything() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let data = enroll(&cp, tmp.path(), "careful")?;
    let stolen = enroll(&cp, tmp.path(), "stolen")?;
    let rogue_ca = CertificateAuthority::generate("rogue")?;
    let rogue = rogue_ca.issue_server(&[])?;
    let impostors = [
        (
            "a certificate from another CA, naming the control plane",
            Identity::from_pem(
                &format!("{}{}", rogue.cert_pem, rogue_ca.cert_pem()),
                &rogue.key_pem,
            )?,
        ),
        (
            "another agent's certificate, signed by the real CA",
            Identity::from_pem(&stolen.read(&stolen.cert())?, &stolen.read(&stolen.key())?)?,
        ),
    ];
    for (what, identity) in impostors {
        let (addr, seen) = impostor_endpoint(identity).await?;
        // The agent's own link: its CA, its identity, the control plane's name.
        let client = tern_transport::tls::quic_client(
            &data.read(&data.ca())?,
            Identity::from_pem(&data.read(&data.cert())?, &data.read(&data.key())?)?,
            transport(),
        )?;
        let endpoint = tern_transport::quic::client_endpoint(addr)?;
        let result = endpoint
            .connect_with(client, addr, tern_proto::CONTROL_PLANE_SERVER_NAME)?
            .await;
        let error = match result {
            Ok(_) => anyhow::bail!("{what}: the agent's link accepted the impostor"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains("certificate") || error.contains("alert"),
            "{what}: {error}"
        );
        let outcomes = seen.await?;
        assert_eq!(outcomes.len(), 1, "{what}: {outcomes:?}");
        assert!(outcomes[0].starts_with("refused"), "{what}: {outcomes:?}");
    }
    Ok(())
}

/// An HTTPS server that presents `identity` to one client; whether any request byte reached
/// it (the admin token travels in the request's head).
fn impostor_https(
    identity: Identity,
) -> anyhow::Result<(SocketAddr, std::thread::JoinHandle<String>)> {
    let config = tern_transport::tls::https_server(identity)?;
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let seen = std::thread::spawn(move || {
        // Waits a while for the one client; one that never comes leaves "no connection".
        let deadline = std::time::Instant::now() + TIMEOUT;
        let mut tcp = loop {
            match listener.accept() {
                Ok((tcp, _)) => break tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return "no connection".to_owned();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return format!("accept failed: {e}"),
            }
        };
        let _ = tcp.set_nonblocking(false);
        let _ = tcp.set_read_timeout(Some(TIMEOUT));
        let Ok(mut tls) = rustls::ServerConnection::new(config) else {
            return "no TLS state".to_owned();
        };
        let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
        let mut head = [0u8; 64];
        match std::io::Read::read(&mut stream, &mut head) {
            Ok(0) => "closed before a request".to_owned(),
            Ok(n) => format!("request bytes: {:?}", String::from_utf8_lossy(&head[..n])),
            Err(e) => format!("refused: {e}"),
        }
    });
    Ok((addr, seen))
}

#[test]
fn ternctl_refuses_an_admin_api_impostor_before_sending_its_token() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let stolen = enroll(&cp, tmp.path(), "stolen")?;
    let rogue_ca = CertificateAuthority::generate("rogue")?;
    let rogue = rogue_ca.issue_server(&[])?;
    let impostors = [
        (
            "a certificate from another CA",
            Identity::from_pem(
                &format!("{}{}", rogue.cert_pem, rogue_ca.cert_pem()),
                &rogue.key_pem,
            )?,
        ),
        (
            "an agent's certificate, signed by the real CA",
            Identity::from_pem(&stolen.read(&stolen.cert())?, &stolen.read(&stolen.key())?)?,
        ),
    ];
    let real: toml::Table = toml::from_str(&std::fs::read_to_string(cp.ternctl_config())?)?;
    for (what, identity) in impostors {
        let (addr, seen) = impostor_https(identity)?;
        let mut config = real.clone();
        config.insert("api".into(), toml::Value::String(addr.to_string()));
        let path = tmp.path().join("ternctl-impostor.toml");
        std::fs::write(&path, toml::to_string(&config)?)?;
        let out = std::process::Command::new(bin("ternctl"))
            .arg("--config")
            .arg(&path)
            .args(["get", "agents"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: ternctl went on: {stderr}");
        assert!(stderr.contains("certificate"), "{what}: {stderr}");
        let seen = seen
            .join()
            .map_err(|_| anyhow::anyhow!("the impostor panicked"))?;
        assert!(
            seen.starts_with("refused") || seen.starts_with("closed"),
            "{what}: ternctl reached the impostor and it {seen}"
        );
    }
    Ok(())
}

#[test]
fn a_flood_of_handshakes_does_not_keep_a_real_agent_out() -> anyhow::Result<()> {
    let mut fleet = Fleet::start(1)?;
    fleet.serve_topk()?;
    let addr = fleet.cp.agent_addr;
    let runtime = tokio::runtime::Runtime::new()?;
    let attempts = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ca_pem = std::fs::read_to_string(fleet.cp.dir.join("ca.crt"))?;
    // 16 clients at once, each handshaking over and over with a certificate of another CA
    // (a pause of 5 ms between tries keeps two cores from being all the flood's).
    let rogue_ca = CertificateAuthority::generate("rogue")?;
    let rogue = rogue_ca.issue_agent("flood")?;
    let identity = Identity::from_pem(&rogue.cert_pem, &rogue.key_pem)?;
    let flooders: Vec<_> = (0..16)
        .map(|_| {
            let (attempts, stop) = (attempts.clone(), stop.clone());
            let client = tern_transport::tls::quic_client(&ca_pem, identity.clone(), transport());
            runtime.spawn(async move {
                let Ok(client) = client else { return };
                let Ok(endpoint) = tern_transport::quic::client_endpoint(addr) else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(connecting) = endpoint.connect_with(
                        client.clone(),
                        addr,
                        tern_proto::CONTROL_PLANE_SERVER_NAME,
                    ) {
                        let _ = tokio::time::timeout(Duration::from_secs(2), connecting).await;
                    }
                    attempts.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    // The real agent goes away and comes back in the middle of it.
    fleet.agents[0].process.kill();
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::NotReady, TIMEOUT)?;
    let during = attempts.load(Ordering::Relaxed);
    fleet.agents[0] = Agent::run(fleet.tmp.path(), "edge-1")?;
    fleet
        .cp
        .wait_status("edge-1", AgentStatus::Ready, TIMEOUT)?;
    assert_eq!(fleet.infer(0)?, 200, "the agent serves");
    let after = attempts.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        let _ = runtime.block_on(flooder);
    }
    assert!(
        after > during,
        "handshakes went on while the agent connected ({during} → {after})"
    );
    // The control plane still answers its operators.
    fleet.cp.ternctl_ok(&["get", "agents"])?;
    Ok(())
}
