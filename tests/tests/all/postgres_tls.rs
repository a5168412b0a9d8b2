//! The control plane's link to PostgreSQL under TLS and a password: a real server from the
//! machine's packages that takes TCP clients with TLS and SCRAM only. A control plane whose
//! `config.toml` names `sslmode=verify-full` and a password file serves its fleet over it,
//! also after the server restarts;
//! each libpq mode checks what it says, and every way of getting it wrong is refused with
//! a message that names why.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tern_control_plane::backend::PostgresBackend;
use tern_control_plane::backend::postgres::testing::{self, TestPostgres, TlsSettings};
use tern_control_plane::backend::postgres::{Link, LinkError, Secrets, check_url};
use tern_e2e::{FLEET_TIMEOUT, Fleet, free_port, wait_for};
use tern_transport::pki::CertificateAuthority;

const PASSWORD: &str = "s3cret: with 'quotes' and \\ too";

/// A server with TLS on loopback, its CA's certificate in `dir`, and the port.
struct Server {
    postgres: TestPostgres,
    port: u16,
    ca: PathBuf,
    other_ca: PathBuf,
}

fn start(dir: &Path) -> Option<Server> {
    let ca = CertificateAuthority::generate("database CA").expect("a CA");
    let server = ca.issue_server(&[]).expect("a server certificate");
    let port = free_port();
    let postgres = TestPostgres::start_tls(&TlsSettings {
        port,
        cert_pem: format!("{}{}", server.cert_pem, ca.cert_pem()),
        key_pem: server.key_pem,
        password: PASSWORD.to_owned(),
    })?;
    let other = CertificateAuthority::generate("someone else's CA").expect("a CA");
    let (ca_path, other_path) = (dir.join("db-ca.pem"), dir.join("other-ca.pem"));
    std::fs::write(&ca_path, ca.cert_pem()).expect("write the CA");
    std::fs::write(&other_path, other.cert_pem()).expect("write the CA");
    Some(Server {
        postgres,
        port,
        ca: ca_path,
        other_ca: other_path,
    })
}

/// A file holding `text`, with `mode`.
fn secret_file(path: &Path, text: &str, mode: u32) -> PathBuf {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path.to_owned()
}

/// Opens a backend over `url` with `secrets`: the error's text, or nothing.
fn open(url: &str, secrets: &Secrets) -> Result<(), String> {
    let link = Link::parse(url, secrets).map_err(|e| e.to_string())?;
    PostgresBackend::open(&link, &testing::namespace(), 1)
        .map(drop)
        .map_err(|e| e.to_string())
}

#[test]
fn a_control_plane_serves_its_fleet_over_verified_tls_with_the_password_in_a_file()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let Some(mut server) = start(tmp.path()) else {
        return Ok(());
    };
    let password_file = secret_file(&tmp.path().join("pg-password"), PASSWORD, 0o600);
    let store = format!(
        "postgres://tern@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        server.port,
        server.ca.display()
    );
    let fleet = Fleet::start_tuned(1, &[], move |config| {
        config.store = Some(store);
        config.store_password_file = Some(password_file);
    })?;
    fleet.serve_topk()?;
    assert_eq!(fleet.infer(0)?, 200);

    let config = std::fs::read_to_string(fleet.cp.dir.join("config.toml"))?;
    assert!(
        config.contains("sslmode=verify-full") && !config.contains("s3cret"),
        "config.toml names the link's settings, never the password:\n{config}"
    );
    let mode = std::fs::metadata(fleet.cp.dir.join("config.toml"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "config.toml is the owner's alone");

    // Every TCP connection the server holds is the control plane's, and under TLS.
    let connections = |url: &str, ssl: bool| {
        testing::query_number(
            url,
            &format!(
                "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.client_addr IS NOT NULL AND s.ssl = {ssl}"
            ),
        )
        .map_err(anyhow::Error::msg)
    };
    assert!(
        connections(&server.postgres.url, true)? > 0,
        "the control plane's"
    );
    assert_eq!(
        connections(&server.postgres.url, false)?,
        0,
        "none in clear"
    );

    // The server restarts (every connection drops at once): the control plane connects again,
    // over TLS and with its password, without a restart of its own, and writes again.
    server.postgres.restart();
    let agents = wait_for(FLEET_TIMEOUT, "the store to answer again", || {
        fleet.cp.ternctl_ok(&["get", "agents", "-o", "name"]).ok()
    })?;
    assert_eq!(agents.trim(), "agent/edge-1");
    fleet.push(&fleet.topk("two", 0)?, 2)?;
    assert!(
        connections(&server.postgres.url, true)? > 0,
        "connected again"
    );
    assert_eq!(
        connections(&server.postgres.url, false)?,
        0,
        "none in clear"
    );
    // `fleet` goes before `server` (declared after it): the control plane stops first.
    Ok(())
}

#[test]
fn each_sslmode_checks_what_it_says_and_a_wrong_link_is_refused_naming_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(server) = start(tmp.path()) else {
        return;
    };
    let (port, ca, other_ca) = (server.port, server.ca.display(), server.other_ca.display());
    let good = Secrets {
        password_file: Some(secret_file(&tmp.path().join("pw"), PASSWORD, 0o600)),
        ..Secrets::default()
    };
    let url = |query: &str| format!("postgres://tern@127.0.0.1:{port}/postgres?{query}");
    // The certificate names 127.0.0.1 and localhost, not db.internal (reached by address).
    let renamed = |query: &str| {
        format!("postgres://tern@db.internal:{port}/postgres?hostaddr=127.0.0.1&{query}")
    };

    open(
        &url(&format!("sslmode=verify-full&sslrootcert={ca}")),
        &good,
    )
    .expect("verify-full");
    let error = open(
        &renamed(&format!("sslmode=verify-full&sslrootcert={ca}")),
        &good,
    )
    .expect_err("verify-full checks the host name");
    assert!(error.contains("TLS") && error.contains("Name"), "{error}");
    open(
        &renamed(&format!("sslmode=verify-ca&sslrootcert={ca}")),
        &good,
    )
    .expect("verify-ca checks the chain only");
    for mode in ["verify-ca", "verify-full", "require"] {
        let error = open(
            &url(&format!("sslmode={mode}&sslrootcert={other_ca}")),
            &good,
        )
        .expect_err("a certificate from another CA");
        assert!(error.contains("UnknownIssuer"), "{mode}: {error}");
    }
    // `require` without a CA encrypts, as libpq does, and checks nothing.
    open(&url("sslmode=require"), &good).expect("require");
    let error = open(&url("sslmode=disable"), &good).expect_err("the server wants TLS");
    assert!(error.contains("no encryption"), "{error}");

    // Passwords: none, a wrong one, one from PGPASSWORD's place, one from a passfile.
    let error = open(&url("sslmode=require"), &Secrets::default()).expect_err("no password");
    assert!(error.contains("password"), "{error}");
    let wrong = Secrets {
        password: Some("wrong".to_owned()),
        ..Secrets::default()
    };
    let error = open(&url("sslmode=require"), &wrong).expect_err("a wrong password");
    assert!(error.contains("password authentication failed"), "{error}");
    let from_env = Secrets {
        password: Some(PASSWORD.to_owned()),
        ..Secrets::default()
    };
    open(&url("sslmode=require"), &from_env).expect("the password from PGPASSWORD");
    let escaped = PASSWORD.replace('\\', "\\\\").replace(':', "\\:");
    let passfile = secret_file(
        &tmp.path().join("pgpass"),
        &format!("other:1:x:y:no\n127.0.0.1:{port}:postgres:tern:{escaped}\n"),
        0o600,
    );
    open(
        &url(&format!("sslmode=require&passfile={}", passfile.display())),
        &Secrets::default(),
    )
    .expect("the password from a passfile");

    // Files that others can read are refused before anything is sent.
    let exposed = Secrets {
        password_file: Some(secret_file(&tmp.path().join("pw-open"), PASSWORD, 0o644)),
        ..Secrets::default()
    };
    let error = Link::parse(&url("sslmode=require"), &exposed).expect_err("a readable file");
    assert!(
        matches!(error, LinkError::Exposed { mode: 0o644, .. }),
        "{error}"
    );
    assert!(matches!(
        Link::parse(&url("sslmode=verify-full"), &good),
        Err(LinkError::NoRoots("verify-full"))
    ));
    assert!(matches!(
        Link::parse(&url("sslmode=verify-everything"), &good),
        Err(LinkError::Mode(_))
    ));
    // The system's roots trust every public CA: only with the host name checked.
    assert!(matches!(
        Link::parse(&url("sslmode=require&sslrootcert=system"), &good),
        Err(LinkError::WeakSystemRoots("require"))
    ));
    // A key spelled in percent-encoding is still the key (no silent downgrade to `prefer`).
    let error = open(&url("ssl%6Dode=disable"), &good).expect_err("still sslmode=disable");
    assert!(error.contains("no encryption"), "{error}");

    // config.toml never holds a password, in the user part or as a parameter.
    for bad in [
        format!("postgres://tern:pw@127.0.0.1:{port}/postgres"),
        url("password=x&sslmode=require"),
    ] {
        let error = check_url(&bad).expect_err("a password in config.toml");
        assert!(error.contains("store_password_file"), "{error}");
    }
    check_url(&url(&format!("sslmode=verify-full&sslrootcert={ca}"))).expect("a good URL");
}
