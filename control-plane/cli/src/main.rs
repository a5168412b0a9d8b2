//! `ternctl`: the Tern admin CLI. Exit codes: 0 ok, 1 failure, 2 usage.

mod agents;
mod args;
mod client;
mod config;
mod contexts;
mod drift;
mod explain;
mod help;
mod jsonpath;
mod keys;
mod manifests;
mod output;
mod push;
mod resources;
mod rollout;

use std::path::PathBuf;

use anyhow::Context;
use tern_proto::api::{TokenRequest, TokenResponse};
use tern_proto::release::ArtifactKind;
use tern_proto::trust::SignedTrustRoot;

use crate::args::{
    ArtifactKindArg, BaselineCommand, Cli, Command, DryRun, ExperimentCommand, KeysCommand,
    LabelCommand, RevokeCommand, RolloutCommand, TokenCommand, TopCommand, TrustCommand,
};
use crate::output::Format;
use crate::resources::{Kind, Query};

/// `GET path` on the admin API, then prints what `render` makes of the answer; `what` says
/// what failed ("list agents").
async fn get_and_print<T: serde::de::DeserializeOwned>(
    api: &tern_transport::https::HttpsClient,
    path: &str,
    what: &str,
    render: impl FnOnce(&T) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let value: T = api
        .get(path)
        .await
        .with_context(|| format!("failed to {what}"))?;
    print!("{}", render(&value)?);
    Ok(())
}

/// Exit codes: 0 ok; 1 a failure, changes found by `diff`, or a rollout that did not commit;
/// 2 a usage error (clap's), or an error during `diff` (kubectl's convention).
fn main() -> std::process::ExitCode {
    let matches = args::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let diff = matches!(cli.command, Command::Diff { .. });
    match run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(if diff { 2 } else { 1 })
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let target = client::Target {
            file: cli.config.as_deref(),
            context: cli.context.as_deref(),
        };
        let api = || client::connect(target);
        match cli.command {
            Command::Keys {
                command: KeysCommand::Generate { out },
            } => {
                let (private, public, id) = keys::generate(&out)?;
                println!(
                    "key {id}: private {} (keep it secret), public {}",
                    private.display(),
                    public.display()
                );
            }
            Command::Sign {
                key,
                key_env,
                kind,
                name,
                version,
                expires,
                annotations,
                file,
            } => {
                let kind = match kind {
                    ArtifactKindArg::Plugin => ArtifactKind::Plugin,
                    ArtifactKindArg::Model => ArtifactKind::Model,
                };
                let key = keys::KeySource::from_args(key, key_env)?;
                let (out, signed) = keys::sign(&keys::SignRequest {
                    key: &key,
                    kind,
                    name: &name,
                    version,
                    expires,
                    annotations,
                    file: &file,
                })?;
                println!(
                    "{} {} ({}, {} signature(s)) -> {}",
                    kind,
                    signed.signed.reference(),
                    signed.signed.digest,
                    signed.signatures.len(),
                    out.display()
                );
            }
            Command::Push { file, quiet } => {
                let view = push::push(&api()?, &file, quiet).await?;
                println!(
                    "pushed {} {}:{} ({})",
                    view.kind, view.name, view.version, view.digest
                );
            }
            Command::Trust { command } => trust(command, api).await?,
            Command::Apply {
                files,
                dry_run,
                output,
            } => {
                let sources = manifests::sources(&files.files, files.recursive)?;
                if dry_run == DryRun::Client {
                    for name in manifests::check(&sources)? {
                        println!("{name} valid (dry run: client)");
                    }
                    return Ok(0);
                }
                let server = dry_run == DryRun::Server;
                let changes = manifests::apply(&api()?, &sources, server).await?;
                if output.is_table() {
                    let summary = manifests::summary(&changes);
                    if server {
                        for line in summary.lines() {
                            println!("{line} (dry run: server)");
                        }
                    } else {
                        print!("{summary}");
                    }
                } else {
                    print!("{}", output::structured_any(&changes, output)?);
                }
            }
            Command::Diff { files } => {
                let sources = manifests::sources(&files.files, files.recursive)?;
                let changes = manifests::apply(&api()?, &sources, true).await?;
                let diff = manifests::diff(&changes);
                if diff.is_empty() {
                    println!("no changes");
                } else {
                    print!("{diff}");
                    return Ok(1);
                }
            }
            Command::Delete {
                files,
                kind,
                names,
                output,
            } => {
                let api = api()?;
                if !files.filename.is_empty() {
                    if kind.is_some() {
                        anyhow::bail!("delete takes -f FILE or KIND NAME, not both");
                    }
                    let sources = manifests::sources(&files.filename, files.recursive)?;
                    let changes = manifests::delete(&api, &sources).await?;
                    print!("{}", manifests::summary(&changes));
                    return Ok(0);
                }
                let Some(kind) = kind else {
                    anyhow::bail!("delete needs -f FILE or KIND NAME");
                };
                let names: Vec<String> = kind.name.into_iter().chain(names).collect();
                if names.is_empty() {
                    anyhow::bail!("delete {} needs a NAME", kind.kind.singular());
                }
                match kind.kind {
                    Kind::Agent => {
                        for name in &names {
                            print!("{}", agents::delete(&api, name, output).await?);
                        }
                    }
                    Kind::Token => {
                        for id in &names {
                            print!("{}", agents::withdraw_token(&api, id, output).await?);
                        }
                    }
                    Kind::Pipeline | Kind::Deployment => {
                        let manifest_kind = match kind.kind {
                            Kind::Pipeline => "Pipeline",
                            _ => "Deployment",
                        };
                        let pairs = names
                            .iter()
                            .map(|n| (manifest_kind.to_owned(), n.clone()))
                            .collect();
                        let changes = manifests::delete_named(&api, pairs)
                            .await
                            .with_context(|| format!("failed to delete {}", names.join(", ")))?;
                        print!("{}", manifests::summary(&changes));
                    }
                    other => anyhow::bail!(
                        "{}s cannot be deleted; delete takes agent, token, pipeline or deployment",
                        other.singular()
                    ),
                }
            }
            Command::Revoke {
                what: RevokeCommand::Agent { name, output },
            } => print!("{}", agents::revoke(&api()?, &name, output).await?),
            Command::Label {
                what:
                    LabelCommand::Agent {
                        name,
                        changes,
                        overwrite,
                        output,
                    },
            } => print!(
                "{}",
                agents::label(&api()?, &name, &changes, overwrite, output).await?
            ),
            Command::Config { command } => config::run(target, command)?,
            Command::Completion { shell } => {
                let mut command = args::command();
                clap_complete::generate(shell, &mut command, "ternctl", &mut std::io::stdout());
            }
            Command::Explain {
                target,
                recursive,
                output,
            } => {
                if output.is_table() {
                    print!(
                        "{}",
                        explain::explain(&target, recursive).map_err(anyhow::Error::msg)?
                    );
                } else {
                    let schema = explain::schema_of(&target).map_err(anyhow::Error::msg)?;
                    print!("{}", output::structured_any(&schema, output)?);
                }
            }
            Command::Man { dir } => {
                for page in config::man_pages(&dir)? {
                    println!("{}", page.display());
                }
            }
            Command::Get {
                kind,
                names,
                selector,
                output,
                watch,
            } => {
                let query = Query {
                    names: kind.name.into_iter().chain(names).collect(),
                    selector: selector.unwrap_or_default(),
                    format: output,
                };
                resources::get_kind(&api()?, kind.kind, &query, watch).await?;
            }
            Command::Rollout {
                command:
                    RolloutCommand::Status {
                        deployment,
                        watch,
                        timeout,
                    },
            } => return rollout::status(&api()?, &deployment, watch, timeout).await,
            Command::Rollout { command } => {
                let (deployment, verb) = match &command {
                    RolloutCommand::Pause { deployment } => (deployment, "pause"),
                    RolloutCommand::Resume { deployment } => (deployment, "resume"),
                    RolloutCommand::Undo { deployment } => (deployment, "undo"),
                    RolloutCommand::Status { .. } => unreachable!("handled above"),
                };
                let path = format!(
                    "/v1/deployments/{}/rollout/{verb}",
                    client::path_segment(deployment)
                );
                let view: tern_proto::api::DeploymentView = api()?
                    .post(&path, &serde_json::json!({}))
                    .await
                    .with_context(|| format!("failed to reach the rollout of `{deployment}`"))?;
                print!("{}", output::rollout(&view, Format::Table)?);
            }
            Command::Top {
                what: TopCommand::Agents { output },
            } => {
                let read = "read the agents' telemetry";
                get_and_print(&api()?, "/v1/top/agents", read, |rows: &Vec<_>| {
                    output::top_agents(rows, output)
                })
                .await?;
            }
            Command::Top {
                what: TopCommand::Pipelines { window, output },
            } => {
                let path = match window {
                    Some(w) => format!("/v1/top/pipelines?window={}", w.as_secs().max(1)),
                    None => "/v1/top/pipelines".to_owned(),
                };
                let read = "read the pipelines' telemetry";
                get_and_print(&api()?, &path, read, |rows: &Vec<_>| {
                    output::top_pipelines(rows, output)
                })
                .await?;
            }
            Command::Dashboard => {
                let (config, path) = client::load_config(target)?;
                println!("https://{}/#token={}", config.api, config.admin_token);
                eprintln!(
                    "The control plane's certificate is signed by its own CA: trust the \
                     ca_certificate of {} in your browser (or reach it through a tunnel).",
                    path.display()
                );
            }
            Command::Experiment {
                command:
                    ExperimentCommand::Status {
                        deployment,
                        window,
                        output,
                    },
            } => {
                let mut path = format!("/v1/experiments/{}", client::path_segment(&deployment));
                if let Some(w) = window {
                    path.push_str(&format!("?window={}", w.as_secs().max(1)));
                }
                let view: tern_proto::api::ExperimentView = api()?
                    .get(&path)
                    .await
                    .with_context(|| format!("failed to read the experiment of `{deployment}`"))?;
                print!("{}", output::experiment(&view, output)?);
            }
            Command::Drift { pipeline, output } => {
                let view: tern_proto::api::PipelineDrift = api()?
                    .get(&format!("/v1/drift/{}", client::path_segment(&pipeline)))
                    .await
                    .with_context(|| format!("failed to read the drift of `{pipeline}`"))?;
                print!("{}", drift::pipeline_drift(&view, output)?);
            }
            Command::Baseline {
                command:
                    BaselineCommand::Create {
                        name,
                        from_file,
                        tensor,
                        pipeline,
                        window,
                        bins,
                        out,
                        output,
                    },
            } => {
                let request = tern_proto::api::BaselineCreate {
                    baseline: match &from_file {
                        Some(path) => Some(drift::from_file(path, tensor.as_deref(), bins)?),
                        None => None,
                    },
                    window_seconds: pipeline.as_ref().map(|_| window.as_secs().max(1)),
                    pipeline,
                    bins: Some(bins),
                    name,
                };
                let view: tern_proto::api::BaselineView = api()?
                    .post("/v1/baselines", &request)
                    .await
                    .context("failed to create the baseline")?;
                if let (Some(path), Some(baseline)) = (&out, &view.baseline) {
                    std::fs::write(path, serde_json::to_string_pretty(baseline)? + "\n")
                        .with_context(|| format!("failed to write {}", path.display()))?;
                }
                match output {
                    table if table.is_table() => println!(
                        "baseline {}:{} created ({} features, from {})",
                        view.name, view.version, view.features, view.source
                    ),
                    other => print!("{}", output::structured_any(&view, other)?),
                }
            }
            Command::Token {
                command: TokenCommand::Create { labels, ttl },
            } => {
                let response: TokenResponse = api()?
                    .post(
                        "/v1/tokens",
                        &TokenRequest {
                            labels,
                            ttl_seconds: ttl.as_secs().max(1),
                        },
                    )
                    .await
                    .context("failed to create a token")?;
                println!("{}", response.token);
            }
            Command::Describe { kind, name, output } => {
                let Some(name) = kind.name.or(name) else {
                    anyhow::bail!("describe {} needs a NAME", kind.kind.singular());
                };
                print!(
                    "{}",
                    resources::describe(&api()?, kind.kind, &name, output).await?
                );
            }
        }
        Ok(0)
    })
}

/// Sends a trust root for the control plane to pin.
async fn pin_trust_root(
    api: &tern_transport::https::HttpsClient,
    doc: &SignedTrustRoot,
) -> anyhow::Result<()> {
    let _: SignedTrustRoot = api
        .send_json(hyper::Method::PUT, "/v1/trust-root", doc)
        .await
        .context("the control plane refused the trust root")?;
    Ok(())
}

async fn trust(
    command: TrustCommand,
    api: impl Fn() -> anyhow::Result<tern_transport::https::HttpsClient>,
) -> anyhow::Result<()> {
    let read_keys = |paths: &[PathBuf]| -> anyhow::Result<Vec<_>> {
        paths.iter().map(|p| keys::read_secret(p)).collect()
    };
    let read_publishers = |paths: &[PathBuf]| -> anyhow::Result<Vec<_>> {
        paths.iter().map(|p| keys::read_public(p)).collect()
    };
    let (doc, out, offline) = match command {
        TrustCommand::Init {
            root_keys,
            root_threshold,
            publishers,
            threshold,
            out,
            offline,
            expires,
        } => {
            let doc = keys::trust_init(
                &read_keys(&root_keys)?,
                root_threshold,
                read_publishers(&publishers)?,
                threshold,
                expires,
            )?;
            (doc, out, offline)
        }
        TrustCommand::Rotate {
            root_keys,
            new_root_keys,
            root_threshold,
            publishers,
            threshold,
            current,
            out,
            offline,
            expires,
        } => {
            let current: SignedTrustRoot = match current {
                Some(path) => keys::read_trust_root(&path)?,
                None => api()?
                    .get("/v1/trust-root")
                    .await
                    .context("failed to fetch the current trust root")?,
            };
            let rotation = keys::Rotation {
                new_root_keys: read_keys(&new_root_keys)?,
                root_threshold,
                publishers: (!publishers.is_empty())
                    .then(|| read_publishers(&publishers))
                    .transpose()?,
                threshold,
                expires,
            };
            let doc = keys::trust_rotate(&current, &read_keys(&root_keys)?, rotation)?;
            (doc, out, offline)
        }
        TrustCommand::Push { file } => {
            let doc = keys::read_trust_root(&file)?;
            pin_trust_root(&api()?, &doc).await?;
            println!("pinned trust root version {}", doc.signed.version);
            return Ok(());
        }
        TrustCommand::Show { output } => {
            let doc: SignedTrustRoot = api()?
                .get("/v1/trust-root")
                .await
                .context("failed to fetch the trust root")?;
            print!("{}", output::trust_root(&doc, output)?);
            return Ok(());
        }
    };
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    keys::replace(&out, text.as_bytes())?;
    println!(
        "trust root version {} ({} publisher(s), threshold {}) -> {}",
        doc.signed.version,
        doc.signed.publishers.len(),
        doc.signed.threshold,
        out.display()
    );
    if !offline {
        pin_trust_root(&api()?, &doc).await?;
        println!("pinned on the control plane; agents pick it up with their next desired state");
    }
    Ok(())
}
