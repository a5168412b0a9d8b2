//! `apply`, `diff` and `delete` of manifests, and the operator's rollout commands: validation
//! against the catalog and the release store, pipeline revisions pinned to digests, and a new
//! rollout whenever a deployment's pipeline gets a new revision.

use std::collections::BTreeMap;

use tern_proto::api::{ApplyRequest, Change, ChangeAction, PinnedStep};
use tern_proto::manifest::{ArtifactRef, Deployment, ManifestError, Pipeline, Resource, StepKind};
use tern_proto::release::ArtifactKind;

use crate::catalog::{Catalog, CatalogError, CatalogLock, DeploymentRecord, PipelineRecord};
use crate::releases::{ReleaseStore, ReleaseStoreError};
use crate::rollout::{Rollout, RolloutPolicy};

/// Why an apply, delete or rollout command was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{kind} `{name}` does not exist")]
    NotFound { kind: String, name: String },
    #[error("`{0}` is not a kind this control plane knows (Pipeline, Deployment)")]
    UnknownKind(String),
    #[error("pipeline `{pipeline}` is run by deployment(s) {deployments}; delete those first")]
    InUse {
        pipeline: String,
        deployments: String,
    },
    #[error("rollout of `{deployment}` {reason}")]
    Rollout { deployment: String, reason: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Releases(#[from] ReleaseStoreError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
}

fn manifest_error(file: &str, path: String, message: String) -> ApplyError {
    ApplyError::Manifest(ManifestError {
        file: file.to_owned(),
        path,
        message,
    })
}

/// Resolves every step of `pipeline` to a pushed release of the right kind.
fn pin(
    releases: &ReleaseStore,
    pipeline: &Pipeline,
    file: &str,
) -> Result<Vec<PinnedStep>, ApplyError> {
    let mut pinned = Vec::new();
    for (i, step) in pipeline.spec.steps.iter().enumerate() {
        let (field, reference, kind) = match step.kind() {
            StepKind::Plugin(r) => ("plugin", r, ArtifactKind::Plugin),
            StepKind::Model(r) => ("model", r, ArtifactKind::Model),
        };
        let path = format!("spec.steps[{i}].{field}");
        let Some(ArtifactRef::Release { name, version }) = ArtifactRef::parse(reference) else {
            return Err(manifest_error(
                file,
                path,
                format!(
                    "expected `name:version` of a pushed release, got `{reference}` (local files are for `tern-agent run-local`)"
                ),
            ));
        };
        let Some(release) = releases.release(&name, version)? else {
            return Err(manifest_error(
                file,
                path,
                format!("release `{reference}` is not pushed (sign it and run `ternctl push`)"),
            ));
        };
        let release = release.signed;
        if release.kind != kind {
            return Err(manifest_error(
                file,
                path,
                format!(
                    "`{reference}` is a {} release; a {field} step needs a {kind}",
                    release.kind
                ),
            ));
        }
        if !releases.is_complete(&release.digest)? {
            return Err(manifest_error(
                file,
                path,
                format!(
                    "the artifact of `{reference}` is not completely uploaded; run `ternctl push` again"
                ),
            ));
        }
        pinned.push(PinnedStep {
            step: step.name.clone(),
            kind,
            reference: reference.to_owned(),
            digest: release.digest,
        });
    }
    Ok(pinned)
}

/// Applies (or, with `dry_run`, only compares) the resources of one file. Pipelines go first,
/// so a deployment may name a pipeline of the same file.
pub fn apply(
    catalog: &Catalog,
    releases: &ReleaseStore,
    drift: &crate::drift::store::DriftStore,
    request: &ApplyRequest,
    now_ms: u64,
) -> Result<Vec<Change>, ApplyError> {
    let lock = catalog.lock()?;
    let source = |i: usize| request.sources.get(i).unwrap_or(&request.file).as_str();
    for (i, resource) in request.resources.iter().enumerate() {
        resource.validate(source(i))?;
    }
    let mut changes = Vec::new();
    // Pipelines of this request and the revision each will have.
    let mut pending: BTreeMap<String, u64> = BTreeMap::new();
    for (i, resource) in request.resources.iter().enumerate() {
        let Resource::Pipeline(pipeline) = resource else {
            continue;
        };
        let name = pipeline.metadata.name.clone();
        if pipeline
            .spec
            .warmup
            .as_ref()
            .is_some_and(|w| w.file.is_some())
        {
            return Err(manifest_error(
                source(i),
                "spec.warmup.file".into(),
                "a local file cannot be read here; send the sample as `dataBase64` (ternctl does)"
                    .into(),
            ));
        }
        if let Some(monitoring) = &pipeline.spec.monitoring {
            crate::drift::store::check_reference(drift, monitoring).map_err(|message| {
                manifest_error(source(i), "spec.monitoring.baseline".into(), message)
            })?;
        }
        let pinned = pin(releases, pipeline, source(i))?;
        let existing = lock.pipeline(&name)?;
        // Only what agents run makes a revision: a new baseline or threshold is the control
        // plane's business, applied in place without a rollout.
        let in_place = existing.as_ref().is_some_and(|old| {
            old.pinned == pinned && agent_facing(&old.manifest) == agent_facing(pipeline)
        });
        let (action, revision) = match &existing {
            Some(old) if old.manifest == *pipeline && old.pinned == pinned => {
                (ChangeAction::Unchanged, old.revision)
            }
            Some(old) if in_place => (ChangeAction::Configured, old.revision),
            Some(old) => (ChangeAction::Configured, old.revision + 1),
            None => (ChangeAction::Created, lock.last_revision(&name)? + 1),
        };
        pending.insert(name.clone(), revision);
        if action != ChangeAction::Unchanged && !request.dry_run {
            lock.put_pipeline(&PipelineRecord {
                manifest: pipeline.clone(),
                revision,
                pinned,
                applied_ms: match &existing {
                    Some(old) if in_place => old.applied_ms,
                    _ => now_ms,
                },
            });
            if !in_place {
                roll_out_revision(&lock, &name, revision, now_ms)?;
            }
        }
        changes.push(Change {
            kind: "Pipeline".into(),
            name,
            action,
            revision: Some(revision),
            before: existing.map(|old| Resource::Pipeline(old.manifest)),
            after: Some(resource.clone()),
        });
    }
    for (i, resource) in request.resources.iter().enumerate() {
        let Resource::Deployment(deployment) = resource else {
            continue;
        };
        changes.push(apply_deployment(
            (&lock, releases),
            deployment,
            &pending,
            (source(i), request.dry_run),
            now_ms,
        )?);
    }
    // The whole file in one atomic write, or nothing of it.
    lock.commit()?;
    Ok(changes)
}

/// The pipeline as agents see it: monitoring reduced to the watched step, no labels or
/// annotations (they are for people and `get -l`).
fn agent_facing(pipeline: &Pipeline) -> Pipeline {
    let mut facing = pipeline.clone();
    facing.metadata.labels.clear();
    facing.metadata.annotations.clear();
    if let Some(monitoring) = facing.spec.monitoring.as_mut() {
        monitoring.baseline = None;
        monitoring.baseline_data = None;
        monitoring.alert_psi = tern_proto::manifest::DEFAULT_ALERT_PSI;
    }
    facing
}

/// Starts a rollout of `revision` in every deployment of pipeline `name`.
fn roll_out_revision(
    lock: &CatalogLock<'_>,
    name: &str,
    revision: u64,
    now_ms: u64,
) -> Result<(), ApplyError> {
    for mut record in lock.deployments()? {
        if record.manifest.spec.pipeline != name {
            continue;
        }
        let policy = RolloutPolicy::from(&record.manifest.spec.rollout);
        record.rollout = match &record.rollout {
            Some(old) if old.stable() == Some(revision) => continue,
            // Whatever the old rollout had moved returns there on a rollback.
            Some(old) => Some(old.successor(revision, policy, now_ms)),
            None => Some(Rollout::new(revision, None, policy, now_ms)),
        };
        record.updated_ms = now_ms;
        lock.put_deployment(&record);
    }
    Ok(())
}

/// An experiment's models are pushed, complete model releases, and replace a model step of the
/// pipeline revision it runs.
fn check_variants(
    lock: &CatalogLock<'_>,
    releases: &ReleaseStore,
    deployment: &Deployment,
    revision: u64,
    file: &str,
) -> Result<(), ApplyError> {
    let Some(first) = deployment.spec.variants.first() else {
        return Ok(());
    };
    // The revision may be one this same request creates: it is not stored yet on a dry run.
    let pipeline = lock
        .revision(&deployment.spec.pipeline, revision)?
        .or(lock.pipeline(&deployment.spec.pipeline)?);
    if let Some(pipeline) = pipeline {
        let steps = &pipeline.manifest.spec.steps;
        let models: Vec<&str> = steps
            .iter()
            .filter(|s| s.model.is_some())
            .map(|s| s.name.as_str())
            .collect();
        match &first.step {
            Some(step) if !models.contains(&step.as_str()) => {
                return Err(manifest_error(
                    file,
                    "spec.variants[0].step".into(),
                    format!(
                        "pipeline `{}` has no model step `{step}`",
                        deployment.spec.pipeline
                    ),
                ));
            }
            None if models.len() != 1 => {
                return Err(manifest_error(
                    file,
                    "spec.variants[0].step".into(),
                    format!(
                        "pipeline `{}` has {} model steps; name the one the variants replace",
                        deployment.spec.pipeline,
                        models.len()
                    ),
                ));
            }
            _ => {}
        }
    }
    for (i, variant) in deployment.spec.variants.iter().enumerate() {
        let path = format!("spec.variants[{i}].model");
        let Some(ArtifactRef::Release { name, version }) = ArtifactRef::parse(&variant.model)
        else {
            return Err(manifest_error(file, path, "expected `name:version`".into()));
        };
        let release = releases.release(&name, version)?.map(|r| r.signed);
        match release {
            None => {
                return Err(manifest_error(
                    file,
                    path,
                    format!("release `{}` is not pushed", variant.model),
                ));
            }
            Some(r) if r.kind != ArtifactKind::Model => {
                return Err(manifest_error(
                    file,
                    path,
                    format!(
                        "`{}` is a {} release; a variant needs a model",
                        variant.model, r.kind
                    ),
                ));
            }
            Some(r) if !releases.is_complete(&r.digest)? => {
                return Err(manifest_error(
                    file,
                    path,
                    format!(
                        "the artifact of `{}` is not completely uploaded",
                        variant.model
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn apply_deployment(
    (lock, releases): (&CatalogLock<'_>, &ReleaseStore),
    deployment: &Deployment,
    pending: &BTreeMap<String, u64>,
    (file, dry_run): (&str, bool),
    now_ms: u64,
) -> Result<Change, ApplyError> {
    let name = deployment.metadata.name.clone();
    let pipeline = &deployment.spec.pipeline;
    let latest = match pending.get(pipeline) {
        Some(&revision) => revision,
        None => lock
            .pipeline(pipeline)?
            .map(|p| p.revision)
            .ok_or_else(|| {
                manifest_error(
                    file,
                    "spec.pipeline".into(),
                    format!(
                        "pipeline `{pipeline}` does not exist; apply it first (or in the same file)"
                    ),
                )
            })?,
    };
    check_variants(lock, releases, deployment, latest, file)?;
    let existing = lock.deployment(&name)?;
    let action = match &existing {
        Some(old) if old.manifest == *deployment => ChangeAction::Unchanged,
        Some(_) => ChangeAction::Configured,
        None => ChangeAction::Created,
    };
    if action != ChangeAction::Unchanged && !dry_run {
        let policy = RolloutPolicy::from(&deployment.spec.rollout);
        let rollout = match existing.as_ref().and_then(|old| {
            (old.manifest.spec.pipeline == *pipeline)
                .then_some(old.rollout.clone())
                .flatten()
        }) {
            // Same pipeline and revision: the rollout goes on under the new rules.
            Some(mut rollout) if rollout.target == latest => {
                rollout.policy = policy;
                rollout
            }
            Some(rollout) => rollout.successor(latest, policy, now_ms),
            None => Rollout::new(latest, None, policy, now_ms),
        };
        lock.put_deployment(&DeploymentRecord {
            manifest: deployment.clone(),
            created_ms: existing.as_ref().map(|o| o.created_ms).unwrap_or(now_ms),
            updated_ms: now_ms,
            rollout: Some(rollout),
        });
    }
    Ok(Change {
        kind: "Deployment".into(),
        name,
        action,
        revision: None,
        before: existing.map(|old| Resource::Deployment(old.manifest)),
        after: Some(Resource::Deployment(deployment.clone())),
    })
}

/// Deletes resources: deployments first, then pipelines no remaining deployment runs.
pub fn delete(
    catalog: &Catalog,
    resources: &[(String, String)],
) -> Result<Vec<Change>, ApplyError> {
    let lock = catalog.lock()?;
    let mut changes = Vec::new();
    for (kind, _) in resources {
        match kind.as_str() {
            "Deployment" | "Pipeline" => {}
            other => return Err(ApplyError::UnknownKind(other.to_owned())),
        }
    }
    let deleting = |kind: &str, name: &str| resources.iter().any(|(k, n)| k == kind && n == name);
    // Refuse before deleting anything: a pipeline still run by a deployment that stays.
    for (_, name) in resources.iter().filter(|(k, _)| k == "Pipeline") {
        let users: Vec<String> = lock
            .deployments()?
            .into_iter()
            .filter(|d| d.manifest.spec.pipeline == *name)
            .map(|d| d.manifest.metadata.name)
            .filter(|d| !deleting("Deployment", d))
            .collect();
        if !users.is_empty() {
            return Err(ApplyError::InUse {
                pipeline: name.clone(),
                deployments: users.join(", "),
            });
        }
    }
    let change = |kind: &str, name: &str, removed: bool, revision, before| Change {
        kind: kind.to_owned(),
        name: name.to_owned(),
        action: if removed {
            ChangeAction::Deleted
        } else {
            ChangeAction::Unchanged
        },
        revision,
        before,
        after: None,
    };
    for (kind, name) in resources.iter().filter(|(k, _)| k == "Deployment") {
        let before = lock.deployment(name)?;
        let removed = lock.delete_deployment(name)?;
        let before = before.map(|b| Resource::Deployment(b.manifest));
        changes.push(change(kind, name, removed, None, before));
    }
    for (kind, name) in resources.iter().filter(|(k, _)| k == "Pipeline") {
        let before = lock.pipeline(name)?;
        let removed = lock.delete_pipeline(name)?;
        let revision = before.as_ref().map(|b| b.revision);
        let before = before.map(|b| Resource::Pipeline(b.manifest));
        changes.push(change(kind, name, removed, revision, before));
    }
    lock.commit()?;
    Ok(changes)
}

/// An operator's command on a deployment's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutCommand {
    Pause,
    Resume,
    Undo,
}

/// Runs `command` on the rollout of `deployment`.
pub fn rollout_command(
    catalog: &Catalog,
    deployment: &str,
    command: RolloutCommand,
    now_ms: u64,
) -> Result<DeploymentRecord, ApplyError> {
    let lock = catalog.lock()?;
    let mut record = lock
        .deployment(deployment)?
        .ok_or_else(|| ApplyError::NotFound {
            kind: "Deployment".into(),
            name: deployment.to_owned(),
        })?;
    let refused = |reason: &str| ApplyError::Rollout {
        deployment: deployment.to_owned(),
        reason: reason.to_owned(),
    };
    let rollout = record
        .rollout
        .as_mut()
        .ok_or_else(|| refused("has not started"))?;
    let done = match command {
        RolloutCommand::Pause => rollout.pause(now_ms),
        RolloutCommand::Resume => rollout.resume(now_ms),
        RolloutCommand::Undo => rollout.undo(now_ms),
    };
    if !done {
        return Err(refused(&format!(
            "is {}; nothing to {}",
            rollout.phase,
            match command {
                RolloutCommand::Pause => "pause",
                RolloutCommand::Resume => "resume",
                RolloutCommand::Undo => "undo",
            }
        )));
    }
    record.updated_ms = now_ms;
    lock.put_deployment(&record);
    lock.commit()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Stores, manifest};

    fn actions(changes: &[Change]) -> Vec<(String, ChangeAction, Option<u64>)> {
        changes
            .iter()
            .map(|c| (c.kind.clone(), c.action, c.revision))
            .collect()
    }

    fn rollout(stores: &Stores) -> crate::rollout::Rollout {
        (stores.catalog.deployment("scores").expect("read"))
            .and_then(|d| d.rollout)
            .expect("a rollout")
    }

    #[test]
    fn an_apply_pins_releases_and_a_second_one_changes_nothing() {
        let stores = Stores::new();
        stores.push("topk", 2, ArtifactKind::Plugin, true);
        let first = stores
            .apply(&manifest("topk:2", 2), false, 10)
            .expect("apply");
        assert_eq!(
            actions(&first),
            [
                ("Pipeline".into(), ChangeAction::Created, Some(1)),
                ("Deployment".into(), ChangeAction::Created, None),
            ]
        );
        let pipeline = stores
            .catalog
            .pipeline("scores")
            .expect("read")
            .expect("kept");
        assert_eq!(pipeline.revision, 1);
        assert_eq!(pipeline.pinned[0].reference, "topk:2");
        assert_eq!(
            (rollout(&stores).target, rollout(&stores).started_ms),
            (1, 10)
        );

        let again = stores
            .apply(&manifest("topk:2", 2), false, 20)
            .expect("apply");
        assert!(
            again.iter().all(|c| c.action == ChangeAction::Unchanged),
            "{again:?}"
        );
        assert_eq!(
            rollout(&stores).started_ms,
            10,
            "the same rollout, not a new one"
        );
    }

    #[test]
    fn a_changed_pipeline_is_a_new_revision_and_a_new_rollout_but_not_on_a_dry_run() {
        let stores = Stores::new();
        stores.push("topk", 2, ArtifactKind::Plugin, true);
        stores
            .apply(&manifest("topk:2", 2), false, 10)
            .expect("apply");
        let diff = stores
            .apply(&manifest("topk:2", 3), true, 20)
            .expect("diff");
        assert_eq!(diff[0].action, ChangeAction::Configured);
        assert_eq!(diff[0].revision, Some(2), "what it would be");
        let revision = |stores: &Stores| {
            let pipeline = stores.catalog.pipeline("scores").expect("read");
            pipeline.map(|p| p.revision)
        };
        assert_eq!(revision(&stores), Some(1), "a dry run writes nothing");
        stores
            .apply(&manifest("topk:2", 3), false, 30)
            .expect("apply");
        assert_eq!(revision(&stores), Some(2));
        let rollout = rollout(&stores);
        assert_eq!(
            (rollout.target, rollout.started_ms),
            (2, 30),
            "a new rollout"
        );
    }

    #[test]
    fn a_step_naming_a_missing_wrong_or_unfinished_release_is_refused_and_nothing_lands() {
        let stores = Stores::new();
        stores.push("model", 1, ArtifactKind::Model, true);
        stores.push("half", 1, ArtifactKind::Plugin, false);
        for (step, says) in [
            ("topk:9", "is not pushed"),
            ("model:1", "a plugin step needs a plugin"),
            ("half:1", "not completely uploaded"),
        ] {
            let refused = stores
                .apply(&manifest(step, 2), false, 10)
                .expect_err("refused");
            assert!(refused.to_string().contains(says), "{step}: {refused}");
            assert!(
                refused.to_string().contains("spec.steps[0].plugin"),
                "{refused}"
            );
        }
        assert!(stores.catalog.pipelines().expect("read").is_empty());
        assert!(stores.catalog.deployments().expect("read").is_empty());
    }
}
