//! A container's environment and command line, resolved the way the kubelet does
//! (`kubelet_pods.go: makeEnvironmentVariables`).
//!
//! Order: `envFrom` sources in order (not expanded), then `env` entries in order, each
//! `value` expanded with `$(VAR)` against what is defined so far plus the service
//! variables; the service variables are added last where not already defined.
//! Command and args are expanded against the final environment.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use crate::downward::{self, DownwardError, NodeResources};
use crate::expansion::expand;
use crate::lookup::ObjectLookup;

/// Why a container's environment could not be built; the kubelet reports these as
/// `CreateContainerConfigError`.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A referenced Secret does not exist and the reference is not optional.
    #[error("secret {name:?} not found")]
    SecretNotFound {
        /// Name of the Secret.
        name: String,
    },
    /// A referenced key is missing from a Secret.
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKeyNotFound {
        /// Namespace of the Secret.
        namespace: String,
        /// Name of the Secret.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A referenced ConfigMap does not exist and the reference is not optional.
    #[error("configmap {name:?} not found")]
    ConfigMapNotFound {
        /// Name of the ConfigMap.
        name: String,
    },
    /// A referenced key is missing from a ConfigMap.
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKeyNotFound {
        /// Namespace of the ConfigMap.
        namespace: String,
        /// Name of the ConfigMap.
        name: String,
        /// The missing key.
        key: String,
    },
    /// A `valueFrom` this agent does not implement.
    #[error(
        "env {name}: unsupported valueFrom (only secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef)"
    )]
    UnsupportedSource {
        /// The variable.
        name: String,
    },
    /// A downward API reference failed.
    #[error("env {name}: {source}")]
    Downward {
        /// The variable.
        name: String,
        /// What failed.
        source: DownwardError,
    },
    /// Reading a Secret or ConfigMap failed.
    #[error("reading {what} {name:?}: {source}")]
    Api {
        /// "secret" or "configmap".
        what: &'static str,
        /// Name of the object.
        name: String,
        /// The API error.
        source: kube::Error,
    },
}

/// What a container sees besides its spec.
pub struct EnvInputs<'a> {
    /// The pod.
    pub pod: &'a Pod,
    /// The container being started.
    pub container: &'a Container,
    /// `KUBERNETES_SERVICE_HOST` and friends.
    pub service_env: &'a BTreeMap<String, String>,
    /// Node capacity for `resourceFieldRef` without limits.
    pub node: &'a NodeResources,
}

/// The variables that point in-cluster clients at the API server.
pub fn service_env(host: &str, port: u16) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), format!("tcp://{host}:{port}")),
        (
            format!("KUBERNETES_PORT_{port}_TCP"),
            format!("tcp://{host}:{port}"),
        ),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.into()),
    ])
}

/// The container's environment.
pub async fn container_env(
    inputs: &EnvInputs<'_>,
    lookup: &impl ObjectLookup,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let namespace = lookup.namespace().to_string();

    for source in inputs.container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &source.config_map_ref {
            let found = lookup
                .config_map(&cm.name)
                .await
                .map_err(|e| EnvError::Api {
                    what: "configmap",
                    name: cm.name.clone(),
                    source: e,
                })?;
            match found {
                Some(data) => data,
                None if cm.optional == Some(true) => continue,
                None => {
                    return Err(EnvError::ConfigMapNotFound {
                        name: cm.name.clone(),
                    });
                }
            }
        } else if let Some(secret) = &source.secret_ref {
            let found = lookup
                .secret(&secret.name)
                .await
                .map_err(|e| EnvError::Api {
                    what: "secret",
                    name: secret.name.clone(),
                    source: e,
                })?;
            match found {
                Some(data) => data,
                None if secret.optional == Some(true) => continue,
                None => {
                    return Err(EnvError::SecretNotFound {
                        name: secret.name.clone(),
                    });
                }
            }
        } else {
            continue;
        };
        for (key, value) in data {
            let name = format!("{prefix}{key}");
            // The API server accepts any printable name without '='; the kubelet
            // skips the others (and records an event).
            if name.is_empty() || name.contains('=') || name.chars().any(char::is_control) {
                tracing::warn!(variable = %name, "skipping envFrom key that is not a valid variable name");
                continue;
            }
            env.insert(name, String::from_utf8_lossy(&value).into_owned());
        }
    }

    for var in inputs.container.env.iter().flatten() {
        if let Some(value) = resolve_var(var, inputs, lookup, &namespace, &env).await? {
            env.insert(var.name.clone(), value);
        }
    }

    for (key, value) in inputs.service_env {
        env.entry(key.clone()).or_insert_with(|| value.clone());
    }
    Ok(env)
}

/// One `env` entry; `None` when an optional reference is absent (the variable is unset).
async fn resolve_var(
    var: &EnvVar,
    inputs: &EnvInputs<'_>,
    lookup: &impl ObjectLookup,
    namespace: &str,
    defined: &BTreeMap<String, String>,
) -> Result<Option<String>, EnvError> {
    let Some(from) = &var.value_from else {
        let value = var.value.as_deref().unwrap_or_default();
        let expanded = expand(value, |name| {
            defined
                .get(name)
                .or_else(|| inputs.service_env.get(name))
                .cloned()
        });
        return Ok(Some(expanded));
    };
    if let Some(sel) = &from.secret_key_ref {
        let optional = sel.optional == Some(true);
        let data = lookup.secret(&sel.name).await.map_err(|e| EnvError::Api {
            what: "secret",
            name: sel.name.clone(),
            source: e,
        })?;
        return match data {
            None if optional => Ok(None),
            None => Err(EnvError::SecretNotFound {
                name: sel.name.clone(),
            }),
            Some(data) => match data.get(&sel.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(EnvError::SecretKeyNotFound {
                    namespace: namespace.to_string(),
                    name: sel.name.clone(),
                    key: sel.key.clone(),
                }),
            },
        };
    }
    if let Some(sel) = &from.config_map_key_ref {
        let optional = sel.optional == Some(true);
        let data = lookup
            .config_map(&sel.name)
            .await
            .map_err(|e| EnvError::Api {
                what: "configmap",
                name: sel.name.clone(),
                source: e,
            })?;
        return match data {
            None if optional => Ok(None),
            None => Err(EnvError::ConfigMapNotFound {
                name: sel.name.clone(),
            }),
            Some(data) => match data.get(&sel.key) {
                Some(v) => Ok(Some(String::from_utf8_lossy(v).into_owned())),
                None if optional => Ok(None),
                None => Err(EnvError::ConfigMapKeyNotFound {
                    namespace: namespace.to_string(),
                    name: sel.name.clone(),
                    key: sel.key.clone(),
                }),
            },
        };
    }
    if let Some(sel) = &from.field_ref {
        return downward::pod_field(inputs.pod, &sel.field_path)
            .map(Some)
            .map_err(|source| EnvError::Downward {
                name: var.name.clone(),
                source,
            });
    }
    if let Some(sel) = &from.resource_field_ref {
        return downward::container_resource(
            inputs.pod,
            Some(&inputs.container.name),
            sel,
            inputs.node,
        )
        .map(Some)
        .map_err(|source| EnvError::Downward {
            name: var.name.clone(),
            source,
        });
    }
    Err(EnvError::UnsupportedSource {
        name: var.name.clone(),
    })
}

/// The argv of a container: `command` + `args` with `$(VAR)` expanded against `env`.
/// Without `command`, `entrypoint` (from the image map) stands in for the image's.
pub fn command_line(
    container: &Container,
    env: &BTreeMap<String, String>,
    entrypoint: Option<&str>,
) -> Vec<String> {
    let lookup = |name: &str| env.get(name).cloned();
    let mut argv: Vec<String> = match &container.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|c| expand(c, lookup)).collect(),
        _ => entrypoint.map(|e| vec![e.to_string()]).unwrap_or_default(),
    };
    argv.extend(container.args.iter().flatten().map(|a| expand(a, lookup)));
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lookup::fake::MemoryLookup;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVarSource, ObjectFieldSelector,
        PodSpec, SecretEnvSource, SecretKeySelector,
    };

    fn plain(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    fn from(name: &str, source: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(source),
        }
    }

    fn secret_ref(name: &str, key: &str, optional: Option<bool>) -> EnvVarSource {
        EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: name.into(),
                key: key.into(),
                optional,
            }),
            ..Default::default()
        }
    }

    fn lookup() -> MemoryLookup {
        let mut l = MemoryLookup::default();
        l.secrets.insert(
            "db".into(),
            [("password".to_string(), b"s3cret".to_vec())]
                .into_iter()
                .collect(),
        );
        l.config_maps.insert(
            "cfg".into(),
            [
                ("HOST".to_string(), b"db.local".to_vec()),
                ("bad=key".to_string(), b"x".to_vec()),
            ]
            .into_iter()
            .collect(),
        );
        l
    }

    async fn resolve(container: Container) -> Result<BTreeMap<String, String>, EnvError> {
        let mut pod = Pod::default();
        pod.metadata.name = Some("pod-1".into());
        pod.spec = Some(PodSpec {
            containers: vec![container.clone()],
            ..Default::default()
        });
        let service = service_env("127.0.0.1", 6443);
        let node = NodeResources {
            cpu_cores: 2.0,
            memory_bytes: 1e9,
        };
        let inputs = EnvInputs {
            pod: &pod,
            container: &container,
            service_env: &service,
            node: &node,
        };
        container_env(&inputs, &lookup()).await
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn resolves_references_expansion_and_precedence() {
        let container = Container {
            name: "c".into(),
            env_from: Some(vec![
                EnvFromSource {
                    config_map_ref: Some(ConfigMapEnvSource {
                        name: "cfg".into(),
                        optional: None,
                    }),
                    prefix: Some("CFG_".into()),
                    secret_ref: None,
                },
                EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "absent".into(),
                        optional: Some(true),
                    }),
                    ..Default::default()
                },
            ]),
            env: Some(vec![
                plain("A", "a"),
                plain("B", "$(A)-$(CFG_HOST)-$(LATER)-$$(A)"),
                from("PW", secret_ref("db", "password", None)),
                from("OPT", secret_ref("db", "nokey", Some(true))),
                from(
                    "NAME",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: None,
                            field_path: "metadata.name".into(),
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "HOST2",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "HOST".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                plain(
                    "API",
                    "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)",
                ),
                plain("LATER", "l"),
                plain("KUBERNETES_SERVICE_PORT", "1"),
            ]),
            ..Default::default()
        };
        let env = run(resolve(container)).unwrap();
        assert_eq!(env["A"], "a");
        assert_eq!(env["B"], "a-db.local-$(LATER)-$(A)");
        assert_eq!(env["PW"], "s3cret");
        assert!(!env.contains_key("OPT"));
        assert_eq!(env["NAME"], "pod-1");
        assert_eq!(env["HOST2"], "db.local");
        assert_eq!(env["CFG_HOST"], "db.local");
        assert!(!env.contains_key("CFG_bad=key"));
        assert_eq!(env["API"], "127.0.0.1:6443");
        // A pod's own definition wins over the service variables.
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "1");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
    }

    #[test]
    fn missing_references_fail_unless_optional() {
        let missing_secret = Container {
            name: "c".into(),
            env: Some(vec![from("X", secret_ref("nope", "k", None))]),
            ..Default::default()
        };
        let err = run(resolve(missing_secret)).unwrap_err();
        assert_eq!(err.to_string(), "secret \"nope\" not found");
        let missing_key = Container {
            name: "c".into(),
            env: Some(vec![from("X", secret_ref("db", "user", None))]),
            ..Default::default()
        };
        let err = run(resolve(missing_key)).unwrap_err();
        assert_eq!(err.to_string(), "couldn't find key user in Secret test/db");
        let optional = Container {
            name: "c".into(),
            env: Some(vec![from("X", secret_ref("nope", "k", Some(true)))]),
            ..Default::default()
        };
        assert!(!run(resolve(optional)).unwrap().contains_key("X"));
    }

    #[test]
    fn command_and_args_are_expanded() {
        let env = BTreeMap::from([("WHO".to_string(), "world".to_string())]);
        let container = Container {
            name: "c".into(),
            command: Some(vec!["echo".into(), "$(WHO)".into()]),
            args: Some(vec!["$(NOPE)".into(), "$$(WHO)".into()]),
            ..Default::default()
        };
        assert_eq!(
            command_line(&container, &env, None),
            ["echo", "world", "$(NOPE)", "$(WHO)"]
        );
        let no_command = Container {
            name: "c".into(),
            args: Some(vec!["run".into()]),
            ..Default::default()
        };
        assert_eq!(
            command_line(&no_command, &env, Some("/usr/local/bin/stowage")),
            ["/usr/local/bin/stowage", "run"]
        );
    }
}
