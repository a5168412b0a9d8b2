//! `ternctl`: the Tern admin CLI. Exit codes: 0 ok, 1 failure, 2 usage.

mod client;
mod output;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_proto::api::{AgentView, TokenRequest, TokenResponse};

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
        let api = client::connect(cli.config.as_deref())?;
        match cli.command {
            Command::Token {
                command: TokenCommand::Create { labels, ttl },
            } => {
                let response: TokenResponse = api
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
                let agents: Vec<AgentView> = api
                    .get("/v1/agents")
                    .await
                    .context("failed to list agents")?;
                print!("{}", output::agents(&agents, output)?);
            }
            Command::Describe {
                what: DescribeCommand::Agent { name, output },
            } => {
                let agent: AgentView = api
                    .get(&format!("/v1/agents/{}", client::path_segment(&name)))
                    .await
                    .with_context(|| format!("failed to describe agent `{name}`"))?;
                print!("{}", output::agent(&agent, output)?);
            }
        }
        Ok(())
    })
}
