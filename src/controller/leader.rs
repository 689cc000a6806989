//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager): several
//! replicas may run; one reconciles, the others serve `/healthz` and wait.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why leader election could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start leader election on Lease {namespace}/{name}: {source}")]
pub struct ElectionError {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// The underlying error.
    #[source]
    pub source: kube_lease_manager::LeaseManagerError,
}

/// A running election: a background task keeps trying to hold (and renew) the Lease and
/// publishes whether this replica holds it.
pub struct Elector {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Elector {
    /// Start competing for the Lease `namespace/name` (created when missing) as `identity`.
    /// The holder renews it before `duration_seconds` pass; others take it over after.
    pub async fn start(
        client: Client,
        name: &str,
        namespace: &str,
        identity: &str,
        duration_seconds: u64,
    ) -> Result<Self, ElectionError> {
        let grace = (duration_seconds / 3).max(2);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(duration_seconds)
            .with_grace(grace)
            .build()
            .await
            .map_err(|source| ElectionError {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            })?;
        let (leading, task) = manager.watch().await;
        tracing::info!(
            lease = name,
            namespace,
            identity,
            "waiting to become the leader"
        );
        Ok(Elector { leading, task })
    }

    /// Resolves `true` once this replica holds the Lease, `false` if the election stopped.
    pub fn wait_until_leader(&self) -> impl Future<Output = bool> + Send + 'static {
        let mut leading = self.leading.clone();
        async move { leading.wait_for(|l| *l).await.is_ok() }
    }

    /// Resolves when this replica stops holding the Lease (or the election stops).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut leading = self.leading.clone();
        async move {
            let _ = leading.wait_for(|l| !*l).await;
        }
    }

    /// Stop competing and release the Lease if held, so a standby takes over at once.
    pub async fn release(self) {
        let Elector { leading, task } = self;
        drop(leading);
        match task.await {
            Ok(Ok(_)) => tracing::info!("leader Lease released"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election ended with an error"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
        }
    }
}
