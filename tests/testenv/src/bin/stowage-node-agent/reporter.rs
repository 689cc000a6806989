//! Writing a pod's status through `pods/status`: the latest state wins, writes are
//! serialised per pod and retried, and the final state is flushed before the worker ends.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::status::{Phase, PodModel};

/// The model of one pod plus the channel to its reporter.
pub struct StatusHandle {
    model: Mutex<PodModel>,
    tx: watch::Sender<Option<PodStatus>>,
}

impl StatusHandle {
    /// Applies `change` to the model and publishes the resulting status.
    pub fn update<R>(&self, change: impl FnOnce(&mut PodModel) -> R) -> R {
        let mut model = self.model.lock().unwrap_or_else(PoisonError::into_inner);
        let result = change(&mut model);
        let status = model.status_at(Timestamp::now());
        self.tx.send_replace(Some(status));
        result
    }

    /// Reads the model.
    pub fn read<R>(&self, f: impl FnOnce(&PodModel) -> R) -> R {
        f(&self.model.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.read(PodModel::phase)
    }
}

/// Starts the reporter of pod `name`; it ends (after a last write) when every
/// `Arc<StatusHandle>` is dropped.
pub fn start(pods: Api<Pod>, name: String, model: PodModel) -> (Arc<StatusHandle>, JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(None::<PodStatus>);
    let handle = Arc::new(StatusHandle {
        model: Mutex::new(model),
        tx,
    });
    let task = tokio::spawn(async move {
        let mut last: Option<PodStatus> = None;
        loop {
            let closed = rx.changed().await.is_err();
            let current = rx.borrow_and_update().clone();
            if let Some(status) = current
                && last.as_ref() != Some(&status)
            {
                write(&pods, &name, &status).await;
                last = Some(status);
            }
            if closed {
                break;
            }
        }
    });
    (handle, task)
}

/// The patch body. A strategic merge keeps fields the patch omits, so a condition's
/// `reason`/`message` that no longer apply are cleared explicitly with `null`.
fn patch_body(status: &PodStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(conditions) = value.get_mut("conditions").and_then(|c| c.as_array_mut()) {
        for condition in conditions.iter_mut().filter_map(|c| c.as_object_mut()) {
            for key in ["reason", "message"] {
                condition.entry(key).or_insert(serde_json::Value::Null);
            }
        }
    }
    serde_json::json!({ "status": value })
}

async fn write(pods: &Api<Pod>, name: &str, status: &PodStatus) {
    let body = patch_body(status);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=8 {
        match pods
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(e) => {
                tracing::warn!(pod = name, attempt, error = %e, "writing pod status failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::error!(pod = name, "giving up writing pod status");
}
