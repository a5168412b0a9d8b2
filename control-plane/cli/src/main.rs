//! `ternctl`: the Tern admin CLI. Exit codes: 0 ok, 1 failure, 2 usage.

mod agents;
mod client;
mod drift;
mod keys;
mod manifests;
mod output;
mod push;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_proto::api::{AgentView, ReleaseView, TokenRequest, TokenResponse};
use tern_proto::release::ArtifactKind;
use tern_proto::trust::SignedTrustRoot;

use crate::output::Format;

/// Operate a Tern fleet.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// ternctl.toml to use [default: ~/.config/tern/ternctl.toml].
    #[arg(long, global = true, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enrollment tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List resources.
    Get {
        #[command(subcommand)]
        what: GetCommand,
    },
    /// Show one resource in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeCommand,
    },
    /// Publisher keys (Ed25519).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The trust root: which publishers agents trust, signed by offline root keys.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Sign an artifact: writes FILE.release beside it (run again with another key to co-sign).
    Sign {
        /// The publisher's private key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Release name, as pipelines refer to it (`name:version`).
        #[arg(long)]
        name: String,
        /// Release version; agents never accept a lower one than they have seen.
        #[arg(long)]
        version: u64,
        /// How long the release stays valid (e.g. 90d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Free-form annotations, k=v,k2=v2.
        #[arg(long, default_value = "", value_parser = parse_annotations)]
        annotations: BTreeMap<String, String>,
        /// The artifact: a `.wasm` component or an `.onnx` model.
        file: PathBuf,
    },
    /// Create or update the pipelines and deployments of a manifest file.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show what `apply -f` would change.
    Diff {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete the pipelines and deployments a manifest file names (`-f`), decommission an
    /// agent, or withdraw an enrollment token.
    #[command(args_conflicts_with_subcommands = true, arg_required_else_help = true)]
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        #[command(subcommand)]
        what: Option<DeleteCommand>,
    },
    /// Revoke an agent: its certificate is refused from now on and its connection closed.
    Revoke {
        #[command(subcommand)]
        what: RevokeCommand,
    },
    /// Set (`k=v`) or remove (`k-`) an agent's labels; deployments re-target on their next pass.
    Label {
        #[command(subcommand)]
        what: LabelCommand,
    },
    /// What the fleet is doing, from the agents' telemetry.
    Top {
        #[command(subcommand)]
        what: TopCommand,
    },
    /// Drift baselines: what a model's inputs and outputs should look like.
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Drift of a monitored pipeline: PSI per feature, fleet-wide and per agent.
    Drift {
        pipeline: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print the link to the fleet dashboard (it carries the admin token: keep it private).
    Dashboard,
    /// A/B experiments: a deployment's variants compared.
    Experiment {
        #[command(subcommand)]
        command: ExperimentCommand,
    },
    /// Watch and steer a deployment's rollout.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Upload FILE and FILE.release to the control plane (resumes an interrupted upload).
    Push {
        file: PathBuf,
        /// No progress bar.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ExperimentCommand {
    /// Each variant's share of requests, errors, latency and output distribution (against the
    /// first variant, the control).
    Status {
        deployment: String,
        /// How far back to look [default: since the experiment or the revision started].
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum BaselineCommand {
    /// Store a baseline as the next version of NAME, from a sample file or from what the
    /// agents running a pipeline saw; pipelines refer to it as `NAME:VERSION`.
    Create {
        name: String,
        /// A CSV of samples: a header row (`input:TENSOR[i]` names, or see --tensor), then
        /// one row per sample.
        #[arg(
            long,
            conflicts_with = "pipeline",
            required_unless_present = "pipeline"
        )]
        from_file: Option<PathBuf>,
        /// Name CSV column i `input:TENSOR[i]`.
        #[arg(long, requires = "from_file")]
        tensor: Option<String>,
        /// Build it from this pipeline's feature distributions, fleet-wide.
        #[arg(long)]
        pipeline: Option<String>,
        /// How far back to look with --pipeline (e.g. 30m, 1d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        window: Duration,
        /// Bins per feature, at its quantiles.
        #[arg(long, default_value_t = 10)]
        bins: usize,
        /// Also write the baseline's JSON here (for a manifest's `monitoring.baseline`).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum TopCommand {
    /// Each agent's host (CPU, memory, disk, cache, GPUs) and traffic over the last minutes.
    Agents {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Each pipeline's requests, errors, throughput and latency percentiles, and its steps'.
    Pipelines {
        /// How far back to look (e.g. 5m, 1h, 7d) [default: since each pipeline was applied].
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum RolloutCommand {
    /// Waves, agents and what each one runs.
    Status {
        deployment: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Start no new wave until resumed.
    Pause {
        deployment: String,
    },
    Resume {
        deployment: String,
    },
    /// Send every agent back to the revision before this rollout.
    Undo {
        deployment: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Plugin,
    Model,
}

fn parse_annotations(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("annotation `{pair}` is not of the form key=value"))
        })
        .collect()
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key pair: NAME.key (private, mode 0600) and NAME.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Create the first trust root, sign it with the root key(s) and pin it on the control plane.
    Init {
        /// Root private key(s); keep them offline afterwards.
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// Root keys that must sign the next trust root.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Publisher public key(s) whose signatures agents accept.
        #[arg(long = "publisher", required = true)]
        publishers: Vec<PathBuf>,
        /// Distinct publisher signatures each release needs.
        #[arg(long, default_value_t = 1)]
        threshold: u32,
        /// Where to write the signed document.
        #[arg(long, default_value = "trust-root.json")]
        out: PathBuf,
        /// Only write the document; pin it later with `ternctl trust push`.
        #[arg(long)]
        offline: bool,
        /// How long agents accept new releases under it (e.g. 365d); they warn 30 days before.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// Replace the trust root: a higher version signed by the current root keys.
    Rotate {
        /// Current root private key(s), enough to reach the current root threshold.
        #[arg(long = "root-key", required = true)]
        root_keys: Vec<PathBuf>,
        /// New root private key(s), replacing the current root keys.
        #[arg(long = "new-root-key")]
        new_root_keys: Vec<PathBuf>,
        #[arg(long)]
        root_threshold: Option<u32>,
        /// Publisher public keys, replacing the current list.
        #[arg(long = "publisher")]
        publishers: Vec<PathBuf>,
        #[arg(long)]
        threshold: Option<u32>,
        /// The current trust root [default: the one the control plane pins].
        #[arg(long)]
        current: Option<PathBuf>,
        #[arg(long, default_value = "trust-root.json")]
        out: PathBuf,
        #[arg(long)]
        offline: bool,
        /// How long agents accept new releases under the new trust root (e.g. 365d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    /// Pin a trust root document made with `--offline`.
    Push { file: PathBuf },
    /// Show the pinned trust root.
    Show {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a one-time enrollment token; prints only the token.
    Create {
        /// Labels given to the agent that enrolls with it, k=v,k2=v2.
        #[arg(long, default_value = "", value_parser = tern_proto::labels::parse)]
        labels: BTreeMap<String, String>,
        /// How long the token stays valid (e.g. 30m, 1h, 2d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum GetCommand {
    /// Enrolled agents and whether they are Ready.
    Agents {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Pipelines, their latest revision and the releases it pins.
    Pipelines {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Deployments and their rollouts.
    Deployments {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Signed releases and whether their artifacts are uploaded.
    Releases {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Drift alerts, firing first.
    Alerts {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Stored drift baselines.
    Baselines {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Enrollment tokens nobody redeemed yet.
    Tokens {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum DeleteCommand {
    /// Decommission an agent: revoke it and forget it (its name can enroll again).
    Agent {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Withdraw an enrollment token nobody redeemed yet.
    Token {
        id: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum RevokeCommand {
    /// Refuse an agent's certificate from now on.
    Agent {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum LabelCommand {
    /// `ternctl label agent NAME k=v k2-`.
    Agent {
        name: String,
        /// `KEY=VALUE` sets a label, `KEY-` removes one.
        #[arg(required = true)]
        changes: Vec<String>,
        /// Allow changing the value of a label the agent already has.
        #[arg(long)]
        overwrite: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum DescribeCommand {
    /// One agent: labels, capacity, GPUs, connection.
    Agent {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
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
                let rows: Vec<tern_proto::api::AgentTop> = api()?
                    .get("/v1/top/agents")
                    .await
                    .context("failed to read the agents' telemetry")?;
                print!("{}", output::top_agents(&rows, output)?);
            }
            Command::Top {
                what: TopCommand::Pipelines { window, output },
            } => {
                let path = match window {
                    Some(w) => format!("/v1/top/pipelines?window={}", w.as_secs().max(1)),
                    None => "/v1/top/pipelines".to_owned(),
                };
                let rows: Vec<tern_proto::api::PipelineTop> = api()?
                    .get(&path)
                    .await
                    .context("failed to read the pipelines' telemetry")?;
                print!("{}", output::top_pipelines(&rows, output)?);
            }
            Command::Get {
                what: GetCommand::Pipelines { output },
            } => {
                let list: Vec<tern_proto::api::PipelineView> = api()?
                    .get("/v1/pipelines")
                    .await
                    .context("failed to list pipelines")?;
                print!("{}", output::pipelines(&list, output)?);
            }
            Command::Get {
                what: GetCommand::Deployments { output },
            } => {
                let list: Vec<tern_proto::api::DeploymentView> = api()?
                    .get("/v1/deployments")
                    .await
                    .context("failed to list deployments")?;
                print!("{}", output::deployments(&list, output)?);
            }
            Command::Get {
                what: GetCommand::Releases { output },
            } => {
                let releases: Vec<ReleaseView> = api()?
                    .get("/v1/releases")
                    .await
                    .context("failed to list releases")?;
                print!("{}", output::releases(&releases, output)?);
            }
            Command::Get {
                what: GetCommand::Alerts { output },
            } => {
                let list: Vec<tern_proto::api::AlertView> = api()?
                    .get("/v1/alerts")
                    .await
                    .context("failed to list alerts")?;
                print!("{}", drift::alerts(&list, output)?);
            }
            Command::Get {
                what: GetCommand::Baselines { output },
            } => {
                let list: Vec<tern_proto::api::BaselineView> = api()?
                    .get("/v1/baselines")
                    .await
                    .context("failed to list baselines")?;
                print!("{}", drift::baselines(&list, output)?);
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
                let agents: Vec<AgentView> = api()?
                    .get("/v1/agents")
                    .await
                    .context("failed to list agents")?;
                print!("{}", output::agents(&agents, output)?);
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
