//! `stowage-node-agent`: stands in for kube-scheduler and the kubelet on a local control
//! plane. It registers a Node, binds pending pods to it and runs each pod's containers as
//! local processes in private mount namespaces (see `deploy/local/node-agent.md`).

mod binder;
mod container;
mod context;
mod downward;
mod env;
mod expansion;
mod image_map;
mod layout;
mod lookup;
mod node;
mod pod_worker;
mod process;
mod reporter;
mod sandbox;
mod status;
mod supervisor;
mod volumes;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tracing_subscriber::EnvFilter;

use crate::context::Agent;
use crate::downward::{NodeResources, parse_quantity};
use crate::image_map::ImageMap;
use crate::layout::Layout;

/// Runs pods of a local control plane as host processes.
#[derive(Parser, Debug)]
#[command(name = "stowage-node-agent", version)]
struct Args {
    /// Kubeconfig of the control plane (defaults to the usual inference: $KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Name of the Node to register.
    #[arg(long, env = "STOWAGE_NODE_NAME", default_value = "stowage-local")]
    node_name: String,
    /// Directory for logs, volumes and per-pod files (created if missing).
    #[arg(long, env = "STOWAGE_NODE_AGENT_STATE")]
    state_dir: PathBuf,
    /// IMAGE=HOST_PATH:CONTAINER_PATH: show a host file at a path for containers of IMAGE (repeatable).
    #[arg(long = "image-map", value_name = "IMAGE=HOST:PATH")]
    image_map: Vec<String>,
    /// File with one IMAGE=HOST_PATH:CONTAINER_PATH per line (# comments allowed).
    #[arg(long)]
    image_map_file: Option<PathBuf>,
    /// Allocatable CPU of the node.
    #[arg(long, default_value = "8")]
    cpu: String,
    /// Allocatable memory of the node.
    #[arg(long, default_value = "16Gi")]
    memory: String,
    /// Seconds a pod may wait for its volumes (missing claim, Secret, ConfigMap) before it
    /// is failed (`FailedMount`). Container config errors (a missing env reference) are
    /// retried as long as the pod exists, as by the kubelet.
    #[arg(long, default_value_t = 60)]
    setup_timeout: u64,
    /// Host given to containers as KUBERNETES_SERVICE_HOST (default: the kubeconfig's server host).
    #[arg(long)]
    api_host: Option<String>,
}

fn main() -> anyhow::Result<()> {
    // The container side must stay single-threaded (unshare of the mount namespace):
    // dispatch it before anything starts threads.
    let mut raw = std::env::args_os();
    if raw.nth(1).is_some_and(|a| a == "sandbox-exec") {
        let spec = raw.next().map(PathBuf::from).unwrap_or_default();
        sandbox::run(&spec);
    }
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run(args))
}

async fn client(args: &Args) -> anyhow::Result<Config> {
    match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", path.display()))
        }
        None => Config::infer()
            .await
            .context("finding a kubeconfig (pass --kubeconfig)"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = client(&args).await?;
    let host = args
        .api_host
        .clone()
        .or_else(|| config.cluster_url.host().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".into());
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let port = config.cluster_url.port_u16().unwrap_or(443);
    let client = Client::try_from(config).context("building the API client")?;

    let mut map_entries = args.image_map.clone();
    if let Some(file) = &args.image_map_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading --image-map-file {}", file.display()))?;
        map_entries.extend(text.lines().map(str::to_string));
    }
    let image_map = ImageMap::parse(map_entries.iter().map(String::as_str))?;
    for entry in &map_entries {
        if let Some((_, paths)) = entry.split_once('=')
            && let Some((host_path, _)) = paths.rsplit_once(':')
            && !std::path::Path::new(host_path).exists()
        {
            tracing::warn!(entry = %entry, "image map host file does not exist (yet)");
        }
    }

    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating state dir {}", args.state_dir.display()))?;
    let state_dir = args
        .state_dir
        .canonicalize()
        .context("resolving the state dir")?;
    let layout = Layout::new(state_dir);
    std::fs::create_dir_all(layout.logs()).context("creating the logs dir")?;
    let cpu_cores = parse_quantity(&args.cpu).context("--cpu is not a quantity")?;
    let memory_bytes = parse_quantity(&args.memory).context("--memory is not a quantity")?;

    let killed = supervisor::kill_recorded_processes(&layout);
    if killed > 0 {
        tracing::warn!(
            killed,
            "stopped container processes left by an earlier agent process"
        );
    }
    let agent = Arc::new(Agent {
        client,
        node_name: args.node_name.clone(),
        layout: layout.clone(),
        node: NodeResources {
            cpu_cores,
            memory_bytes,
        },
        service_env: env::service_env(&host, port),
        image_map,
        setup_timeout: Duration::from_secs(args.setup_timeout),
    });
    let node = node::register(&agent)
        .await
        .context("registering the Node")?;
    tracing::info!(
        node = %agent.node_name,
        state_dir = %layout.root().display(),
        logs_dir = %layout.logs().display(),
        api = %format!("{host}:{port}"),
        "node agent ready; container logs go to {}",
        layout.logs().display()
    );

    let heartbeat = {
        let agent = agent.clone();
        tokio::spawn(async move { node::heartbeat(&agent, &node).await })
    };
    let binder = {
        let agent = agent.clone();
        tokio::spawn(async move { binder::run(&agent).await })
    };
    let pods = tokio::spawn(supervisor::run(agent.clone()));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: stopping container processes");
    heartbeat.abort();
    binder.abort();
    pods.abort();
    let killed = supervisor::kill_recorded_processes(&layout);
    tracing::info!(killed, "node agent stopped");
    Ok(())
}
