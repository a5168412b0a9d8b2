//! `ternctl`: the Tern admin CLI. Exit codes: 0 ok, 1 failure, 2 usage.

mod agents;
mod args;
mod client;
mod drift;
mod keys;
mod manifests;
mod output;
mod push;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser as _;
use tern_proto::api::{AgentView, TokenRequest, TokenResponse};
use tern_proto::release::ArtifactKind;
use tern_proto::trust::SignedTrustRoot;

use crate::args::{
    BaselineCommand, Cli, Command, DeleteCommand, DescribeCommand, ExperimentCommand, GetCommand,
    KeysCommand, KindArg, LabelCommand, RevokeCommand, RolloutCommand, TokenCommand, TopCommand,
    TrustCommand,
};
use crate::output::Format;

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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(async {
        let config = cli.config.as_deref();
        let api = || client::connect(config);
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
                kind,
                name,
                version,
                expires,
                annotations,
                file,
            } => {
                let kind = match kind {
                    KindArg::Plugin => ArtifactKind::Plugin,
                    KindArg::Model => ArtifactKind::Model,
                };
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
            Command::Apply { file, output } => {
                let changes = manifests::apply(&api()?, &file, false).await?;
                match output {
                    Format::Table => print!("{}", manifests::summary(&changes)),
                    other => print!("{}", output::structured_any(&changes, other)?),
                }
            }
            Command::Diff { file } => {
                let changes = manifests::apply(&api()?, &file, true).await?;
                let diff = manifests::diff(&changes);
                if diff.is_empty() {
                    println!("no changes");
                } else {
                    print!("{diff}");
                }
            }
            Command::Delete {
                file: Some(file), ..
            } => {
                let changes = manifests::delete(&api()?, &file).await?;
                print!("{}", manifests::summary(&changes));
            }
            Command::Delete {
                what: Some(DeleteCommand::Agent { name, output }),
                ..
            } => print!("{}", agents::delete(&api()?, &name, output).await?),
            Command::Delete {
                what: Some(DeleteCommand::Token { id, output }),
                ..
            } => print!("{}", agents::withdraw_token(&api()?, &id, output).await?),
            Command::Delete { .. } => {
                anyhow::bail!("delete needs -f FILE, `agent NAME` or `token ID`")
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
            Command::Get {
                what: GetCommand::Tokens { output },
            } => print!("{}", agents::tokens(&api()?, output).await?),
            Command::Rollout { command } => {
                let (deployment, verb) = match &command {
                    RolloutCommand::Status { deployment, .. } => (deployment, None),
                    RolloutCommand::Pause { deployment } => (deployment, Some("pause")),
                    RolloutCommand::Resume { deployment } => (deployment, Some("resume")),
                    RolloutCommand::Undo { deployment } => (deployment, Some("undo")),
                };
                let path = format!("/v1/deployments/{}", client::path_segment(deployment));
                let view: tern_proto::api::DeploymentView = match verb {
                    None => api()?.get(&path).await,
                    Some(verb) => {
                        api()?
                            .post(&format!("{path}/rollout/{verb}"), &serde_json::json!({}))
                            .await
                    }
                }
                .with_context(|| format!("failed to reach the rollout of `{deployment}`"))?;
                let output = match command {
                    RolloutCommand::Status { output, .. } => output,
                    _ => Format::Table,
                };
                print!("{}", output::rollout(&view, output)?);
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
            Command::Get {
                what: GetCommand::Pipelines { output },
            } => {
                get_and_print(
                    &api()?,
                    "/v1/pipelines",
                    "list pipelines",
                    |list: &Vec<_>| output::pipelines(list, output),
                )
                .await?;
            }
            Command::Get {
                what: GetCommand::Deployments { output },
            } => {
                let read = "list deployments";
                get_and_print(&api()?, "/v1/deployments", read, |list: &Vec<_>| {
                    output::deployments(list, output)
                })
                .await?;
            }
            Command::Get {
                what: GetCommand::Releases { output },
            } => {
                get_and_print(&api()?, "/v1/releases", "list releases", |list: &Vec<_>| {
                    output::releases(list, output)
                })
                .await?;
            }
            Command::Get {
                what: GetCommand::Alerts { output },
            } => {
                get_and_print(&api()?, "/v1/alerts", "list alerts", |list: &Vec<_>| {
                    drift::alerts(list, output)
                })
                .await?;
            }
            Command::Get {
                what: GetCommand::Baselines { output },
            } => {
                get_and_print(
                    &api()?,
                    "/v1/baselines",
                    "list baselines",
                    |list: &Vec<_>| drift::baselines(list, output),
                )
                .await?;
            }
            Command::Dashboard => {
                let (config, path) = client::load_config(config)?;
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
                    Format::Table => println!(
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
            Command::Get {
                what: GetCommand::Agents { output },
            } => {
                get_and_print(&api()?, "/v1/agents", "list agents", |list: &Vec<_>| {
                    output::agents(list, output)
                })
                .await?;
            }
            Command::Describe {
                what: DescribeCommand::Agent { name, output },
            } => {
                let agent: AgentView = api()?
                    .get(&format!("/v1/agents/{}", client::path_segment(&name)))
                    .await
                    .with_context(|| format!("failed to describe agent `{name}`"))?;
                print!("{}", output::agent(&agent, output)?);
            }
        }
        Ok(())
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
