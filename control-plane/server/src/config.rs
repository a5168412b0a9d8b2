//! `config.toml`: listen addresses and fleet timing. Parsed once at start; unknown keys and
//! invalid values are errors naming the key.

use std::net::SocketAddr;
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
    /// `http://127.0.0.1:4318` (a collector; `/v1/metrics` is appended). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// How often the OTLP export runs.
    #[serde(with = "duration_text", default = "default_otlp_interval")]
    pub otlp_interval: Duration,
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

/// Where the OTLP export goes: `host:port` and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpTarget {
    pub addr: String,
    pub path: String,
}

impl OtlpTarget {
    /// `http://HOST:PORT[/BASE]` → the address and `BASE/v1/metrics`.
    pub fn parse(endpoint: &str) -> Result<Self, String> {
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            "must start with `http://` (the OTLP/HTTP port of a collector, usually on the same host)"
                .to_owned()
        })?;
        let (addr, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err("expected `http://HOST:PORT`".into());
        }
        Ok(Self {
            addr: addr.to_owned(),
            path: format!("{base}{}", tern_proto::otlp::METRICS_PATH),
        })
    }
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
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            not_ready_after: DEFAULT_NOT_READY_AFTER,
            max_agent_connections: DEFAULT_MAX_AGENT_CONNECTIONS,
            telemetry_retention: DEFAULT_TELEMETRY_RETENTION,
            drift_window: DEFAULT_DRIFT_WINDOW,
            drift_interval: DEFAULT_DRIFT_INTERVAL,
            otlp_endpoint: None,
            otlp_interval: DEFAULT_OTLP_INTERVAL,
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

    fn validate(&self, path: &str) -> Result<(), ConfigError> {
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
        if let Some(endpoint) = &self.otlp_endpoint {
            OtlpTarget::parse(endpoint).map_err(|e| invalid("otlp_endpoint", &e))?;
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
        Ok(())
    }

    /// The text of `config.toml`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config always serializes")
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
                path: "/otel/v1/metrics".into()
            })
        );
        for bad in ["https://c:4318", "http://c", "http://:80"] {
            assert!(OtlpTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
