//! Publishing: keys, the trust root, signing and pushing releases, with real processes.

use std::process::Command;

use tern_e2e::{ControlPlane, Publisher, path_str};
use tern_proto::api::{ReleaseView, UploadProgress};

fn releases(cp: &ControlPlane) -> anyhow::Result<Vec<ReleaseView>> {
    Ok(serde_json::from_str(
        &cp.ternctl_ok(&["get", "releases", "-o", "json"])?,
    )?)
}

#[test]
fn signed_release_is_pushed_and_listed() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    let key_mode = std::fs::metadata(publisher.key("publisher.key"))?.permissions();
    #[cfg(unix)]
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
        0o600
    );

    let model = tmp.path().join("model.onnx");
    std::fs::write(&model, vec![7u8; 3 << 20])?;
    // Nothing is accepted before a trust root is pinned.
    let refused = cp.ternctl(&["push", &path_str(&model)?]);
    assert!(!refused.status.success());
    publisher.sign(&cp, "publisher", &model, "model", "detector", 1)?;
    let refused = cp.ternctl(&["push", "--quiet", &path_str(&model)?]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("trust root"), "{stderr}");

    publisher.trust_init(&cp)?;
    let shown = cp.ternctl_ok(&["trust", "show"])?;
    assert!(
        shown.contains("publisher") && shown.contains("Version:"),
        "{shown}"
    );
    let out = cp.ternctl_ok(&["push", "--quiet", &path_str(&model)?])?;
    assert!(out.contains("detector:1"), "{out}");

    let listed = releases(&cp)?;
    assert_eq!(listed.len(), 1);
    let r = &listed[0];
    assert_eq!(
        (r.name.as_str(), r.version, r.size),
        ("detector", 1, 3 << 20)
    );
    assert!(r.complete, "{r:?}");
    let table = cp.ternctl_ok(&["get", "releases"])?;
    assert!(
        table.contains("detector") && table.contains("yes"),
        "{table}"
    );

    // Pushing again is a no-op; a second content under the same version is refused.
    cp.ternctl_ok(&["push", "--quiet", &path_str(&model)?])?;
    let other = tmp.path().join("other.onnx");
    std::fs::write(&other, b"different")?;
    publisher.sign(&cp, "publisher", &other, "model", "detector", 1)?;
    let conflict = cp.ternctl(&["push", "--quiet", &path_str(&other)?]);
    let stderr = String::from_utf8_lossy(&conflict.stderr);
    assert!(
        !conflict.status.success() && stderr.contains("already exists"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn push_refuses_unknown_signers_and_tampered_files() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    cp.ternctl_ok(&[
        "keys",
        "generate",
        "--out",
        &path_str(&publisher.key("stranger"))?,
    ])?;

    let plugin = tmp.path().join("p.wasm");
    std::fs::write(&plugin, b"component bytes")?;
    publisher.sign(&cp, "stranger", &plugin, "plugin", "p", 1)?;
    let out = cp.ternctl(&["push", "--quiet", &path_str(&plugin)?]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("signed by 0 trusted key"),
        "{stderr}"
    );

    std::fs::remove_file(tmp.path().join("p.wasm.release"))?;
    publisher.sign(&cp, "publisher", &plugin, "plugin", "p", 1)?;
    std::fs::write(&plugin, b"component bytez")?;
    let out = cp.ternctl(&["push", "--quiet", &path_str(&plugin)?]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("does not match"),
        "{stderr}"
    );
    assert!(releases(&cp)?.is_empty());
    Ok(())
}

#[test]
fn interrupted_push_resumes_where_it_stopped() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let cp = ControlPlane::start(tmp.path(), |_| {})?;
    let publisher = Publisher::generate(&cp, tmp.path())?;
    publisher.trust_init(&cp)?;
    let model = tmp.path().join("big.onnx");
    let bytes: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&model, &bytes)?;
    publisher.sign(&cp, "publisher", &model, "model", "big", 1)?;
    let signed = Publisher::release(&model)?;

    // A first push that got as far as 5 MiB before the connection dropped.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config: tern_proto::api::CliConfig =
        toml::from_str(&std::fs::read_to_string(cp.ternctl_config())?)?;
    let client = tern_transport::https::HttpsClient::new(
        config.api,
        tern_transport::tls::https_client(&config.ca_certificate)?,
    )
    .with_bearer(config.admin_token);
    let path = format!("/v1/artifacts/{}", signed.signed.digest.hex());
    let progress: UploadProgress = runtime.block_on(async {
        let _: ReleaseView = client.post("/v1/releases", &signed).await?;
        let body = client
            .send(
                hyper::Method::PUT,
                &format!("{path}?offset=0"),
                Some(bytes[..5 << 20].to_vec()),
            )
            .await?;
        anyhow::Ok(serde_json::from_slice(&body)?)
    })?;
    assert_eq!((progress.received, progress.complete), (5 << 20, false));
    let listed = releases(&cp)?;
    assert!(!listed[0].complete && listed[0].uploaded == 5 << 20);

    let out = Command::new(tern_e2e::bin("ternctl"))
        .arg("--config")
        .arg(cp.ternctl_config())
        .args(["push", &path_str(&model)?])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("resuming at byte {}", 5 << 20)),
        "{stderr}"
    );
    let stored = std::fs::read(cp.dir.join("artifacts").join(signed.signed.digest.hex()))?;
    assert!(stored == bytes, "the stored artifact differs from the file");
    assert!(releases(&cp)?[0].complete);
    Ok(())
}
