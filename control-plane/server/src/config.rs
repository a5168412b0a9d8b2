//! `config.toml`: listen addresses and fleet timing. Parsed once at start; unknown keys and
//! invalid values are errors naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default UDP (QUIC) and TCP (enrollment) address for agents.
pub const DEFAULT_LISTEN_AGENTS: &str = "0.0.0.0:7443";
/// Default address of the HTTPS admin API.
pub const DEFAULT_LISTEN_API: &str = "127.0.0.1:7444";
/// Default interval at which agents send heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default silence after which an agent is `NotReady` (three missed heartbeats).
pub const DEFAULT_NOT_READY_AFTER: Duration = Duration::from_secs(15);
/// Default limit of concurrent agent connections.
pub const DEFAULT_MAX_AGENT_CONNECTIONS: usize = 10_000;
/// Default retention of telemetry: 90 days.
pub const DEFAULT_TELEMETRY_RETENTION: Duration = Duration::from_secs(90 * 24 * 3600);

/// Default span over which drift is judged.
pub const DEFAULT_DRIFT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Default interval between drift judgements.
pub const DEFAULT_DRIFT_INTERVAL: Duration = Duration::from_secs(30);

/// The control plane's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// Where agents connect: QUIC on this UDP address, enrollment over HTTPS on the same TCP port.
    pub listen_agents: SocketAddr,
    /// Where the control plane's records live: a PostgreSQL URL (`postgres://user@host/db`,
    /// with libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `passfile`, but never a
    /// password), or, when absent, sled databases in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// A file (mode 0600) whose first line is the store's password; else `PGPASSWORD`, else a
    /// password file (`passfile=`, `PGPASSFILE`, `~/.pgpass`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_password_file: Option<PathBuf>,
    /// Where agents reach this replica (`host:port`), handed to agents at enrollment so they
    /// can fail over to it; `listen_agents` when that names one interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_agents: Option<String>,
    /// Where artifacts live: `s3://bucket/prefix` (an S3-compatible store; endpoint and
    /// credentials from the `AWS_*` environment variables) or an absolute directory, which
    /// replicas of one control plane share; `artifacts/` in the data directory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<String>,
    /// How long the lease on the work that must happen once (rollouts, drift, compaction,
    /// exports) outlives its holder's last renewal: when the holder dies, another replica
    /// takes the work over after this long. Replicas' clocks must agree well within it.
    #[serde(with = "duration_text", default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// Where the HTTPS admin API listens.
    pub listen_api: SocketAddr,
    /// How often agents send heartbeats.
    #[serde(with = "duration_text", default = "default_heartbeat_interval")]
    pub heartbeat_interval: Duration,
    /// Silence after which an agent turns `NotReady`.
    #[serde(with = "duration_text", default = "default_not_ready_after")]
    pub not_ready_after: Duration,
    /// Concurrent agent connections accepted; more are refused.
    #[serde(default = "default_max_agent_connections")]
    pub max_agent_connections: usize,
    /// How long telemetry is kept (at 1 h resolution after the first week).
    #[serde(with = "duration_text", default = "default_telemetry_retention")]
    pub telemetry_retention: Duration,
    /// The span of telemetry over which each monitored feature's PSI is computed.
    #[serde(with = "duration_text", default = "default_drift_window")]
    pub drift_window: Duration,
    /// How often drift is judged and alerts raised or resolved.
    #[serde(with = "duration_text", default = "default_drift_interval")]
    pub drift_interval: Duration,
    /// Where to push the fleet's metrics as OpenTelemetry (OTLP/HTTP JSON), e.g.
    /// `http://127.0.0.1:4318` or `https://otlp.example.com` (a collector; `/v1/metrics` is
    /// appended). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How often the OTLP export runs.
    #[serde(with = "duration_text", default = "default_otlp_interval")]
    pub otlp_interval: Duration,
    /// Headers sent with every OTLP export (a hosted collector's API key, a tenant).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub otlp_headers: BTreeMap<String, String>,
    /// For an `https://` endpoint: a PEM file of the CA(s) that sign the collector's
    /// certificate; the system's root certificates when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_certificate: Option<PathBuf>,
    /// For an `https://` endpoint that asks for one: the client certificate chain (PEM) the
    /// control plane presents, with `otlp_client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_client_certificate: Option<PathBuf>,
    /// The private key (PEM) of `otlp_client_certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_client_key: Option<PathBuf>,
    /// Lifetime of the certificates agents get at enrollment and renewal; agents renew when
    /// two thirds of it have passed, and one offline past it needs a new token.
    #[serde(with = "duration_text", default = "default_agent_cert_ttl")]
    pub agent_cert_ttl: Duration,
    /// Bytes the data directory's filesystem keeps free: an artifact upload that would leave
    /// less is refused (507) before a byte is written.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

/// Default of `min_free_bytes`: 256 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 << 20;

fn default_min_free_bytes() -> u64 {
    DEFAULT_MIN_FREE_BYTES
}

fn default_agent_cert_ttl() -> Duration {
    tern_transport::pki::DEFAULT_AGENT_CERT_TTL
}

/// Default interval of the OTLP export.
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(30);

fn default_otlp_interval() -> Duration {
    DEFAULT_OTLP_INTERVAL
}

/// Where the OTLP export goes: `host:port`, the request path, and whether over TLS (to
/// `host`, the name the collector's certificate must carry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    pub addr: String,
    pub host: String,
    pub path: String,
    pub tls: bool,
}

impl OtlpTarget {
    /// `http://HOST:PORT[/BASE]` → the address and `BASE/v1/metrics`.
    pub fn parse(endpoint: &str) -> Result<Self, String> {
        Self::parse_with(endpoint, true)
    }

    /// A metrics endpoint given whole (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`): its path as is.
    pub fn parse_exact(endpoint: &str) -> Result<Self, String> {
        Self::parse_with(endpoint, false)
    }

    fn parse_with(endpoint: &str, append: bool) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = endpoint.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = endpoint.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(
                "must start with `http://` or `https://` (the OTLP/HTTP endpoint of a collector)"
                    .to_owned(),
            );
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        // `host`, `host:port`, `[v6]` or `[v6]:port`; the scheme's port when none is given.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !authority.ends_with(']') => (host, Some(port)),
            _ => (authority, None),
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| format!("`{port}` is not a port"))?,
            None if tls => 443,
            None => 80,
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.is_empty() || bare.contains(['[', ']', '@', ' ']) {
            return Err("expected `http[s]://HOST[:PORT][/PATH]`".into());
        }
        let addr = format!("{host}:{port}");
        let path = match (append, base) {
            (true, base) => format!("{base}{}", tern_proto::otlp::METRICS_PATH),
            (false, "") => "/".to_owned(),
            (false, path) => path.to_owned(),
        };
        Ok(Self {
            addr,
            host: bare.to_owned(),
            path,
            tls,
        })
    }
}

/// Where, how often and with which headers the OTLP export goes: `config.toml`'s `otlp_*`
/// settings under OpenTelemetry's standard variables, as every OpenTelemetry exporter reads
/// them (`OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`, `..._HEADERS`, `..._PROTOCOL`,
/// `OTEL_METRIC_EXPORT_INTERVAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExport {
    pub target: OtlpTarget,
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    /// For an `https://` target: which CA and client certificate files to use.
    pub tls: OtlpTlsFiles,
}

/// The files of an OTLP export over TLS (`OTEL_EXPORTER_OTLP_[METRICS_]CERTIFICATE`,
/// `_CLIENT_CERTIFICATE`, `_CLIENT_KEY`, over `config.toml`'s `otlp_certificate`,
/// `otlp_client_certificate`, `otlp_client_key`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OtlpTlsFiles {
    /// The CA bundle; the system's roots when absent.
    pub certificate: Option<PathBuf>,
    /// The client certificate chain and its key, together or not at all.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// `k=v,k2=v2` with percent-encoded values, as `OTEL_EXPORTER_OTLP_HEADERS` writes them.
fn parse_otel_headers(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("header `{pair}` is not key=value"))?;
            Ok((k.trim().to_owned(), percent_decode(v.trim())?))
        })
        .collect()
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("`{text}` has a malformed %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{text}` is not UTF-8 once decoded"))
}

/// A header name (an HTTP token) and value (visible characters and spaces).
fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(format!("`{name}` is not an HTTP header name"));
    }
    if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
        return Err(format!(
            "the value of header `{name}` has control characters"
        ));
    }
    Ok(())
}

impl ControlPlaneConfig {
    /// The OTLP export to run, or none; `env` reads the environment (a closure, so tests give
    /// their own). An error says which setting is wrong.
    pub fn otlp_export(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<OtlpExport>, String> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        for name in [
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(name) {
                if protocol.trim() != "http/json" {
                    return Err(format!(
                        "{name}={protocol}: the control plane exports http/json only"
                    ));
                }
                break;
            }
        }
        let target = if let Some(url) = var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            OtlpTarget::parse_exact(&url)
                .map_err(|e| format!("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: {e}"))?
        } else if let Some(url) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            OtlpTarget::parse(&url).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))?
        } else if let Some(url) = &self.otlp_endpoint {
            OtlpTarget::parse(url).map_err(|e| format!("otlp_endpoint: {e}"))?
        } else {
            return Ok(None);
        };
        let mut headers: BTreeMap<String, String> = self.otlp_headers.clone();
        for name in [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        ] {
            if let Some(text) = var(name) {
                headers.extend(parse_otel_headers(&text).map_err(|e| format!("{name}: {e}"))?);
            }
        }
        for (name, value) in &headers {
            check_header(name, value)?;
        }
        let interval = match var("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => ms
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms >= 1000)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    format!("OTEL_METRIC_EXPORT_INTERVAL={ms}: milliseconds, at least 1000")
                })?,
            None => self.otlp_interval,
        };
        // The signal's own variable, then the general one, then config.toml.
        let file = |suffix: &str, configured: &Option<PathBuf>| {
            var(&format!("OTEL_EXPORTER_OTLP_METRICS_{suffix}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{suffix}")))
                .map(PathBuf::from)
                .or_else(|| configured.clone())
        };
        let certificate = file("CERTIFICATE", &self.otlp_certificate);
        let client = match (
            file("CLIENT_CERTIFICATE", &self.otlp_client_certificate),
            file("CLIENT_KEY", &self.otlp_client_key),
        ) {
            (Some(chain), Some(key)) => Some((chain, key)),
            (None, None) => None,
            _ => {
                return Err(
                    "a client certificate for the OTLP export needs both the certificate (otlp_client_certificate) and its key (otlp_client_key)"
                        .into(),
                );
            }
        };
        Ok(Some(OtlpExport {
            target,
            headers: headers.into_iter().collect(),
            interval,
            tls: OtlpTlsFiles {
                certificate,
                client,
            },
        }))
    }
}

/// Default lifetime of the work lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

fn default_lease_ttl() -> Duration {
    DEFAULT_LEASE_TTL
}

fn default_drift_window() -> Duration {
    DEFAULT_DRIFT_WINDOW
}
fn default_drift_interval() -> Duration {
    DEFAULT_DRIFT_INTERVAL
}

fn default_heartbeat_interval() -> Duration {
    DEFAULT_HEARTBEAT_INTERVAL
}
fn default_not_ready_after() -> Duration {
    DEFAULT_NOT_READY_AFTER
}
fn default_telemetry_retention() -> Duration {
    DEFAULT_TELEMETRY_RETENTION
}
fn default_max_agent_connections() -> usize {
    DEFAULT_MAX_AGENT_CONNECTIONS
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            listen_agents: DEFAULT_LISTEN_AGENTS
                .parse()
                .expect("valid default address"),
            listen_api: DEFAULT_LISTEN_API.parse().expect("valid default address"),
            store: None,
            store_password_file: None,
            artifacts: None,
            advertise_agents: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            not_ready_after: DEFAULT_NOT_READY_AFTER,
            max_agent_connections: DEFAULT_MAX_AGENT_CONNECTIONS,
            telemetry_retention: DEFAULT_TELEMETRY_RETENTION,
            drift_window: DEFAULT_DRIFT_WINDOW,
            drift_interval: DEFAULT_DRIFT_INTERVAL,
            otlp_endpoint: None,
            otlp_interval: DEFAULT_OTLP_INTERVAL,
            otlp_headers: BTreeMap::new(),
            otlp_certificate: None,
            otlp_client_certificate: None,
            otlp_client_key: None,
            agent_cert_ttl: default_agent_cert_ttl(),
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// Why `config.toml` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{field}` {problem}")]
    Invalid {
        path: String,
        field: &'static str,
        problem: String,
    },
}

impl ControlPlaneConfig {
    /// Parses and validates the text of `config.toml`; `path` names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    pub(crate) fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            problem: problem.to_owned(),
        };
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid("heartbeat_interval", "must be at least 100ms"));
        }
        if self.not_ready_after <= self.heartbeat_interval {
            return Err(invalid(
                "not_ready_after",
                "must be longer than heartbeat_interval",
            ));
        }
        if self.drift_window < Duration::from_secs(10) {
            return Err(invalid("drift_window", "must be at least 10s"));
        }
        if self.drift_interval < Duration::from_secs(1) {
            return Err(invalid("drift_interval", "must be at least 1s"));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(invalid("lease_ttl", "must be at least 1s"));
        }
        if let Some(artifacts) = &self.artifacts {
            ArtifactLocation::parse(artifacts).map_err(|e| invalid("artifacts", &e))?;
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            OtlpTarget::parse(endpoint).map_err(|e| invalid("otlp_endpoint", &e))?;
        }
        for (name, value) in &self.otlp_headers {
            check_header(name, value).map_err(|e| invalid("otlp_headers", &e))?;
        }
        if self.otlp_interval < Duration::from_secs(1) {
            return Err(invalid("otlp_interval", "must be at least 1s"));
        }
        if self.agent_cert_ttl < Duration::from_secs(10) {
            return Err(invalid("agent_cert_ttl", "must be at least 10s"));
        }
        if self.max_agent_connections == 0 {
            return Err(invalid("max_agent_connections", "must be at least 1"));
        }
        if let Some(store) = &self.store {
            if !(store.starts_with("postgres://") || store.starts_with("postgresql://")) {
                return Err(invalid(
                    "store",
                    "must be a PostgreSQL URL (postgres://user@host:port/database); leave it out for sled",
                ));
            }
            crate::backend::postgres::check_url(store).map_err(|e| invalid("store", &e))?;
        }
        if self.store_password_file.is_some() && self.store.is_none() {
            return Err(invalid(
                "store_password_file",
                "is the password of a PostgreSQL `store`, and there is none",
            ));
        }
        Ok(())
    }

    /// Where artifacts are kept: `artifacts`, else `default` (the data directory's).
    pub fn artifact_location(&self, default: PathBuf) -> Result<ArtifactLocation, String> {
        self.artifacts
            .as_deref()
            .map_or(Ok(ArtifactLocation::Dir(default)), ArtifactLocation::parse)
    }

    /// The text of `config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config always serializes")
    }
}

/// Where artifacts are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactLocation {
    /// A directory on this machine (or a network filesystem).
    Dir(PathBuf),
    /// An S3-compatible bucket, under `prefix`.
    S3 { bucket: String, prefix: String },
}

impl ArtifactLocation {
    /// Reads `artifacts` of `config.toml`: an absolute path, `file:///path` or
    /// `s3://bucket[/prefix]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("an s3:// location names a bucket: s3://bucket/prefix".into());
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        let path = PathBuf::from(text.strip_prefix("file://").unwrap_or(text));
        if !path.is_absolute() {
            return Err("must be an absolute directory, file:///dir or s3://bucket/prefix".into());
        }
        Ok(Self::Dir(path))
    }
}

impl std::fmt::Display for ArtifactLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "{}", dir.display()),
            Self::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Durations as human text ("5s", "1m 30s") in TOML.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_through_toml() {
        let config = ControlPlaneConfig::default();
        assert_eq!(
            ControlPlaneConfig::parse(&config.to_toml(), "config.toml").expect("parses"),
            config
        );
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values_naming_them() {
        let err = ControlPlaneConfig::parse(
            "listen_agents = \"0.0.0.0:1\"\nlisten_api = \"127.0.0.1:2\"\nlisten_apl = 3\n",
            "d/config.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("d/config.toml") && err.contains("listen_apl"),
            "{err}"
        );

        let err = ControlPlaneConfig::parse(
            "listen_agents = \"0.0.0.0:1\"\nlisten_api = \"127.0.0.1:2\"\nheartbeat_interval = \"5s\"\nnot_ready_after = \"2s\"\n",
            "config.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not_ready_after"), "{err}");

        assert_eq!(
            OtlpTarget::parse("http://collector:4318/otel/"),
            Ok(OtlpTarget {
                addr: "collector:4318".into(),
                host: "collector".into(),
                path: "/otel/v1/metrics".into(),
                tls: false,
            })
        );
        assert_eq!(
            OtlpTarget::parse("https://otlp.example.com/v1/otlp"),
            Ok(OtlpTarget {
                addr: "otlp.example.com:443".into(),
                host: "otlp.example.com".into(),
                path: "/v1/otlp/v1/metrics".into(),
                tls: true,
            })
        );
        let v6 = OtlpTarget::parse("https://[::1]:4318").expect("an IPv6 address");
        assert_eq!((v6.addr.as_str(), v6.host.as_str()), ("[::1]:4318", "::1"));
        assert_eq!(
            OtlpTarget::parse("http://c").map(|t| t.addr),
            Ok("c:80".into())
        );
        for bad in [
            "grpc://c:4317",
            "c:4318",
            "http://:80",
            "http://c:port",
            "http://u@c:1",
        ] {
            assert!(OtlpTarget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn opentelemetrys_variables_override_the_config() {
        let config = ControlPlaneConfig {
            otlp_endpoint: Some("http://cfg:4318".into()),
            otlp_headers: [("x-tenant".to_owned(), "from-config".to_owned())].into(),
            ..ControlPlaneConfig::default()
        };
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let plain = config.otlp_export(env(&[])).expect("valid").expect("on");
        assert_eq!(plain.target.addr, "cfg:4318");
        assert_eq!(plain.interval, config.otlp_interval);
        let from_env = config
            .otlp_export(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/base"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "api-key=s%3Dcret,x-tenant=fleet%207",
                ),
                ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]))
            .expect("valid")
            .expect("on");
        assert_eq!(
            (from_env.target.addr.as_str(), from_env.target.path.as_str()),
            ("collector:4318", "/base/v1/metrics")
        );
        assert_eq!(
            from_env.headers,
            [
                ("api-key".to_owned(), "s=cret".to_owned()),
                ("x-tenant".to_owned(), "fleet 7".to_owned())
            ]
        );
        assert_eq!(from_env.interval, Duration::from_secs(15));
        let exact = config
            .otlp_export(env(&[(
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://c:4318/custom/metrics",
            )]))
            .expect("valid")
            .expect("on");
        assert_eq!(exact.target.path, "/custom/metrics");
        for bad in [
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")][..],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")][..],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "k=%zz")][..],
            &[("OTEL_EXPORTER_OTLP_HEADERS", "bad name=v")][..],
            &[("OTEL_METRIC_EXPORT_INTERVAL", "10")][..],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:4318")][..],
            &[("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem")][..],
        ] {
            let vars: &'static [(&'static str, &'static str)] = bad;
            assert!(config.otlp_export(env(vars)).is_err(), "{bad:?}");
        }
        let tls = config
            .otlp_export(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/general-ca.pem"),
                ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/metrics-ca.pem"),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/client.pem"),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/client.key"),
            ]))
            .expect("valid")
            .expect("on");
        assert!(tls.target.tls);
        assert_eq!(tls.tls.certificate, Some(PathBuf::from("/metrics-ca.pem")));
        assert_eq!(
            tls.tls.client,
            Some((PathBuf::from("/client.pem"), PathBuf::from("/client.key")))
        );
        let off = ControlPlaneConfig::default();
        assert_eq!(off.otlp_export(env(&[])), Ok(None));
    }
}
