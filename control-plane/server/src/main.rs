//! `tern-control-plane`: `init` a data dir, then `serve` it.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_control_plane::{DataDir, InitOptions, ReplicaOptions, RunningControlPlane, ServeOptions};

/// The Tern control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a data dir: CA, server certificate, admin credential, config.toml and ternctl.toml.
    Init {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        /// UDP (QUIC) and TCP (enrollment) address for agents [default: 0.0.0.0:7443].
        #[arg(long)]
        listen_agents: Option<SocketAddr>,
        /// Address of the HTTPS admin API [default: 127.0.0.1:7444].
        #[arg(long)]
        listen_api: Option<SocketAddr>,
        /// Extra DNS name or IP address for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Keep the records in PostgreSQL (`postgres://user@host:port/db`), which replicas
        /// share [default: sled databases in the data dir].
        #[arg(long)]
        store: Option<String>,
        /// A file (mode 0600) holding the store's password [default: `PGPASSWORD`, else
        /// `~/.pgpass`]; the URL itself must not hold one.
        #[arg(long, requires = "store")]
        store_password_file: Option<PathBuf>,
        /// Keep artifacts in `s3://bucket/prefix` (endpoint and credentials from `AWS_*`
        /// variables) or a directory every replica reaches [default: artifacts/ in the data
        /// dir].
        #[arg(long)]
        artifacts: Option<String>,
    },
    /// Replicas of a control plane whose store and artifacts they share.
    Replica {
        #[command(subcommand)]
        command: ReplicaCommand,
    },
    /// Admin API credentials.
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
    /// Run the control plane until SIGTERM or Ctrl-C.
    Serve {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        /// Overrides listen_agents of config.toml.
        #[arg(long)]
        listen_agents: Option<SocketAddr>,
        /// Overrides listen_api of config.toml.
        #[arg(long)]
        listen_api: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum ReplicaCommand {
    /// Prepare another replica from the first one's data dir: the CA, server identity, admin
    /// credential and online key are copied file to file (copy FIRST_DATA_DIR to this machine
    /// first; keys never travel through the database), the store and artifacts are shared.
    Init {
        /// The data dir of a replica made with `init --store --artifacts`.
        #[arg(long)]
        from: PathBuf,
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        /// UDP (QUIC) and TCP (enrollment) address for agents [default: the first's].
        #[arg(long)]
        listen_agents: Option<SocketAddr>,
        /// Address of the HTTPS admin API [default: the first's].
        #[arg(long)]
        listen_api: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// Make a credential; prints it once (only its hash is kept). `--role read` may read
    /// everything (`/metrics`, `get`, `top`, the dashboard) and change nothing.
    Create {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, value_enum)]
        role: tern_control_plane::credentials::Role,
        /// How long it is accepted (e.g. 30d); for ever when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// List the credentials made with `create` (not the admin credential of `init`): id, role,
    /// when made, when they expire, when last used.
    List {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        /// `table` or `json`.
        #[arg(short = 'o', long, default_value = "table")]
        output: String,
    },
    /// Revoke a credential by id: it is accepted no more (by every replica).
    Revoke {
        #[arg(long, env = "TERN_DATA_DIR")]
        data_dir: PathBuf,
        id: String,
    },
}

/// Where a data dir's credentials live: the store replicas share, or its own file.
fn credential_store(
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<tern_control_plane::backend::PostgresBackend>> {
    let loaded = DataDir::new(data_dir)
        .load()
        .with_context(|| format!("{} is not a control plane data dir", data_dir.display()))?;
    let config = loaded.config;
    config
        .store
        .map(|url| {
            use tern_control_plane::backend::postgres::{Link, Secrets};
            let secrets = Secrets::from_env(config.store_password_file.as_deref());
            let link = Link::parse(&url, &secrets).context("the store's settings")?;
            tern_control_plane::backend::PostgresBackend::open(&link, "registry", 1)
                .context("cannot reach the store")
        })
        .transpose()
}

fn when(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".to_owned(), tern_clock::rfc3339)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Not `eprintln!`: on a full disk its failure would panic.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Init {
            data_dir,
            listen_agents,
            listen_api,
            server_names,
            store,
            store_password_file,
            artifacts,
        } => {
            let dir = DataDir::new(&data_dir);
            let config = dir
                .init(&InitOptions {
                    listen_agents,
                    listen_api,
                    server_names,
                    store,
                    store_password_file,
                    artifacts,
                })
                .with_context(|| format!("failed to initialize {}", data_dir.display()))?;
            println!("initialized control plane in {}", data_dir.display());
            println!(
                "  agents connect to   {} (QUIC/UDP; enrollment on TCP)",
                config.listen_agents
            );
            println!("  admin API           https://{}", config.listen_api);
            println!("  ternctl config      {}", dir.ternctl_config().display());
            println!(
                "next: tern-control-plane serve --data-dir {}",
                data_dir.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Replica {
            command:
                ReplicaCommand::Init {
                    from,
                    data_dir,
                    listen_agents,
                    listen_api,
                },
        } => {
            let dir = DataDir::new(&data_dir);
            let config = dir
                .init_replica(
                    &DataDir::new(&from),
                    &ReplicaOptions {
                        listen_agents,
                        listen_api,
                    },
                )
                .with_context(|| {
                    format!("failed to prepare a replica in {}", data_dir.display())
                })?;
            println!(
                "prepared a replica of {} in {}",
                from.display(),
                data_dir.display()
            );
            println!("  agents connect to   {}", config.listen_agents);
            println!("  admin API           https://{}", config.listen_api);
            println!(
                "next: tern-control-plane serve --data-dir {}",
                data_dir.display()
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Credential {
            command:
                CredentialCommand::Create {
                    data_dir,
                    role,
                    ttl,
                },
        } => {
            use tern_control_plane::credentials;
            let store = credential_store(&data_dir)?;
            let now = tern_clock::unix_millis_now();
            let ttl_ms = ttl.map(|t| t.as_millis() as u64);
            // Replicas share their credentials through the store; one alone keeps a file.
            let (secret, record) = match &store {
                Some(store) => credentials::create_shared(store, role, now, ttl_ms),
                None => credentials::create(&data_dir, role, now, ttl_ms),
            }
            .context("failed to create the credential")?;
            eprintln!(
                "credential {} ({:?}){}{}; shown once:",
                record.id,
                record.role,
                record
                    .expires_ms
                    .map(|at| format!(", expires {}", tern_clock::rfc3339(at)))
                    .unwrap_or_default(),
                if store.is_some() {
                    ", accepted by every replica"
                } else {
                    ""
                }
            );
            println!("{secret}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Credential {
            command: CredentialCommand::List { data_dir, output },
        } => {
            use tern_control_plane::credentials;
            let views = match credential_store(&data_dir)? {
                Some(store) => credentials::list_shared(&store),
                None => credentials::list(&data_dir),
            }
            .context("failed to list the credentials")?;
            match output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&views)?),
                "table" => {
                    println!(
                        "{:<10} {:<6} {:<24} {:<24} {:<24}",
                        "ID", "ROLE", "CREATED", "EXPIRES", "LAST USED"
                    );
                    for v in &views {
                        println!(
                            "{:<10} {:<6} {:<24} {:<24} {:<24}",
                            v.record.id,
                            format!("{:?}", v.record.role).to_lowercase(),
                            when(Some(v.record.created_ms)),
                            when(v.record.expires_ms),
                            when(v.last_used_ms)
                        );
                    }
                }
                other => anyhow::bail!("-o {other}: expected table or json"),
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Credential {
            command: CredentialCommand::Revoke { data_dir, id },
        } => {
            use tern_control_plane::credentials;
            let record = match credential_store(&data_dir)? {
                Some(store) => credentials::revoke_shared(&store, &id),
                None => credentials::revoke(&data_dir, &id),
            }
            .context("failed to revoke the credential")?;
            eprintln!("credential {} ({:?}) revoked", record.id, record.role);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Serve {
            data_dir,
            listen_agents,
            listen_api,
        } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            runtime.block_on(async {
                let running = RunningControlPlane::start(ServeOptions {
                    data_dir,
                    listen_agents,
                    listen_api,
                })
                .await
                .context("failed to start the control plane")?;
                tokio::select! {
                    signal = shutdown_signal() => {
                        signal.context("failed to wait for a shutdown signal")?;
                        tracing::info!("shutdown requested");
                        running.shutdown().await;
                        Ok(std::process::ExitCode::SUCCESS)
                    }
                    reason = running.restart_requested() => {
                        tracing::error!(%reason, "storage keeps failing: stopping for the supervisor to restart the control plane");
                        tern_transport::storage::exit_for_restart_soon();
                        running.shutdown().await;
                        Ok(std::process::ExitCode::from(tern_transport::storage::EXIT_RESTART))
                    }
                }
            })
        }
    }
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
