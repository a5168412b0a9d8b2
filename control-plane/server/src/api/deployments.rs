//! Manifests and rollouts on the admin API: apply, diff, delete, pipelines, deployments and
//! rollout commands.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tern_proto::api::{
    ApplyRequest, Change, DeleteRequest, DeploymentView, PipelineView, RolloutAgentView,
    RolloutView,
};
use tern_proto::manifest::RolloutStrategy;
use tracing::info;

use super::{HttpError, blocking, internal};
use crate::apply::{self, ApplyError, RolloutCommand};
use crate::catalog::DeploymentRecord;
use crate::registry::AgentRecord;
use crate::rollout::{Phase, Transition};
use crate::state::Shared;

impl From<ApplyError> for HttpError {
    fn from(e: ApplyError) -> Self {
        let status = match &e {
            ApplyError::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApplyError::UnknownKind(_) => StatusCode::BAD_REQUEST,
            ApplyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApplyError::InUse { .. } | ApplyError::Rollout { .. } => StatusCode::CONFLICT,
            ApplyError::Catalog(crate::catalog::CatalogError::Changed) => StatusCode::CONFLICT,
            ApplyError::Releases(crate::releases::ReleaseStoreError::Artifacts(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApplyError::Catalog(_) | ApplyError::Releases(_) | ApplyError::Registry(_) => {
                return internal(e);
            }
        };
        HttpError(status, e.to_string())
    }
}

fn log_changes(changes: &[Change]) {
    for c in changes {
        if c.action != tern_proto::api::ChangeAction::Unchanged {
            info!(kind = %c.kind, name = %c.name, action = %c.action, revision = ?c.revision, "resource changed");
        }
    }
}

pub(crate) async fn apply(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<ApplyRequest>, JsonRejection>,
) -> Result<Json<Vec<Change>>, HttpError> {
    let Json(request) = body?;
    let changes = blocking(move || {
        apply::apply(
            &shared.catalog,
            &shared.releases,
            &shared.drift,
            &request,
            tern_clock::unix_millis_now(),
        )
    })
    .await?;
    log_changes(&changes);
    Ok(Json(changes))
}

pub(crate) async fn delete(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<DeleteRequest>, JsonRejection>,
) -> Result<Json<Vec<Change>>, HttpError> {
    let Json(request) = body?;
    let changes = blocking(move || apply::delete(&shared.catalog, &request.resources)).await?;
    log_changes(&changes);
    Ok(Json(changes))
}

pub(crate) async fn pipelines(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<PipelineView>>, HttpError> {
    let views = blocking(move || {
        let deployments = shared.catalog.deployments()?;
        Ok::<_, ApplyError>(
            shared
                .catalog
                .pipelines()?
                .into_iter()
                .map(|p| {
                    let name = p.manifest.metadata.name.clone();
                    PipelineView {
                        deployments: deployments
                            .iter()
                            .filter(|d| d.manifest.spec.pipeline == name)
                            .map(|d| d.manifest.metadata.name.clone())
                            .collect(),
                        labels: p.manifest.metadata.labels.clone(),
                        annotations: p.manifest.metadata.annotations.clone(),
                        name,
                        revision: p.revision,
                        steps: p.pinned,
                        updated: tern_clock::rfc3339(p.applied_ms),
                    }
                })
                .collect(),
        )
    })
    .await?;
    Ok(Json(views))
}

fn describe(transition: &Transition) -> String {
    match transition {
        Transition::WaveStarted { wave, agents } => {
            format!("wave {} started: {}", wave + 1, agents.join(", "))
        }
        Transition::AgentsJoined { agents } => format!("joined the wave: {}", agents.join(", ")),
        Transition::Completed => "complete: every selected agent runs the target".into(),
        Transition::RolledBack { reason } => format!("rolled back: {reason}"),
        Transition::Failed { reason } => format!("failed: {reason}"),
        Transition::Paused => "paused".into(),
        Transition::Resumed => "resumed".into(),
    }
}

/// A deployment with its rollout and the agents it selects, as they report.
pub(crate) fn deployment_view(
    shared: &Shared,
    agents: &[AgentRecord],
    record: &DeploymentRecord,
) -> DeploymentView {
    let spec = &record.manifest.spec;
    let rollout = match &record.rollout {
        None => None,
        Some(r) => {
            let selector = spec.selector.selector();
            let agents = agents
                .iter()
                .filter(|a| selector.matches(&a.labels))
                .map(|a| {
                    let status = shared.reports.pipeline(&a.id, &spec.pipeline);
                    let connected = shared.replica.connected(&shared.presence, a);
                    let (exits, exit_reason) = shared
                        .reports
                        .exits_serving(&a.id, &spec.pipeline, r.target)
                        .unwrap_or_default();
                    RolloutAgentView {
                        desired: r.assignment(&a.name),
                        serving: status.as_ref().and_then(|s| s.serving),
                        phase: status.as_ref().map(|s| s.phase.to_string()),
                        message: status.map(|s| s.message).unwrap_or_default(),
                        name: a.name.clone(),
                        connected,
                        exits,
                        exit_reason,
                        left_out: r.left_out.contains(&a.name),
                    }
                })
                .collect();
            let reason = match &r.phase {
                Phase::RolledBack { reason } | Phase::Failed { reason } => Some(reason.clone()),
                _ => None,
            };
            Some(RolloutView {
                phase: r.phase.to_string(),
                reason,
                target_revision: r.target,
                previous_revision: r.previous,
                wave: r.wave + 1,
                waves: r.policy.waves.len(),
                started: tern_clock::rfc3339(r.started_ms),
                history: r
                    .history
                    .iter()
                    .map(|(at, t)| (tern_clock::rfc3339(*at), describe(t)))
                    .collect(),
                agents,
            })
        }
    };
    DeploymentView {
        name: record.manifest.metadata.name.clone(),
        labels: record.manifest.metadata.labels.clone(),
        annotations: record.manifest.metadata.annotations.clone(),
        pipeline: spec.pipeline.clone(),
        selector: spec.selector.clone(),
        strategy: match spec.rollout.strategy {
            RolloutStrategy::AllAtOnce => "all-at-once".into(),
            RolloutStrategy::Canary => "canary".into(),
        },
        updated: tern_clock::rfc3339(record.updated_ms),
        rollout,
    }
}

pub(crate) async fn deployments(
    State(shared): State<Arc<Shared>>,
) -> Result<Json<Vec<DeploymentView>>, HttpError> {
    let views = blocking(move || {
        let agents = shared.registry.agents()?;
        Ok::<_, ApplyError>(
            shared
                .catalog
                .deployments()?
                .iter()
                .map(|d| deployment_view(&shared, &agents, d))
                .collect(),
        )
    })
    .await?;
    Ok(Json(views))
}

pub(crate) async fn deployment(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Json<DeploymentView>, HttpError> {
    let view = blocking(move || {
        let record = shared
            .catalog
            .deployment(&name)?
            .ok_or(ApplyError::NotFound {
                kind: "Deployment".into(),
                name,
            })?;
        Ok::<_, ApplyError>(deployment_view(
            &shared,
            &shared.registry.agents()?,
            &record,
        ))
    })
    .await?;
    Ok(Json(view))
}

pub(crate) async fn rollout(
    State(shared): State<Arc<Shared>>,
    Path((name, command)): Path<(String, String)>,
) -> Result<Json<DeploymentView>, HttpError> {
    let command = match command.as_str() {
        "pause" => RolloutCommand::Pause,
        "resume" => RolloutCommand::Resume,
        "undo" => RolloutCommand::Undo,
        other => {
            return Err(HttpError(
                StatusCode::NOT_FOUND,
                format!("no rollout command `{other}` (pause, resume, undo)"),
            ));
        }
    };
    let view = blocking(move || {
        let record = apply::rollout_command(
            &shared.catalog,
            &name,
            command,
            tern_clock::unix_millis_now(),
        )?;
        info!(deployment = %name, ?command, "rollout command");
        Ok::<_, ApplyError>(deployment_view(
            &shared,
            &shared.registry.agents()?,
            &record,
        ))
    })
    .await?;
    Ok(Json(view))
}
