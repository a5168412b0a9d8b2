//! `ternctl apply|diff|delete -f FILE`: manifests validated here (errors name the file, the
//! field and what was expected), then sent to the control plane, which checks references.

use std::path::Path;

use anyhow::Context;
use tern_proto::api::{ApplyRequest, Change, ChangeAction, DeleteRequest};
use tern_proto::manifest::{self, Resource};
use tern_transport::https::HttpsClient;

/// The resources of `file`, with the files they name (warm-up samples, baselines) read in:
/// what `apply` and `diff` send.
fn read(file: &Path) -> anyhow::Result<(Vec<String>, Vec<Resource>)> {
    let (sources, mut resources): (Vec<String>, Vec<Resource>) =
        manifest::resources_from_file(file)?.into_iter().unzip();
    let base = file.parent().unwrap_or(Path::new("."));
    for resource in &mut resources {
        inline_warmup(resource, base)?;
        inline_baseline(resource, base)?;
    }
    Ok((sources, resources))
}

/// Reads a pipeline's `warmup.file` (relative to the manifest) into `dataBase64`.
fn inline_warmup(resource: &mut Resource, base: &Path) -> anyhow::Result<()> {
    use base64::Engine as _;
    let Resource::Pipeline(pipeline) = resource else {
        return Ok(());
    };
    let Some(warmup) = pipeline.spec.warmup.as_mut() else {
        return Ok(());
    };
    let Some(file) = warmup.file.take() else {
        return Ok(());
    };
    let path = base.join(&file);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("failed to read the warm-up sample {}", path.display()))?;
    if bytes.len() > manifest::MAX_WARMUP_BYTES {
        anyhow::bail!(
            "warm-up sample {} is over {} bytes",
            path.display(),
            manifest::MAX_WARMUP_BYTES
        );
    }
    warmup.data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
    Ok(())
}

/// Reads a pipeline's `monitoring.baseline` file (relative to the manifest) into
/// `baselineData`; a stored baseline (`name:version`) stays a reference.
fn inline_baseline(resource: &mut Resource, base: &Path) -> anyhow::Result<()> {
    let Resource::Pipeline(pipeline) = resource else {
        return Ok(());
    };
    let Some(monitoring) = pipeline.spec.monitoring.as_mut() else {
        return Ok(());
    };
    let Some(manifest::BaselineRef::File(file)) = monitoring
        .baseline
        .as_deref()
        .and_then(manifest::BaselineRef::parse)
    else {
        return Ok(());
    };
    let path = base.join(file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("failed to read the baseline {}", path.display()))?;
    let baseline: tern_proto::drift::Baseline = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a baseline", path.display()))?;
    baseline
        .validate()
        .with_context(|| format!("{} is not a usable baseline", path.display()))?;
    monitoring.baseline = None;
    monitoring.baseline_data = Some(baseline);
    Ok(())
}

/// `apply -f` (or `diff -f` with `dry_run`).
pub async fn apply(api: &HttpsClient, file: &Path, dry_run: bool) -> anyhow::Result<Vec<Change>> {
    let (sources, resources) = read(file)?;
    api.post(
        "/v1/apply",
        &ApplyRequest {
            file: file.display().to_string(),
            resources,
            sources,
            dry_run,
        },
    )
    .await
    .with_context(|| format!("failed to apply {}", file.display()))
}

/// `delete -f`.
pub async fn delete(api: &HttpsClient, file: &Path) -> anyhow::Result<Vec<Change>> {
    // Only names are sent: the files a manifest refers to are not read.
    let resources = manifest::resources_from_file(file)?
        .iter()
        .map(|(_, r)| (r.kind().to_owned(), r.name().to_owned()))
        .collect();
    api.post("/v1/delete", &DeleteRequest { resources })
        .await
        .with_context(|| format!("failed to delete what {} describes", file.display()))
}

/// One line per change: `pipeline/defect-detector configured (revision 3)`.
pub fn summary(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| {
            let revision = match (c.revision, c.action) {
                (Some(r), ChangeAction::Created | ChangeAction::Configured) => {
                    format!(" (revision {r})")
                }
                _ => String::new(),
            };
            format!(
                "{}/{} {}{revision}\n",
                c.kind.to_lowercase(),
                c.name,
                c.action
            )
        })
        .collect()
}

fn yaml(resource: Option<&Resource>) -> String {
    resource
        .and_then(|r| serde_yaml_ng::to_string(r).ok())
        .unwrap_or_default()
}

/// A unified diff per changed resource; empty when nothing would change.
pub fn diff(changes: &[Change]) -> String {
    let mut out = String::new();
    for c in changes
        .iter()
        .filter(|c| c.action != ChangeAction::Unchanged)
    {
        let (before, after) = (yaml(c.before.as_ref()), yaml(c.after.as_ref()));
        let label = format!("{}/{}", c.kind.to_lowercase(), c.name);
        let text = similar::TextDiff::from_lines(&before, &after);
        out.push_str(
            &text
                .unified_diff()
                .context_radius(3)
                .header(&format!("{label} (live)"), &format!("{label} (applied)"))
                .to_string(),
        );
    }
    out
}
