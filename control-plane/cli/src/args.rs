//! What `ternctl` accepts: the clap definitions of every command, apart from what they do
//! (`main.rs` and the command modules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::output::Format;

/// Operate a Tern fleet.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// ternctl.toml to use [default: ~/.config/tern/ternctl.toml].
    #[arg(long, global = true, env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum ExperimentCommand {
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
pub(crate) enum BaselineCommand {
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
pub(crate) enum TopCommand {
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
pub(crate) enum RolloutCommand {
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
pub(crate) enum KindArg {
    Plugin,
    Model,
}

pub(crate) fn parse_annotations(text: &str) -> Result<BTreeMap<String, String>, String> {
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
pub(crate) enum KeysCommand {
    /// Create a key pair: NAME.key (private, mode 0600) and NAME.pub.
    Generate {
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
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
pub(crate) enum TokenCommand {
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
pub(crate) enum GetCommand {
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
pub(crate) enum DeleteCommand {
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
pub(crate) enum RevokeCommand {
    /// Refuse an agent's certificate from now on.
    Agent {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum LabelCommand {
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
pub(crate) enum DescribeCommand {
    /// One agent: labels, capacity, GPUs, connection.
    Agent {
        name: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}
