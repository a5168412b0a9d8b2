//! The optional OpenTelemetry export: every `otlp_interval`, the fleet's metrics (the same
//! families as `/metrics`) are POSTed as OTLP/HTTP JSON to `otlp_endpoint`. A collector that
//! is down costs a warning per attempt and nothing else: the series are cumulative, so the
//! next export carries everything. Where, how often and with which headers come from
//! `config.toml` under OpenTelemetry's `OTEL_EXPORTER_OTLP_*` variables
//! ([`crate::config::OtlpExport`]); an `https://` endpoint is reached over TLS, verified
//! against a given CA or the system's roots, with a client certificate where one is set.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tern_proto::otlp::{CONTENT_TYPE, OtlpMetrics};
use tern_transport::https::TlsTarget;
use tern_transport::tls::Identity;
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::OtlpExport;
use crate::state::Shared;

/// The TLS of an `https://` export, built from its files; none for `http://`. Read once at
/// start: a missing or malformed file stops the start, naming it.
pub(crate) fn tls_target(export: &OtlpExport) -> Result<Option<TlsTarget>, String> {
    if !export.target.tls {
        return Ok(None);
    }
    let read = |path: &Path, what: &str| {
        std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))
    };
    let ca = match &export.tls.certificate {
        Some(path) => Some(read(path, "the OTLP CA certificate")?),
        None => None,
    };
    let identity = match &export.tls.client {
        Some((chain, key)) => Some(
            Identity::from_pem(
                &read(chain, "the OTLP client certificate")?,
                &read(key, "the OTLP client key")?,
            )
            .map_err(|e| format!("the OTLP client certificate: {e}"))?,
        ),
        None => None,
    };
    let config = tern_transport::tls::https_client_for(ca.as_deref(), identity)
        .map_err(|e| format!("the OTLP export's TLS: {e}"))?;
    let server_name = ServerName::try_from(export.target.host.clone()).map_err(|e| {
        format!(
            "`{}` is not a name a certificate can carry: {e}",
            export.target.host
        )
    })?;
    Ok(Some(TlsTarget {
        config,
        server_name,
    }))
}

/// Runs until `shutdown` turns true.
pub(crate) async fn export(
    shared: Arc<Shared>,
    export: OtlpExport,
    tls: Option<TlsTarget>,
    mut shutdown: watch::Receiver<bool>,
) {
    let OtlpExport {
        target,
        headers,
        interval,
        tls: _,
    } = export;
    let started_ms = tern_clock::unix_millis_now();
    let instance = shared.config.listen_api.to_string();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        // Once for the fleet: by the holder of the work lease.
        if shared.leadership.term().is_none() {
            continue;
        }
        let span = info_span!("otlp export", endpoint = %target.addr);
        let result = async {
            let shared = shared.clone();
            let instance = instance.clone();
            let body = tokio::task::spawn_blocking(move || {
                let mut page = OtlpMetrics::new(started_ms, tern_clock::unix_millis_now());
                super::exposition::write(
                    &shared.exposition_context(),
                    tern_clock::unix_millis_now(),
                    &mut page,
                )
                .map(|()| page.finish("tern-control-plane", &instance))
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
            let size = bytes.len();
            tern_transport::https::post_once(
                &target.addr,
                tls.as_ref(),
                &target.path,
                CONTENT_TYPE,
                &headers,
                bytes,
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok::<usize, String>(size)
        }
        .instrument(span)
        .await;
        match result {
            Ok(bytes) => {
                if failing {
                    warn!(endpoint = %target.addr, "OTLP export works again");
                }
                failing = false;
                debug!(bytes, "OTLP export sent");
            }
            Err(error) => {
                failing = true;
                warn!(endpoint = %target.addr, %error, "OTLP export failed; the next one carries the totals");
            }
        }
    }
}
