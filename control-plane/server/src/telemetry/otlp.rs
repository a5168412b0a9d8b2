//! The optional OpenTelemetry export: every `otlp_interval`, the fleet's metrics (the same
//! families as `/metrics`) are POSTed as OTLP/HTTP JSON to `otlp_endpoint`. A collector that
//! is down costs a warning per attempt and nothing else: the series are cumulative, so the
//! next export carries everything. Where, how often and with which headers come from
//! `config.toml` under OpenTelemetry's `OTEL_EXPORTER_OTLP_*` variables
//! ([`crate::config::OtlpExport`]).

use std::sync::Arc;

use tern_proto::otlp::{CONTENT_TYPE, OtlpMetrics};
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::OtlpExport;
use crate::state::Shared;

/// Runs until `shutdown` turns true.
pub(crate) async fn export(
    shared: Arc<Shared>,
    export: OtlpExport,
    mut shutdown: watch::Receiver<bool>,
) {
    let OtlpExport {
        target,
        headers,
        interval,
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
            tern_transport::https::post_plain(
                &target.addr,
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
