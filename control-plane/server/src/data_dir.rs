//! The control plane's data directory: what `init` creates and `serve` loads.
//!
//! ```text
//! D/config.toml          listen addresses and fleet timing
//! D/ternctl.toml         API address, CA certificate and admin credential for ternctl
//! D/ca.crt, D/ca.key     the transport CA (key mode 0600)
//! D/server.crt, .key     the control plane's certificate chain (server, then CA) and key
//! D/admin-token.sha256   hash of the admin credential
//! D/online.key           Ed25519 key that signs desired states (mode 0600)
//! D/registry/            sled: agents, enrollment tokens, releases, pipelines, deployments
//! D/artifacts/           artifacts by SHA-256 (uploads in progress under uploads/), unless
//!                        `artifacts` in config.toml puts them elsewhere (a shared store)
//! ```

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use rand::RngCore;
use tern_proto::api::CliConfig;
use tern_proto::signing::SecretKey;
use tern_transport::{CertificateAuthority, Identity, PkiError, TlsError};

use crate::config::{ConfigError, ControlPlaneConfig};

/// Options of `tern-control-plane init`.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub listen_agents: Option<SocketAddr>,
    pub listen_api: Option<SocketAddr>,
    /// Extra DNS names or IP addresses for the server certificate (what agents dial is not
    /// checked against it; see [`tern_proto::CONTROL_PLANE_SERVER_NAME`]).
    pub server_names: Vec<String>,
    /// `store` of config.toml: a PostgreSQL URL that replicas share.
    pub store: Option<String>,
    /// `store_password_file` of config.toml: where the store's password is kept.
    pub store_password_file: Option<PathBuf>,
    /// `artifacts` of config.toml: `s3://bucket/prefix` or a directory every replica reaches.
    pub artifacts: Option<String>,
}

/// Options of `tern-control-plane replica init`.
#[derive(Debug, Clone, Default)]
pub struct ReplicaOptions {
    pub listen_agents: Option<SocketAddr>,
    pub listen_api: Option<SocketAddr>,
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0} already exists and is not empty; refusing to overwrite a control plane's data")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{0} is not a control plane data dir: {1}")]
    First(PathBuf, Box<LoadError>),
    #[error("{path}: {problem}; replicas share both (set them with `init --store --artifacts`)")]
    NotShared {
        path: PathBuf,
        problem: &'static str,
    },
}

/// Why a data dir cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source} (run `tern-control-plane init` first?)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    Pki { path: PathBuf, source: PkiError },
    #[error("{path}: {source}")]
    Tls { path: PathBuf, source: TlsError },
}

/// Everything `serve` needs from the data dir.
#[derive(Debug)]
pub struct LoadedDataDir {
    pub config: ControlPlaneConfig,
    pub ca: CertificateAuthority,
    pub server_identity: Identity,
    pub admin_token_sha256: [u8; 32],
    /// Signs every desired state sent to agents.
    pub online_key: SecretKey,
}

/// Paths inside a control plane data dir.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn ternctl_config(&self) -> PathBuf {
        self.root.join("ternctl.toml")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn admin_token_hash(&self) -> PathBuf {
        self.root.join("admin-token.sha256")
    }
    pub fn registry(&self) -> PathBuf {
        self.root.join("registry")
    }
    pub fn online_key(&self) -> PathBuf {
        self.root.join("online.key")
    }
    pub fn artifacts(&self) -> PathBuf {
        self.root.join("artifacts")
    }
    /// The telemetry database (its own sled database).
    pub fn telemetry(&self) -> PathBuf {
        self.root.join("telemetry")
    }

    /// Creates a new control plane identity. Refuses a directory that exists and is not empty.
    pub fn init(&self, options: &InitOptions) -> Result<ControlPlaneConfig, InitError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| InitError::Io { path, source }
        };
        if let Ok(mut entries) = std::fs::read_dir(&self.root)
            && entries.next().is_some()
        {
            return Err(InitError::Exists(self.root.clone()));
        }
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        tern_transport::secrets::tighten(&self.root, &[]).map_err(io(&self.root))?;
        tern_transport::secrets::tighten(&self.root, &[]).map_err(io(&self.root))?;

        let mut config = ControlPlaneConfig::default();
        if let Some(addr) = options.listen_agents {
            config.listen_agents = addr;
        }
        if let Some(addr) = options.listen_api {
            config.listen_api = addr;
        }
        config.store = options.store.clone();
        config.store_password_file = options.store_password_file.clone();
        config.artifacts = options.artifacts.clone();
        config.validate(&self.config().display().to_string())?;

        let ca = CertificateAuthority::generate("Tern control plane CA")?;
        let mut names = options.server_names.clone();
        for addr in [config.listen_agents, config.listen_api] {
            if !addr.ip().is_unspecified() {
                names.push(addr.ip().to_string());
            }
        }
        let server = ca.issue_server(&names)?;
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        let admin_token = hex::encode(token);

        write_file(&self.ca_cert(), ca.cert_pem().as_bytes(), false)
            .map_err(io(&self.ca_cert()))?;
        write_file(&self.ca_key(), ca.key_pem().as_bytes(), true).map_err(io(&self.ca_key()))?;
        let chain = format!("{}{}", server.cert_pem, ca.cert_pem());
        write_file(&self.server_cert(), chain.as_bytes(), false)
            .map_err(io(&self.server_cert()))?;
        write_file(&self.server_key(), server.key_pem.as_bytes(), true)
            .map_err(io(&self.server_key()))?;
        let token_hash = hex::encode(tern_proto::sha256(admin_token.as_bytes()));
        write_file(&self.admin_token_hash(), token_hash.as_bytes(), true)
            .map_err(io(&self.admin_token_hash()))?;
        // The store's settings may name a password file or carry a user: the owner's alone.
        write_file(&self.config(), config.to_toml().as_bytes(), true)
            .map_err(io(&self.config()))?;
        self.ensure_online_key().map_err(io(&self.online_key()))?;

        let cli = CliConfig {
            api: dialable(config.listen_api).to_string(),
            admin_token,
            ca_certificate: ca.cert_pem().to_owned(),
        };
        let cli_text = toml::to_string_pretty(&cli).expect("the CLI config always serializes");
        write_file(&self.ternctl_config(), cli_text.as_bytes(), true)
            .map_err(io(&self.ternctl_config()))?;
        Ok(config)
    }

    /// Prepares another replica of the control plane in `first`: its CA, server identity,
    /// admin credential and online key (copied file to file: they never pass through the
    /// store), its store and artifacts, and addresses of its own. Refuses a directory that
    /// exists and is not empty, and a first control plane whose store replicas cannot share.
    pub fn init_replica(
        &self,
        first: &DataDir,
        options: &ReplicaOptions,
    ) -> Result<ControlPlaneConfig, InitError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| InitError::Io { path, source }
        };
        if let Ok(mut entries) = std::fs::read_dir(&self.root)
            && entries.next().is_some()
        {
            return Err(InitError::Exists(self.root.clone()));
        }
        let loaded = first
            .load()
            .map_err(|e| InitError::First(first.root.clone(), Box::new(e)))?;
        let not_shared = |problem| InitError::NotShared {
            path: first.config(),
            problem,
        };
        let mut config = loaded.config;
        if config.store.is_none() {
            return Err(not_shared(
                "its records are in sled, on its own disk (no `store`)",
            ));
        }
        if config.artifacts.is_none() {
            return Err(not_shared(
                "its artifacts are in its data directory (no `artifacts`)",
            ));
        }
        if let Some(addr) = options.listen_agents {
            config.listen_agents = addr;
        }
        if let Some(addr) = options.listen_api {
            config.listen_api = addr;
        }
        // The first's advertised address is the first's: this replica announces its own.
        config.advertise_agents = None;
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        tern_transport::secrets::tighten(&self.root, &[]).map_err(io(&self.root))?;
        let copies = [
            (first.ca_cert(), self.ca_cert(), false),
            (first.ca_key(), self.ca_key(), true),
            (first.server_cert(), self.server_cert(), false),
            (first.server_key(), self.server_key(), true),
            (first.admin_token_hash(), self.admin_token_hash(), true),
            (first.online_key(), self.online_key(), true),
        ];
        for (from, to, secret) in copies {
            let bytes = std::fs::read(&from).map_err(io(&from))?;
            write_file(&to, &bytes, secret).map_err(io(&to))?;
        }
        write_file(&self.config(), config.to_toml().as_bytes(), true)
            .map_err(io(&self.config()))?;
        let cli_text =
            std::fs::read_to_string(first.ternctl_config()).map_err(io(&first.ternctl_config()))?;
        let mut cli: CliConfig = toml::from_str(&cli_text).map_err(|e| InitError::Io {
            path: first.ternctl_config(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        cli.api = dialable(config.listen_api).to_string();
        let cli_text = toml::to_string_pretty(&cli).expect("the CLI config always serializes");
        write_file(&self.ternctl_config(), cli_text.as_bytes(), true)
            .map_err(io(&self.ternctl_config()))?;
        Ok(config)
    }

    /// Creates the online key unless there is one.
    fn ensure_online_key(&self) -> std::io::Result<()> {
        if self.online_key().exists() {
            return Ok(());
        }
        write_file(
            &self.online_key(),
            SecretKey::generate().to_pem().as_bytes(),
            true,
        )
    }

    /// Tightens the data dir to 0700 and its secret files (keys, the admin credential's hash,
    /// read-only credentials, `config.toml`, `ternctl.toml`) to 0600 where they are looser;
    /// says which it changed.
    pub fn tighten(&self) -> Result<Vec<String>, LoadError> {
        let secrets = [
            self.config(),
            self.ternctl_config(),
            self.ca_key(),
            self.server_key(),
            self.admin_token_hash(),
            self.online_key(),
            self.root.join("credentials.json"),
        ];
        let refs: Vec<&Path> = secrets.iter().map(PathBuf::as_path).collect();
        tern_transport::secrets::tighten(&self.root, &refs).map_err(|source| LoadError::Io {
            path: self.root.clone(),
            source,
        })
    }

    /// Loads what `serve` needs.
    pub fn load(&self) -> Result<LoadedDataDir, LoadError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| LoadError::Io { path, source })
        };
        let config_path = self.config();
        let config = ControlPlaneConfig::parse(
            &read(config_path.clone())?,
            &config_path.display().to_string(),
        )?;
        let ca = CertificateAuthority::from_pem(&read(self.ca_cert())?, &read(self.ca_key())?)
            .map_err(|source| LoadError::Pki {
                path: self.ca_key(),
                source,
            })?;
        let server_identity =
            Identity::from_pem(&read(self.server_cert())?, &read(self.server_key())?).map_err(
                |source| LoadError::Tls {
                    path: self.server_cert(),
                    source,
                },
            )?;
        let hash_text = read(self.admin_token_hash())?;
        let admin_token_sha256 = hex::decode(hash_text.trim())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| LoadError::Io {
                path: self.admin_token_hash(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "not a SHA-256 hex digest",
                ),
            })?;
        // Data dirs made before desired states were signed get their online key now.
        self.ensure_online_key().map_err(|source| LoadError::Io {
            path: self.online_key(),
            source,
        })?;
        let online_key =
            SecretKey::from_pem(&read(self.online_key())?).map_err(|e| LoadError::Io {
                path: self.online_key(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
        Ok(LoadedDataDir {
            config,
            ca,
            server_identity,
            admin_token_sha256,
            online_key,
        })
    }
}

/// The address a local client should dial for a listen address (`0.0.0.0` → loopback).
pub fn dialable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_data_dir_and_refuses_to_overwrite_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("cp"));
        let opts = InitOptions {
            listen_agents: Some("127.0.0.1:17443".parse().expect("addr")),
            ..InitOptions::default()
        };
        dir.init(&opts).expect("init");
        let loaded = dir.load().expect("load");
        assert_eq!(loaded.config.listen_agents.port(), 17443);

        let cli: CliConfig =
            toml::from_str(&std::fs::read_to_string(dir.ternctl_config()).expect("read"))
                .expect("toml");
        assert_eq!(cli.api, "127.0.0.1:7444");
        assert_eq!(
            tern_proto::sha256(cli.admin_token.as_bytes()),
            loaded.admin_token_sha256
        );

        let err = dir.init(&opts).unwrap_err();
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |path: &Path| std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&dir.ca_key()), 0o600);
            assert_eq!(mode(&dir.config()), 0o600, "config.toml is the owner's");
            assert_eq!(mode(dir.root()), 0o700, "so is the data dir");
            // Opened up by hand: the next start closes it again, and says so.
            std::fs::set_permissions(dir.config(), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
            let said = dir.tighten().expect("tighten");
            assert!(
                said[0].contains("config.toml") && said[0].contains("(644)"),
                "{said:?}"
            );
            assert_eq!(mode(&dir.config()), 0o600);
        }
    }
}
