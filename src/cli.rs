//! The command-line front end. It parses arguments, sets up logging and the runtime, and
//! calls into the library; it holds no logic the server lacks. Only this module picks exit
//! codes: 0 success, 1 a command that ran and failed (e.g. a file that was not stored), 2 bad
//! usage or configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tracing::{error, info};

use crate::config::{Config, Overrides};
use crate::net::scp::{self, ScpContext};
use crate::net::scu::{self, AeAddress, OutgoingFile, ScuOptions};
use crate::store::Store;

/// A DICOM node that turns received CT/MR series into surface meshes (Encapsulated STL).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node: Storage SCP (C-ECHO, C-STORE) on `node.listen`.
    Serve {
        /// TOML configuration file (default: the embedded defaults, see conf/m3dnode.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overrides `node.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Storage root, overrides `node.storage`.
        #[arg(long)]
        storage: Option<PathBuf>,
        /// Our AE title, overrides `node.ae_title`.
        #[arg(long)]
        ae_title: Option<String>,
    },
    /// Verify a remote AE with C-ECHO.
    Echo {
        /// The remote AE, `AE@host:port`.
        to: AeAddress,
        /// Our calling AE title.
        #[arg(long, default_value = "M3DNODE")]
        calling_ae: String,
        /// Seconds to wait for the connection and each answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Send DICOM files (directories are walked recursively) with C-STORE.
    Send {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The remote AE, `AE@host:port`.
        #[arg(long)]
        to: AeAddress,
        /// Our calling AE title.
        #[arg(long, default_value = "M3DNODE")]
        calling_ae: String,
        /// Seconds to wait for the connection and each answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

/// Runs the program; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("m3dnode: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("m3dnode: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            listen,
            storage,
            ae_title,
        } => {
            let overrides = Overrides {
                listen,
                storage,
                ae_title,
            };
            let cfg = Config::load(config.as_deref(), None, &overrides)?;
            serve(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Echo {
            to,
            calling_ae,
            timeout,
        } => {
            let opts = ScuOptions {
                calling_ae,
                timeout: Duration::from_secs(timeout),
                ..Default::default()
            };
            scu::echo(&to, &opts).await?;
            println!("C-ECHO {to}: success");
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            paths,
            to,
            calling_ae,
            timeout,
        } => send(paths, to, calling_ae, timeout).await,
    }
}

async fn serve(cfg: Config) -> Result<()> {
    let cfg = Arc::new(cfg);
    let node = &cfg.node;
    let store = tokio::task::spawn_blocking({
        let node = node.clone();
        move || Store::open(&node)
    })
    .await?
    .with_context(|| {
        format!(
            "opening storage `{}` (node.storage)",
            node.storage.display()
        )
    })?;
    let store = Arc::new(store);
    let ctx = ScpContext::new(cfg.clone(), store.clone()).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(node.listen)
        .await
        .with_context(|| format!("cannot listen on {} (node.listen)", node.listen))?;
    let local = listener.local_addr()?;
    info!(
        ae_title = %node.ae_title,
        listen = %local,
        storage = %node.storage.display(),
        sync = node.sync,
        "m3dnode listening"
    );
    // One machine-readable line on stdout for scripts and tests that bind port 0.
    println!("m3dnode listening on {local}");
    scp::serve(listener, Arc::new(ctx), shutdown_signal()).await?;
    store.mark_clean_shutdown()?;
    info!("m3dnode stopped");
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = int.recv() => info!("SIGINT received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn send(
    paths: Vec<PathBuf>,
    to: AeAddress,
    calling_ae: String,
    timeout: u64,
) -> Result<ExitCode> {
    let mut files = Vec::new();
    let mut failed = 0usize;
    for path in collect_files(&paths)? {
        match OutgoingFile::open(&path) {
            Ok(f) => files.push(f),
            Err(e) => {
                println!("FAILED {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    let opts = ScuOptions {
        calling_ae,
        timeout: Duration::from_secs(timeout),
        ..Default::default()
    };
    let mut sent = 0usize;
    if !files.is_empty() {
        for outcome in scu::send_files(&files, &to, &opts).await? {
            match (&outcome.result, outcome.is_success()) {
                (Ok(code), true) => {
                    sent += 1;
                    println!("OK {} (status {code:#06X})", outcome.path.display());
                }
                (Ok(code), false) => {
                    failed += 1;
                    println!(
                        "FAILED {} (status {code:#06X}{})",
                        outcome.path.display(),
                        outcome
                            .comment
                            .as_deref()
                            .map(|c| format!(": {c}"))
                            .unwrap_or_default()
                    );
                }
                (Err(e), _) => {
                    failed += 1;
                    println!("FAILED {}: {e}", outcome.path.display());
                }
            }
        }
    }
    println!("{sent} sent, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Expands directories recursively, in a stable order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            while let Some(dir) = stack.pop() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("reading {}", dir.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                entries.sort();
                for e in entries {
                    if e.is_dir() {
                        stack.push(e);
                    } else {
                        out.push(e);
                    }
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            anyhow::bail!("{} does not exist", p.display());
        }
    }
    Ok(out)
}
