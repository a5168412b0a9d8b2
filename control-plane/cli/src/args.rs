//! What `ternctl` accepts: the clap definitions of every command, apart from what they do
//! (`main.rs` and the command modules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use tern_proto::labels::Selector;

use crate::output::Format;
use crate::resources::{KindArg, parse_selector};

pub(crate) use crate::help::*;

/// `-f FILE...` and `-R`: manifest files, directories of them, or `-` for standard input.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FileArgs {
    /// A manifest file, a directory of them (`.yaml`, `.yml`, `.json`), or `-` for standard
    /// input; repeat for several.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Also read the directories' subdirectories.
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// `-f` and `-R` where files are one choice among others.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OptionalFileArgs {
    /// A manifest file, a directory of them, or `-`; repeat for several.
    #[arg(short = 'f', long = "filename")]
    pub filename: Vec<PathBuf>,
    #[arg(short = 'R', long)]
    pub recursive: bool,
}

/// `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DryRun {
    None,
    Client,
    Server,
}

/// Operate a Tern fleet.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// ternctl.toml to use [default: ~/.config/tern/ternctl.toml].
    #[arg(long, global = true, env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// The control plane to talk to, of the config's contexts [default: the current one].
    #[arg(long, global = true, env = "TERN_CONTEXT")]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Enrollment tokens.
    #[command(after_help = TOKEN_EXAMPLES)]
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// List resources of a kind, or the ones named.
    #[command(after_help = GET_EXAMPLES)]
    Get {
        /// The kind: agents (ag), pipelines (pl), deployments (deploy, dep), releases (rel),
        /// alerts, baselines (bl), tokens (tok); or KIND/NAME.
        #[arg(value_parser = KindArg::parse)]
        kind: KindArg,
        /// Only these (a release or baseline is NAME:VERSION).
        names: Vec<String>,
        /// Only those whose labels match: `k=v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`,
        /// `!k`, comma-separated.
        #[arg(short = 'l', long, value_parser = parse_selector)]
        selector: Option<Selector>,
        /// table, wide, name, json, yaml, or jsonpath=TEMPLATE.
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
        /// After listing, keep watching and print what changes (until interrupted).
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Show one resource in detail.
    #[command(after_help = DESCRIBE_EXAMPLES)]
    Describe {
        /// The kind (as `get` takes it), or KIND/NAME.
        #[arg(value_parser = KindArg::parse)]
        kind: KindArg,
        name: Option<String>,
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// The documentation of a manifest kind and its fields (from its JSON Schema).
    #[command(after_help = EXPLAIN_EXAMPLES)]
    Explain {
        /// KIND or KIND.FIELD.FIELD...: pipelines (pl) or deployments (deploy, dep).
        #[arg(value_parser = crate::explain::Target::parse)]
        target: crate::explain::Target,
        /// Show every field below, as a tree.
        #[arg(long)]
        recursive: bool,
        /// `table` (text) or `json`/`yaml`: the field's JSON Schema.
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// Publisher keys (Ed25519).
    #[command(after_help = KEYS_EXAMPLES)]
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The trust root: which publishers agents trust, signed by offline root keys.
    #[command(after_help = TRUST_EXAMPLES)]
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
    /// Sign an artifact: writes FILE.release beside it (run again with another key to co-sign).
    #[command(after_help = SIGN_EXAMPLES)]
    Sign {
        /// The publisher's private key: a PEM file, or `-` to read it from standard input.
        #[arg(long, conflicts_with = "key_env", required_unless_present = "key_env")]
        key: Option<PathBuf>,
        /// Read the private key (PEM) from this environment variable (a CI secret).
        #[arg(long)]
        key_env: Option<String>,
        #[arg(long, value_enum)]
        kind: ArtifactKindArg,
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
    /// Create or update the pipelines and deployments of manifest files.
    #[command(after_help = APPLY_EXAMPLES)]
    Apply {
        #[command(flatten)]
        files: FileArgs,
        /// `server`: the control plane checks everything and says what would change, and
        /// changes nothing; `client`: only check the files here; `none`: apply.
        #[arg(long, value_enum, default_value_t = DryRun::None, num_args = 0..=1, default_missing_value = "client")]
        dry_run: DryRun,
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// Show what `apply -f` would change. Exits 0 when nothing would, 1 when something would,
    /// 2 on an error (kubectl's convention).
    #[command(after_help = DIFF_EXAMPLES)]
    Diff {
        #[command(flatten)]
        files: FileArgs,
    },
    /// Delete resources by kind and name, or the pipelines and deployments manifest files name.
    /// Deleting an agent decommissions it (revoked and forgotten; its name can enroll again);
    /// deleting a token withdraws it.
    #[command(after_help = DELETE_EXAMPLES)]
    Delete {
        #[command(flatten)]
        files: OptionalFileArgs,
        /// agent, token, pipeline or deployment (or KIND/NAME).
        #[arg(value_parser = KindArg::parse, required_unless_present = "filename")]
        kind: Option<KindArg>,
        names: Vec<String>,
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// Revoke an agent: its certificate is refused from now on and its connection closed.
    #[command(after_help = REVOKE_EXAMPLES)]
    Revoke {
        #[command(subcommand)]
        what: RevokeCommand,
    },
    /// Set (`k=v`) or remove (`k-`) an agent's labels; deployments re-target on their next pass.
    #[command(after_help = LABEL_EXAMPLES)]
    Label {
        #[command(subcommand)]
        what: LabelCommand,
    },
    /// What the fleet is doing, from the agents' telemetry.
    #[command(after_help = TOP_EXAMPLES)]
    Top {
        #[command(subcommand)]
        what: TopCommand,
    },
    /// Drift baselines: what a model's inputs and outputs should look like.
    #[command(after_help = BASELINE_EXAMPLES)]
    Baseline {
        #[command(subcommand)]
        command: BaselineCommand,
    },
    /// Drift of a monitored pipeline: PSI per feature, fleet-wide and per agent.
    #[command(after_help = DRIFT_EXAMPLES)]
    Drift {
        pipeline: String,
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// Print the link to the fleet dashboard (it carries the admin token: keep it private).
    #[command(after_help = DASHBOARD_EXAMPLES)]
    Dashboard,
    /// A/B experiments: a deployment's variants compared.
    #[command(after_help = EXPERIMENT_EXAMPLES)]
    Experiment {
        #[command(subcommand)]
        command: ExperimentCommand,
    },
    /// Watch and steer a deployment's rollout.
    #[command(after_help = ROLLOUT_EXAMPLES)]
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// The control planes ternctl knows (contexts) and which one it talks to.
    #[command(after_help = CONFIG_EXAMPLES)]
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for ternctl and each of its commands into DIR.
    #[command(after_help = MAN_EXAMPLES)]
    Man { dir: PathBuf },
    /// Upload FILE and FILE.release to the control plane (resumes an interrupted upload).
    #[command(after_help = PUSH_EXAMPLES)]
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
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
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
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TopCommand {
    /// Each agent's host (CPU, memory, disk, cache, GPUs) and traffic over the last minutes.
    Agents {
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// Each pipeline's requests, errors, throughput and latency percentiles, and its steps'.
    Pipelines {
        /// How far back to look (e.g. 5m, 1h, 7d) [default: since each pipeline was applied].
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<Duration>,
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RolloutCommand {
    /// Wait for a deployment's rollout to finish, printing its progress: exits 0 once it is
    /// committed (Complete), 1 when it rolled back or failed, or when `--timeout` passes first.
    #[command(after_help = ROLLOUT_STATUS_EXAMPLES)]
    Status {
        deployment: String,
        /// Wait for the outcome (`--watch=false`: print the state once; the exit code still
        /// says whether it is committed).
        #[arg(short = 'w', long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
        watch: bool,
        /// Give up after this long (e.g. 5m); 0 waits for ever.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        timeout: Duration,
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
pub(crate) enum ArtifactKindArg {
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
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
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
pub(crate) enum RevokeCommand {
    /// Refuse an agent's certificate from now on.
    Agent {
        name: String,
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
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
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// List the contexts; `*` marks the current one.
    GetContexts {
        #[arg(short = 'o', long, default_value = "table", value_parser = Format::parse)]
        output: Format,
    },
    /// Make NAME the current context.
    UseContext { name: String },
    /// Print the current context's name.
    CurrentContext,
    /// Add (or replace) the context NAME from a ternctl.toml that `tern-control-plane init`
    /// wrote.
    SetContext {
        name: String,
        #[arg(long)]
        from: PathBuf,
    },
}

/// The whole command tree as parsed, completed and documented, examples on every command.
pub(crate) fn command() -> clap::Command {
    with_examples(<Cli as clap::CommandFactory>::command())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_shows_examples() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                let has = sub
                    .get_after_help()
                    .is_some_and(|h| h.to_string().contains("Examples:"));
                if !has {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::command(), "ternctl", &mut missing);
        assert!(
            missing.is_empty(),
            "no examples in the help of: {missing:?}"
        );
    }
}
