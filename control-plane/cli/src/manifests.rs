//! `ternctl apply|diff|delete -f FILE`: manifests validated here (errors name the file, the
//! field and what was expected), then sent to the control plane, which checks references.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tern_proto::api::{ApplyRequest, Change, ChangeAction, DeleteRequest};
use tern_proto::manifest::{self, Resource};
use tern_transport::https::HttpsClient;

/// One manifest file's text and where the files it names are relative to.
#[derive(Debug)]
pub struct Source {
    /// How errors name it: its path, or `<stdin>`.
    pub name: String,
    pub text: String,
    /// The directory its relative paths start from.
    pub base: PathBuf,
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// The manifest files in `dir` (sorted; below it too with `recursive`).
fn directory(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read the directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if recursive {
                directory(&path, recursive, out)?;
            }
        } else if is_manifest(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The sources `-f` names: files as they are, directories' manifest files, `-` standard input.
pub fn sources(files: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<Source>> {
    let mut paths = Vec::new();
    let mut sources = Vec::new();
    for file in files {
        if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("failed to read the manifest from standard input")?;
            sources.push(Source {
                name: "<stdin>".to_owned(),
                text,
                base: PathBuf::from("."),
            });
        } else if file.is_dir() {
            let before = paths.len();
            directory(file, recursive, &mut paths)?;
            if paths.len() == before {
                anyhow::bail!(
                    "{} holds no .yaml, .yml or .json files{}",
                    file.display(),
                    if recursive {
                        ""
                    } else {
                        " (-R reads subdirectories)"
                    }
                );
            }
        } else {
            paths.push(file.clone());
        }
    }
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        sources.push(Source {
            name: path.display().to_string(),
            text,
            base: path.parent().unwrap_or(Path::new(".")).to_owned(),
        });
    }
    Ok(sources)
}

/// The resources of every source, each with the `file#N` it came from, and with the files
/// they name (warm-up samples, baselines) read in: what `apply` and `diff` send.
fn read(sources: &[Source]) -> anyhow::Result<(Vec<String>, Vec<Resource>)> {
    let (mut names, mut all) = (Vec::new(), Vec::new());
    for source in sources {
        for (name, mut resource) in manifest::parse_sourced(&source.text, &source.name)? {
            inline_warmup(&mut resource, &source.base)?;
            inline_baseline(&mut resource, &source.base)?;
            if all
                .iter()
                .any(|r: &Resource| r.kind() == resource.kind() && r.name() == resource.name())
            {
                anyhow::bail!(
                    "{name}: {} `{}` is also in another file",
                    resource.kind(),
                    resource.name()
                );
            }
            names.push(name);
            all.push(resource);
        }
    }
    Ok((names, all))
}

/// The sources' names, for messages.
fn described(sources: &[Source]) -> String {
    let names: Vec<&str> = sources.iter().map(|s| s.name.as_str()).collect();
    names.join(", ")
}

/// What `apply --dry-run=client` checks: every file parses and validates here; gives the
/// `kind/name` of each resource.
pub fn check(sources: &[Source]) -> anyhow::Result<Vec<String>> {
    let (_, resources) = read(sources)?;
    Ok(resources
        .iter()
        .map(|r| format!("{}/{}", r.kind().to_lowercase(), r.name()))
        .collect())
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

/// `apply -f` (or `diff -f` and `apply --dry-run=server` with `dry_run`).
pub async fn apply(
    api: &HttpsClient,
    sources: &[Source],
    dry_run: bool,
) -> anyhow::Result<Vec<Change>> {
    let (names, resources) = read(sources)?;
    api.post(
        "/v1/apply",
        &ApplyRequest {
            file: described(sources),
            resources,
            sources: names,
            dry_run,
        },
    )
    .await
    .with_context(|| format!("failed to apply {}", described(sources)))
}

/// `delete -f`.
pub async fn delete(api: &HttpsClient, sources: &[Source]) -> anyhow::Result<Vec<Change>> {
    // Only names are sent: the files a manifest refers to are not read.
    let mut resources = Vec::new();
    for source in sources {
        for (_, r) in manifest::parse_sourced(&source.text, &source.name)? {
            resources.push((r.kind().to_owned(), r.name().to_owned()));
        }
    }
    delete_named(api, resources)
        .await
        .with_context(|| format!("failed to delete what {} describes", described(sources)))
}

/// `delete pipeline|deployment NAME...`: `(kind, name)` pairs, kinds as manifests write them.
pub async fn delete_named(
    api: &HttpsClient,
    resources: Vec<(String, String)>,
) -> anyhow::Result<Vec<Change>> {
    Ok(api.post("/v1/delete", &DeleteRequest { resources }).await?)
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
