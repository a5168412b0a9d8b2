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
use super::tls::{self, ServerCheck};

/// Why the store's settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the store's URL: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error(
        "the store's URL: sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full"
    )]
    Mode(String),
    #[error(
        "the store's URL: sslmode={0} checks the server's certificate against a CA: name it with sslrootcert=PATH (or sslrootcert=system)"
    )]
    NoRoots(&'static str),
    #[error("the store's URL: sslcert and sslkey go together")]
    HalfIdentity,
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
pub enum TlsMode {
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
            "prefer" => Self::Prefer,
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
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if OURS.contains(&key) {
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
    Ok(())
}

/// A store's connection settings, TLS and password included; cheap to clone.
#[derive(Clone)]
pub struct Link {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    mode: TlsMode,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's own Debug redacts the password.
        f.debug_struct("Link")
            .field("config", &self.config)
            .field("mode", &self.mode)
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
        config.ssl_mode(match mode {
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
                let key_pem = read_secret(&key)?;
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
        let client = tls::client(check, roots, identity).map_err(|source| LinkError::Tls {
            what: "TLS settings",
            path: PathBuf::new(),
            source,
        })?;
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(client),
            mode,
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

    /// The `sslmode` in force.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }
}

/// A password for `config` from `secrets`, in their order.
fn password(
    config: &tokio_postgres::Config,
    secrets: &Secrets,
    url_passfile: Option<&Path>,
) -> Result<Option<String>, LinkError> {
    if let Some(path) = &secrets.password_file {
        let text = read_secret(path)?;
        return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
    }
    if let Some(password) = &secrets.password {
        return Ok(Some(password.clone()));
    }
    let Some(path) = url_passfile.or(secrets.passfile.as_deref()) else {
        return Ok(None);
    };
    // libpq ignores a missing password file; one named in the URL must be there.
    if url_passfile.is_none() && !path.exists() {
        return Ok(None);
    }
    let text = read_secret(path)?;
    let user = config.get_user().unwrap_or_default();
    let target = passfile::Target {
        host: match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host,
            // libpq matches a Unix socket as `localhost`.
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

/// Reads a file that holds a secret, refusing one that others can read.
fn read_secret(path: &Path) -> Result<String, LinkError> {
    let metadata = std::fs::metadata(path).map_err(|source| LinkError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(LinkError::Exposed {
            path: path.to_owned(),
            mode,
        });
    }
    read(path)
}
