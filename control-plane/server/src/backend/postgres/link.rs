//! How the control plane reaches PostgreSQL: the store's URL, read as libpq reads it for TLS
//! (`sslmode` of `disable`, `prefer`, `require`, `verify-ca`, `verify-full`; `sslrootcert`,
//! `sslcert`, `sslkey`), and a password from outside `config.toml`: a file the config names,
//! `PGPASSWORD`, or a password file (`passfile=`, `PGPASSFILE`, `~/.pgpass`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::passfile;
use tern_transport::server_check::{self, ServerCheck};

/// Why the store's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the store's URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "the store's URL: sslmode={0:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
    )]
    Mode(String),
    #[error(
        "the store's URL: sslmode={0} checks the server's certificate against a CA: name it with sslrootcert=PATH (or sslrootcert=system)"
    )]
    NoRoots(&'static str),
    #[error("the store's URL: sslcert and sslkey go together")]
    HalfIdentity,
    #[error(
        "the store's URL: sslrootcert=system trusts every public CA, so it needs sslmode=verify-full (sslmode={0} would accept any certificate such a CA signed)"
    )]
    WeakSystemRoots(&'static str),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} can be read by others (mode {mode:03o}): it holds a secret; chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{what} {path}: {source}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: tern_transport::tls::TlsError,
    },
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Result<Self, LinkError> {
        Ok(match text {
            "disable" => Self::Disable,
            // libpq's `allow` tries without TLS first; TLS first is the safer reading.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(LinkError::Mode(other.to_owned())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where a password may come from besides the URL, in this order.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// A file holding the password (its first line), named in `config.toml`.
    pub password_file: Option<PathBuf>,
    /// `PGPASSWORD`.
    pub password: Option<String>,
    /// A libpq password file: the URL's `passfile=`, else this (`PGPASSFILE`, else
    /// `~/.pgpass`).
    pub passfile: Option<PathBuf>,
}

impl Secrets {
    /// The process's: `password_file` from the config, `PGPASSWORD`, `PGPASSFILE` or
    /// `~/.pgpass`.
    pub fn from_env(password_file: Option<&Path>) -> Self {
        let passfile = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
        Self {
            password_file: password_file.map(Path::to_owned),
            password: std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()),
            passfile,
        }
    }
}

/// The URL's own settings and libpq's TLS ones, apart.
struct Parts {
    config: tokio_postgres::Config,
    mode: TlsMode,
    root_cert: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    passfile: Option<PathBuf>,
}

/// The query parameters this module reads; tokio-postgres reads the rest.
const OURS: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

fn split(url: &str) -> Result<Parts, LinkError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut ours = std::collections::BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Keys are percent-decoded as tokio-postgres decodes them: `ssl%6Dode` is `sslmode`.
        let decoded = percent_decode_str(raw_key).decode_utf8_lossy();
        if let Some(&key) = OURS.iter().find(|ours| **ours == decoded) {
            ours.insert(
                key,
                percent_decode_str(value).decode_utf8_lossy().into_owned(),
            );
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let config: tokio_postgres::Config = rest.parse().map_err(LinkError::Url)?;
    let mode = ours
        .get("sslmode")
        .map_or(Ok(TlsMode::Prefer), |m| TlsMode::parse(m))?;
    Ok(Parts {
        config,
        mode,
        root_cert: ours.remove("sslrootcert"),
        cert: ours.remove("sslcert").map(PathBuf::from),
        key: ours.remove("sslkey").map(PathBuf::from),
        passfile: ours.remove("passfile").map(PathBuf::from),
    })
}

/// Checks a store URL for `config.toml`: it parses, its TLS settings are known, and it holds
/// no password (whoever can read the file would have it).
pub fn check_url(url: &str) -> Result<(), String> {
    let parts = split(url).map_err(|e| e.to_string())?;
    if parts.config.get_password().is_some() {
        return Err(
            "holds a password, which config.toml must not: put it in a file named by \
             store_password_file, in PGPASSWORD, or in a password file (~/.pgpass)"
                .to_owned(),
        );
    }
    if matches!(parts.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && parts.root_cert.is_none() {
        return Err(LinkError::NoRoots(parts.mode.name()).to_string());
    }
    if parts.root_cert.as_deref() == Some("system") && parts.mode != TlsMode::VerifyFull {
        return Err(LinkError::WeakSystemRoots(parts.mode.name()).to_string());
    }
    Ok(())
}

/// A store's connection settings, TLS and password included; cheap to clone.
#[derive(Clone)]
pub struct Link {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's own Debug redacts the password.
        f.debug_struct("Link")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Reads `url` and takes a password from `secrets` when the URL has none.
    pub fn parse(url: &str, secrets: &Secrets) -> Result<Self, LinkError> {
        let Parts {
            mut config,
            mode,
            root_cert,
            cert,
            key,
            passfile,
        } = split(url)?;
        // As libpq: a Unix socket carries no TLS, whatever `sslmode` says.
        let sockets_only = config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
        config.ssl_mode(match mode {
            _ if sockets_only => SslMode::Disable,
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_password().is_none()
            && let Some(password) = password(&config, secrets, passfile.as_deref())?
        {
            config.password(password);
        }
        let roots = match root_cert.as_deref() {
            None => None,
            Some("system") if mode != TlsMode::VerifyFull => {
                return Err(LinkError::WeakSystemRoots(mode.name()));
            }
            Some("system") => {
                Some(
                    tern_transport::tls::system_roots().map_err(|source| LinkError::Tls {
                        what: "sslrootcert",
                        path: "system".into(),
                        source,
                    })?,
                )
            }
            Some(path) => {
                let path = Path::new(path);
                let pem = read(path)?;
                Some(
                    tern_transport::tls::roots(&pem).map_err(|source| LinkError::Tls {
                        what: "sslrootcert",
                        path: path.to_owned(),
                        source,
                    })?,
                )
            }
        };
        let check = match (mode, &roots) {
            (TlsMode::VerifyFull, _) => ServerCheck::ChainAndName,
            (TlsMode::VerifyCa, _) => ServerCheck::Chain,
            // As libpq: with a CA named, `require` checks the chain.
            (_, Some(_)) => ServerCheck::Chain,
            (_, None) => ServerCheck::Nothing,
        };
        if check != ServerCheck::Nothing && roots.is_none() {
            return Err(LinkError::NoRoots(mode.name()));
        }
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let key_pem = read_secret(&key, Owners::RootMayShare)?;
                Some(
                    tern_transport::tls::Identity::from_pem(&read(&cert)?, &key_pem).map_err(
                        |source| LinkError::Tls {
                            what: "sslcert",
                            path: cert.clone(),
                            source,
                        },
                    )?,
                )
            }
            _ => return Err(LinkError::HalfIdentity),
        };
        let client =
            server_check::client(check, roots, identity).map_err(|source| LinkError::Tls {
                what: "TLS settings",
                path: PathBuf::new(),
                source,
            })?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(client),
        })
    }

    /// The connection's settings (password included).
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector for [`tokio_postgres::Config::connect`].
    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }
}

/// A password for `config` from `secrets`, in their order.
fn password(
    config: &tokio_postgres::Config,
    secrets: &Secrets,
    url_passfile: Option<&Path>,
) -> Result<Option<String>, LinkError> {
    if let Some(path) = &secrets.password_file {
        let text = read_secret(path, Owners::OwnerOnly)?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    if let Some(password) = &secrets.password {
        return Ok(Some(password.clone()));
    }
    let Some(path) = url_passfile.or(secrets.passfile.as_deref()) else {
        return Ok(None);
    };
    let text = match read_secret(path, Owners::OwnerOnly) {
        Ok(text) => text,
        // One named in the URL must be there and private.
        Err(e) if url_passfile.is_some() => return Err(e),
        // The implicit one (`PGPASSFILE`, `~/.pgpass`) as libpq treats it: missing, not a
        // file, or readable by others, it is passed over (the last with a warning).
        Err(e) => {
            if matches!(e, LinkError::Exposed { .. }) {
                tracing::warn!(error = %e, "password file passed over");
            }
            return Ok(None);
        }
    };
    let user = config.get_user().unwrap_or_default();
    let socket;
    let target = passfile::Target {
        host: match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host,
            // libpq matches the default socket directory as `localhost`, another by its path.
            Some(Host::Unix(path)) if path != Path::new(DEFAULT_SOCKET_DIR) => {
                socket = path.display().to_string();
                &socket
            }
            _ => "localhost",
        },
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config.get_dbname().unwrap_or(user),
        user,
    };
    Ok(passfile::lookup(&text, &target))
}

fn read(path: &Path) -> Result<String, LinkError> {
    std::fs::read_to_string(path).map_err(|source| LinkError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Where PostgreSQL's packages put the server's socket (libpq's `DEFAULT_PGSOCKET_DIR`).
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// Who else may read a secret file, as libpq allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    /// Its owner alone (0600 or less): password files.
    OwnerOnly,
    /// Its owner; when that is root, its group too (0640): private keys.
    RootMayShare,
}

/// Reads a file that holds a secret, refusing one that others can read.
fn read_secret(path: &Path, owners: Owners) -> Result<String, LinkError> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).map_err(|source| LinkError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !metadata.is_file() {
        return Err(LinkError::Read {
            path: path.to_owned(),
            source: std::io::Error::other("not a regular file"),
        });
    }
    let mode = metadata.permissions().mode() & 0o777;
    let others = if owners == Owners::RootMayShare && metadata.uid() == 0 {
        0o037
    } else {
        0o077
    };
    if mode & others != 0 {
        return Err(LinkError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    read(path)
}
