//! One namespace per test.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;

use crate::{TestCluster, TestEnvError, eventually};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A namespace created for one test.
#[derive(Clone, Debug)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let prefix = prefix.trim_matches('-');
    let prefix = if prefix.is_empty() { "test" } else { prefix };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}-{:x}{n}", (nanos ^ std::process::id()) & 0xffffff)
}

/// Creates the namespace and waits for what pods need in it: the `default`
/// ServiceAccount and the `kube-root-ca.crt` ConfigMap (both made by controllers).
pub async fn create(cluster: &TestCluster, prefix: &str) -> Result<TestNamespace, TestEnvError> {
    let client = cluster.client().await?;
    let name = unique_name(prefix);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|source| TestEnvError::Api {
            what: format!("creating namespace {name}"),
            source,
        })?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &name);
    eventually(
        &format!("ServiceAccount {name}/default and ConfigMap kube-root-ca.crt"),
        Duration::from_secs(90),
        || async {
            let sa = accounts
                .get_opt("default")
                .await
                .map_err(|e| e.to_string())?;
            let ca = config_maps
                .get_opt("kube-root-ca.crt")
                .await
                .map_err(|e| e.to_string())?;
            match (sa, ca) {
                (Some(_), Some(_)) => Ok(()),
                (sa, ca) => Err(format!(
                    "serviceaccount present: {}, kube-root-ca.crt present: {}",
                    sa.is_some(),
                    ca.is_some()
                )),
            }
        },
    )
    .await?;
    Ok(TestNamespace { name })
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn names_are_valid_and_unique() {
        let a = unique_name("Backup_Job");
        let b = unique_name("Backup_Job");
        assert_ne!(a, b);
        assert!(a.starts_with("backup-job-"));
        assert!(a.len() <= 63);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
