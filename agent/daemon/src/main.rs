//! `tern-agent`: `join` a control plane once, then `run`.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_agent::{AgentDataDir, JoinOptions};

/// The Tern agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with a one-time token, then run.
    Join {
        /// The control plane's agent address, HOST:PORT.
        #[arg(long)]
        control_plane: String,
        /// Token from `ternctl token create`.
        #[arg(long, env = "TERN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        /// This agent's name in the fleet.
        #[arg(long)]
        name: String,
        /// Labels, k=v,k2=v2 (the token's labels win on conflict).
        #[arg(long, default_value = "", value_parser = tern_proto::labels::parse)]
        labels: std::collections::BTreeMap<String, String>,
        /// Address of the local API, HOST:PORT or unix:PATH [default: 127.0.0.1:7480].
        #[arg(long)]
        listen_api: Option<tern_agent::local_api::ApiAddress>,
        /// Also serve the local API's KServe v2 gRPC form on HOST:PORT or unix:PATH (off by
        /// default).
        #[arg(long)]
        listen_grpc: Option<tern_agent::local_api::ApiAddress>,
        /// Most open connections to the local API; beyond it the longest-idle one is closed.
        #[arg(long, default_value_t = tern_agent::local_api::ApiLimits::default().max_connections)]
        api_max_connections: usize,
        /// Longest time a client may take to send a request's head to the local API.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        api_header_timeout: std::time::Duration,
        /// Longest time a client may take to send a request's body to the local API.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        api_body_timeout: std::time::Duration,
        /// Enroll and exit instead of running.
        #[arg(long)]
        no_run: bool,
        /// Pin this trust root (from `ternctl trust init`) instead of trusting the control
        /// plane's on first use.
        #[arg(long)]
        trust_root: Option<PathBuf>,
        /// Length of one telemetry batch's interval.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        telemetry_interval: std::time::Duration,
        /// Most bytes of telemetry kept while the control plane is unreachable (the oldest
        /// batches are dropped beyond it, and counted).
        #[arg(long, default_value_t = tern_agent::telemetry::buffer::DEFAULT_BUFFER_BYTES)]
        telemetry_buffer_bytes: u64,
        /// Longest deadline any plugin step may have, whatever its manifest says.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        max_plugin_timeout: std::time::Duration,
        /// Most memory of one plugin instance in MiB, whatever its manifest says.
        #[arg(long, default_value_t = tern_agent::limits::DEFAULT_MAX_PLUGIN_MEMORY_MIB)]
        max_plugin_memory_mib: u64,
        /// Bytes of disk the agent keeps free: a download that would leave less is refused.
        #[arg(long, default_value_t = tern_agent::limits::DEFAULT_MIN_FREE_DISK_BYTES)]
        min_free_disk_bytes: u64,
        /// Largest tensor a model may declare, in bytes; larger models are refused.
        #[arg(long, default_value_t = tern_infer_default_tensor_bytes())]
        max_tensor_bytes: u64,
    },
    /// Run an enrolled agent until SIGTERM or Ctrl-C.
    Run {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run a Pipeline manifest once on one input, without a control plane; prints the result
    /// as JSON.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["input", "npy"])))]
    RunLocal {
        /// The Pipeline manifest (YAML).
        #[arg(short = 'f', long = "file")]
        manifest: PathBuf,
        /// Input file for the first step, as a blob.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Media type of --input [default: from its extension].
        #[arg(long, requires = "input")]
        media_type: Option<String>,
        /// Named tensor for the first step, NAME=FILE.npy (repeatable).
        #[arg(long, value_parser = parse_npy_arg)]
        npy: Vec<(String, PathBuf)>,
        /// Run local, unsigned plugin files.
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Print the GPU adapters wgpu finds, as JSON (the agent runs this in a child process).
    #[command(hide = true)]
    GpuProbe,
    /// Record how the agent's last run ended, from the supervisor's variables (systemd's
    /// `$SERVICE_RESULT`, `$EXIT_CODE`, `$EXIT_STATUS`): run it as `ExecStopPost=`, and the
    /// next run reports a crash with the reason.
    RecordExit {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
    },
}

fn tern_infer_default_tensor_bytes() -> u64 {
    tern_agent::limits::AgentLimits::default().max_tensor_bytes
}

fn parse_npy_arg(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !path.is_empty() => {
            Ok((name.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("expected NAME=FILE.npy, got `{text}`")),
    }
}

/// Where run-local caches compiled plugins between runs.
fn compile_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("tern").join("compiled-plugins"))
}

fn run_local(
    manifest: PathBuf,
    input: Option<PathBuf>,
    media_type: Option<String>,
    npy: Vec<(String, PathBuf)>,
    allow_unsigned: bool,
) -> std::process::ExitCode {
    use tern_agent::run_local::{LocalInput, RunLocalError, RunLocalOptions};
    let input = match input {
        Some(path) => LocalInput::File { path, media_type },
        None => LocalInput::Npy(npy),
    };
    let options = RunLocalOptions {
        manifest,
        input,
        allow_unsigned,
        cache_dir: compile_cache_dir(),
    };
    match tern_agent::run_local::run_local(&options) {
        Ok(json) => {
            println!("{json}");
            std::process::ExitCode::SUCCESS
        }
        // A failed step prints as `step <name>: <reason>`.
        Err(RunLocalError::Step(failure)) => {
            eprintln!("{failure}");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::GpuProbe = cli.command {
        println!("{}", tern_agent::capacity::gpu_probe_json());
        return std::process::ExitCode::SUCCESS;
    }
    if let Command::RecordExit { data_dir } = &cli.command {
        use tern_agent::exits::marker::{SupervisorWord, record_exit};
        let word = SupervisorWord::from_env(tern_clock::unix_millis_now());
        return match record_exit(&AgentDataDir::new(data_dir), &word) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: cannot record the exit in {}: {e}",
                    data_dir.display()
                );
                std::process::ExitCode::FAILURE
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr on a full disk) is dropped; reporting it
        // with `eprintln!` would panic the task that logged.
        .log_internal_errors(false)
        .init();
    if let Command::RunLocal {
        manifest,
        input,
        media_type,
        npy,
        allow_unsigned,
    } = cli.command
    {
        return run_local(manifest, input, media_type, npy, allow_unsigned);
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: on a full disk its failure would panic.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            let restart = e
                .downcast_ref::<tern_agent::RunError>()
                .is_some_and(|e| matches!(e, tern_agent::RunError::Storage(_)));
            if restart {
                std::process::ExitCode::from(tern_transport::storage::EXIT_RESTART)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let result = runtime.block_on(async {
        let data_dir = match cli.command {
            Command::Join {
                control_plane,
                token,
                data_dir,
                name,
                labels,
                listen_api,
                listen_grpc,
                api_max_connections,
                api_header_timeout,
                api_body_timeout,
                no_run,
                trust_root,
                telemetry_interval,
                telemetry_buffer_bytes,
                max_plugin_timeout,
                max_plugin_memory_mib,
                max_tensor_bytes,
                min_free_disk_bytes,
            } => {
                let options = JoinOptions {
                    control_plane,
                    token,
                    data_dir: data_dir.clone(),
                    name,
                    labels,
                    listen_api,
                    listen_grpc,
                    api: tern_agent::local_api::ApiLimits {
                        max_connections: api_max_connections.max(1),
                        header_timeout_ms: (api_header_timeout.as_millis() as u64).max(1),
                        body_timeout_ms: (api_body_timeout.as_millis() as u64).max(1),
                    },
                    trust_root,
                    telemetry: tern_agent::config::TelemetryConfig {
                        interval_ms: (telemetry_interval.as_millis() as u64).max(1),
                        buffer_bytes: telemetry_buffer_bytes,
                    },
                    limits: tern_agent::limits::AgentLimits {
                        max_plugin_timeout_ms: (max_plugin_timeout.as_millis() as u64).max(1),
                        max_plugin_memory_mib,
                        max_tensor_bytes,
                        min_free_disk_bytes,
                    },
                };
                let config = tern_agent::join(&options)
                    .await
                    .context("failed to join the control plane")?;
                eprintln!("enrolled as {} (id {})", config.name, config.agent_id);
                if no_run {
                    return Ok(());
                }
                data_dir
            }
            Command::Run { data_dir } => data_dir,
            Command::GpuProbe | Command::RunLocal { .. } | Command::RecordExit { .. } => {
                return Ok(());
            }
        };
        tern_agent::run(AgentDataDir::new(data_dir), tern_agent::shutdown::signal())
            .await
            .context("agent failed")
    });
    // A blocking task stuck in a failing disk must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}
