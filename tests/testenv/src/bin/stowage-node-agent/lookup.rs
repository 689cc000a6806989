//! Reading the Secrets and ConfigMaps a pod refers to (env and volumes).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};

/// The key/value pairs of one Secret or ConfigMap (ConfigMap `data` and `binaryData` merged).
pub type KeyValues = BTreeMap<String, Vec<u8>>;

/// Where the data of a pod's Secrets and ConfigMaps comes from.
pub trait ObjectLookup {
    /// The namespace the names are resolved in (used in messages).
    fn namespace(&self) -> &str;
    /// The data of a Secret, `None` when it does not exist.
    async fn secret(&self, name: &str) -> Result<Option<KeyValues>, kube::Error>;
    /// The data of a ConfigMap, `None` when it does not exist.
    async fn config_map(&self, name: &str) -> Result<Option<KeyValues>, kube::Error>;
}

/// Reads Secrets and ConfigMaps from the API server, in one namespace.
pub struct ClusterLookup {
    namespace: String,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
}

impl ClusterLookup {
    /// A lookup in `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            secrets: Api::namespaced(client.clone(), namespace),
            config_maps: Api::namespaced(client, namespace),
        }
    }
}

impl ObjectLookup for ClusterLookup {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    async fn secret(&self, name: &str) -> Result<Option<KeyValues>, kube::Error> {
        Ok(self.secrets.get_opt(name).await?.map(|secret| {
            let mut data: KeyValues = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            // stringData is write-only on a real server, but honour it when present.
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            data
        }))
    }

    async fn config_map(&self, name: &str) -> Result<Option<KeyValues>, kube::Error> {
        Ok(self.config_maps.get_opt(name).await?.map(|cm| {
            let mut data: KeyValues = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in cm.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            data
        }))
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory lookup for unit tests.
    use super::{KeyValues, ObjectLookup};
    use std::collections::HashMap;

    /// Secrets and ConfigMaps held in memory.
    #[derive(Default)]
    pub struct MemoryLookup {
        pub secrets: HashMap<String, KeyValues>,
        pub config_maps: HashMap<String, KeyValues>,
    }

    impl ObjectLookup for MemoryLookup {
        fn namespace(&self) -> &str {
            "test"
        }
        async fn secret(&self, name: &str) -> Result<Option<KeyValues>, kube::Error> {
            Ok(self.secrets.get(name).cloned())
        }
        async fn config_map(&self, name: &str) -> Result<Option<KeyValues>, kube::Error> {
            Ok(self.config_maps.get(name).cloned())
        }
    }
}
