//! `GET /v1/replicas`: the control plane's replicas, which of them holds the work lease, the
//! agents each holds and how long ago each last announced itself.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use tern_proto::api::ReplicaView;

use super::{HttpError, blocking, internal};
use crate::lease::WORK;
use crate::state::Shared;

/// Every replica that announced itself in the last day, by name.
pub(super) async fn list(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<ReplicaView>>, HttpError> {
    let now = tern_clock::unix_millis_now();
    let ttl_ms = shared.config.lease_ttl.as_millis() as u64;
    let (replicas, leases) = blocking(move || -> Result<_, HttpError> {
        let replicas = shared.replicas.all(now).map_err(internal)?;
        let leases = shared.leases.leases().map_err(internal)?;
        Ok((replicas, leases))
    })
    .await?;
    let holder = leases
        .into_iter()
        .find(|(name, lease)| name == WORK && lease.expires_ms > now)
        .map(|(_, lease)| lease);
    let mut views: Vec<ReplicaView> = replicas
        .into_iter()
        .map(|r| {
            let leads = holder.as_ref().filter(|l| l.holder == r.name);
            ReplicaView {
                leader: leads.is_some(),
                epoch: leads.map(|l| l.epoch),
                status: if r.live(now, ttl_ms) { "Ready" } else { "Lost" }.to_owned(),
                lag_ms: now.saturating_sub(r.seen_ms),
                started: tern_clock::rfc3339(r.started_ms),
                agents_address: r.agents_address.unwrap_or_default(),
                api_address: r.api_address,
                agents_connected: r.agents_connected,
                version: r.version,
                name: r.name,
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(views))
}
