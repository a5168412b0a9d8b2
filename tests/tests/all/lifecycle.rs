//! An agent's identity over time, with real processes on loopback: revocation, decommissioning,
//! relabelling, withdrawn tokens, certificate renewal and expiry, and the read-only credential.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_agent::AgentDataDir;
use tern_e2e::{
    Agent, ControlPlane, FLEET_TIMEOUT, bin, fast_config, join_once, path_str, wait_for,
};
use tern_proto::api::AgentStatus;
use tern_transport::Identity;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Connects with an enrolled agent's identity, says nothing, and waits for the connection to
/// end: `Err` with the reason when the TLS handshake refused the certificate, `Ok` when the
/// control plane accepted it (and closed the connection later for want of a hello).
fn handshake_as(cp: &ControlPlane, dir: &AgentDataDir) -> anyhow::Result<Result<(), String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let identity = Identity::from_pem(&dir.read(&dir.cert())?, &dir.read(&dir.key())?)?;
        let transport: Arc<quinn::TransportConfig> =
            tern_transport::quic::transport_config(Duration::from_secs(10), None);
        let client = tern_transport::tls::quic_client(&dir.read(&dir.ca())?, identity, transport)?;
        let endpoint = tern_transport::quic::client_endpoint(cp.agent_addr)?;
        let connecting =
            endpoint.connect_with(client, cp.agent_addr, tern_proto::CONTROL_PLANE_SERVER_NAME)?;
        // The client's side of a TLS 1.3 handshake may complete before the server has checked
        // its certificate: what counts is how the connection ends. A refusal is a TLS alert
        // (QUIC CRYPTO_ERROR, 0x100 + alert); an accepted one ends with the control plane's
        // application close, no sooner than its hello timeout.
        let ended = match connecting.await {
            Ok(conn) => conn.closed().await,
            Err(e) => e,
        };
        let crypto = |code: u64| (0x100..0x200).contains(&code);
        let refused = match &ended {
            quinn::ConnectionError::TransportError(t) => crypto(u64::from(t.code)),
            quinn::ConnectionError::ConnectionClosed(c) => crypto(u64::from(c.error_code)),
            _ => false,
        };
        Ok(if refused {
            Err(ended.to_string())
        } else {
            Ok(())
        })
    })
}

/// A CSR made with the key in `dir` (an agent trying to enroll again with its old key).
fn csr_with_old_key(dir: &AgentDataDir) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::from_pem(&dir.read(&dir.key())?)?;
    Ok(rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?)
}

#[test]
fn a_revoked_agent_is_disconnected_and_refused_also_after_a_restart() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(tmp.path(), fast_config)?;
    let mut agent = Agent::join(&cp, tmp.path(), "stolen", &cp.token("", "10m")?, "")?;
    let _bystander = Agent::join(&cp, tmp.path(), "bystander", &cp.token("", "10m")?, "")?;
    cp.wait_status("stolen", AgentStatus::Ready, TIMEOUT)?;
    cp.wait_status("bystander", AgentStatus::Ready, TIMEOUT)?;

    let started = Instant::now();
    let out = cp.ternctl_ok(&["revoke", "agent", "stolen"])?;
    assert_eq!(out.trim(), "agent/stolen revoked");
    cp.wait_status("stolen", AgentStatus::NotReady, TIMEOUT)?;
    eprintln!("revocation to NotReady: {:?}", started.elapsed());
    let view = cp.agent("stolen")?;
    assert!(view.revoked.is_some(), "{view:?}");
    assert!(
        cp.ternctl_ok(&["get", "agents"])?
            .contains("NotReady,Revoked"),
        "get agents says so"
    );
    // The agent keeps trying; every handshake is refused, so it never reports or fetches again.
    let dir = AgentDataDir::new(&agent.dir);
    let refused = handshake_as(&cp, &dir)?;
    assert!(
        refused.is_err(),
        "the revoked certificate completed a handshake"
    );
    assert_eq!(cp.agent("stolen")?.status, AgentStatus::NotReady);
    assert_eq!(cp.agent("bystander")?.status, AgentStatus::Ready);
    agent.process.terminate(Duration::from_secs(10))?;

    // Enrolling again with the old key is refused, even with a fresh token.
    let token = cp.token("", "10m")?;
    let request = tern_proto::api::EnrollRequest {
        token: token.clone(),
        name: "stolen-again".into(),
        labels: Default::default(),
        csr_pem: csr_with_old_key(&dir)?,
    };
    let ca_sha256 = tern_proto::EnrollmentToken::parse(&token)?.ca_sha256;
    let client = tern_transport::https::HttpsClient::new(
        cp.agent_addr.to_string(),
        tern_transport::tls::https_client_pinned_by_ca_hash(ca_sha256)?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer: Result<tern_proto::api::EnrollResponse, _> =
        runtime.block_on(client.post("/v1/enroll", &request));
    let error = answer.expect_err("the old key enrolled again").to_string();
    assert!(error.contains("revoked"), "{error}");

    // After a restart of the control plane the certificate is still refused.
    cp.stop()?;
    cp.serve()?;
    assert!(handshake_as(&cp, &dir)?.is_err(), "refused after a restart");
    cp.wait_status("bystander", AgentStatus::Ready, TIMEOUT)?;
    Ok(())
}

#[test]
fn a_decommissioned_name_enrolls_again_with_a_new_token() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let _old = Agent::join(&cp, tmp.path(), "sold", &cp.token("site=a", "10m")?, "")?;
    cp.wait_status("sold", AgentStatus::Ready, TIMEOUT)?;
    let old_id = cp.agent("sold")?.id;
    let out = cp.ternctl_ok(&["delete", "agent", "sold"])?;
    assert_eq!(out.trim(), "agent/sold deleted");
    let listed = cp.agents()?;
    assert!(!listed.iter().any(|a| a.name == "sold"), "{listed:?}");
    assert!(
        cp.ternctl_fails(&["describe", "agent", "sold"])?
            .contains("no agent named")
    );
    // A new host takes the name with a new token.
    let fresh = tmp.path().join("new-host");
    std::fs::create_dir_all(&fresh)?;
    let _new = Agent::join(&cp, &fresh, "sold", &cp.token("site=b", "10m")?, "")?;
    cp.wait_status("sold", AgentStatus::Ready, TIMEOUT)?;
    let view = cp.agent("sold")?;
    assert_ne!(view.id, old_id);
    assert_eq!(view.labels.get("site").map(String::as_str), Some("b"));
    Ok(())
}

#[test]
fn a_relabelled_agent_gains_and_loses_a_deployment_without_reconnecting() -> anyhow::Result<()> {
    let fleet = tern_e2e::Fleet::start(1)?;
    fleet.push(&fleet.topk("one", 0)?, 1)?;
    let file = fleet.tmp.path().join("gold.yaml");
    let manifest = tern_e2e::topk_manifest("topk:1", 2).replace(
        "  pipeline: scores\n",
        "  pipeline: scores\n  selector: { tier: gold }\n",
    );
    fleet.cp.apply_manifest(&file, manifest)?;
    let connections = || -> anyhow::Result<usize> {
        Ok(fleet.agents[0]
            .process
            .log_text()
            .matches("connected to control plane")
            .count())
    };
    let before = connections()?;
    assert_eq!(fleet.infer(0)?, 404, "not selected yet");

    fleet
        .cp
        .ternctl_ok(&["label", "agent", "edge-1", "tier=gold"])?;
    assert!(
        fleet
            .cp
            .ternctl_ok(&["get", "agents"])?
            .contains("tier=gold")
    );
    fleet.wait_serving("edge-1", 1)?;
    assert_eq!(fleet.infer(0)?, 200);
    // kubectl's habit: an existing label changes only with --overwrite.
    let refused = fleet
        .cp
        .ternctl_fails(&["label", "agent", "edge-1", "tier=silver"])?;
    assert!(refused.contains("--overwrite"), "{refused}");

    fleet
        .cp
        .ternctl_ok(&["label", "agent", "edge-1", "tier-"])?;
    wait_for(FLEET_TIMEOUT, "the pipeline removed", || {
        (fleet.infer(0).ok()? == 404).then_some(())
    })?;
    assert_eq!(connections()?, before, "the agent never reconnected");
    Ok(())
}

#[test]
fn a_withdrawn_token_is_refused() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let token = cp.token("site=a", "1h")?;
    let id = tern_proto::EnrollmentToken::parse(&token)?.id_hex();
    let listed = cp.ternctl_ok(&["get", "tokens"])?;
    assert!(
        listed.contains(&id) && listed.contains("site=a"),
        "{listed}"
    );
    assert_eq!(
        cp.ternctl_ok(&["delete", "token", &id])?.trim(),
        format!("token/{id} deleted")
    );
    assert!(!cp.ternctl_ok(&["get", "tokens"])?.contains(&id));
    let out = join_once(cp.agent_addr, tmp.path(), "late", &token);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not valid"), "{stderr}");
    Ok(())
}

#[test]
fn certificates_renew_before_expiry_and_an_expired_one_needs_a_new_token() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut cp = ControlPlane::start(tmp.path(), |config| {
        fast_config(config);
        config.agent_cert_ttl = Duration::from_secs(12);
    })?;
    let mut agent = Agent::join(&cp, tmp.path(), "edge", &cp.token("", "10m")?, "")?;
    cp.wait_status("edge", AgentStatus::Ready, TIMEOUT)?;
    let first = cp.agent("edge")?;
    let first_expiry = first.certificate_expires.clone().expect("an expiry");
    // Two thirds into its life the agent renews over its link, with a fresh key.
    let dir = AgentDataDir::new(&agent.dir);
    let first_key = dir.read(&dir.key())?;
    wait_for(TIMEOUT, "a renewed certificate", || {
        let view = cp.agent("edge").ok()?;
        view.certificate_expires.filter(|e| *e > first_expiry)
    })?;
    wait_for(TIMEOUT, "the renewed key stored", || {
        (dir.read(&dir.key()).ok()? != first_key).then_some(())
    })?;
    assert_eq!(
        agent
            .process
            .log_text()
            .matches("connected to control plane")
            .count(),
        1,
        "the link stayed up through the renewal"
    );
    // The renewed certificate works across a restart.
    agent.process.terminate(Duration::from_secs(10))?;
    let mut agent = Agent::run(tmp.path(), "edge")?;
    cp.wait_status("edge", AgentStatus::Ready, TIMEOUT)?;

    // Offline past expiry: refused in the handshake, and `describe` says what to do.
    agent.process.terminate(Duration::from_secs(10))?;
    let validity = {
        let cert = tern_transport::pki::first_certificate(&dir.read(&dir.cert())?)?;
        tern_transport::pki::validity_of(&cert)?
    };
    wait_for(TIMEOUT, "the certificate to expire", || {
        (tern_clock::unix_millis_now() > validity.1 + 1_000).then_some(())
    })?;
    assert!(
        handshake_as(&cp, &dir)?.is_err(),
        "an expired certificate completed a handshake"
    );
    let described = cp.ternctl_ok(&["describe", "agent", "edge"])?;
    assert!(described.contains("needs a new token"), "{described}");
    assert!(
        cp.ternctl_ok(&["get", "agents"])?
            .contains("CertificateExpired")
    );

    // A new token enrolls it again on its own data dir, as the same agent.
    let id = cp.agent("edge")?.id;
    let out = join_once(cp.agent_addr, tmp.path(), "edge", &cp.token("", "10m")?);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _agent = Agent::run(tmp.path(), "edge")?;
    cp.wait_status("edge", AgentStatus::Ready, TIMEOUT)?;
    assert_eq!(cp.agent("edge")?.id, id, "the same agent");
    cp.stop()?;
    Ok(())
}

#[test]
fn the_read_only_credential_reads_and_changes_nothing() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), fast_config)?;
    let _agent = Agent::join(&cp, tmp.path(), "edge", &cp.token("", "10m")?, "")?;
    cp.wait_status("edge", AgentStatus::Ready, TIMEOUT)?;
    let made = Command::new(bin("tern-control-plane"))
        .args(["credential", "create", "--role", "read", "--data-dir"])
        .arg(&cp.dir)
        .output()?;
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let secret = String::from_utf8(made.stdout)?.trim().to_owned();
    let reader = |args: &[&str]| {
        Command::new(bin("ternctl"))
            .arg("--config")
            .arg(cp.ternctl_config())
            .args(args)
            .env("TERN_ADMIN_TOKEN", &secret)
            .output()
    };
    let listed = reader(&["get", "agents"])?;
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("edge"));
    assert!(reader(&["top", "agents"])?.status.success());
    assert!(reader(&["describe", "agent", "edge"])?.status.success());
    let manifest = tmp.path().join("m.yaml");
    std::fs::write(&manifest, tern_e2e::topk_manifest("topk:1", 2))?;
    for change in [
        vec!["apply", "-f", &path_str(&manifest)?],
        vec!["token", "create"],
        vec!["revoke", "agent", "edge"],
        vec!["label", "agent", "edge", "a=b"],
    ] {
        let out = reader(&change)?;
        assert!(!out.status.success(), "{change:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("read-only"), "{change:?}: {stderr}");
    }
    // `/metrics`, as a scraper reads it.
    let text = std::fs::read_to_string(cp.ternctl_config())?;
    let config: tern_proto::api::CliConfig = toml::from_str(&text)?;
    let client = tern_transport::https::HttpsClient::new(
        config.api.clone(),
        tern_transport::tls::https_client(&config.ca_certificate)?,
    )
    .with_bearer(secret.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let metrics = runtime.block_on(client.send(hyper::Method::GET, "/metrics", None))?;
    assert!(String::from_utf8_lossy(&metrics).contains("tern_agents"));
    assert_eq!(cp.agent("edge")?.revoked, None, "nothing changed");
    Ok(())
}
