//! The macro that turns a list of plugins into the CRD's plugin enum.

/// Declares the enum of plugin configs that a `BackupTarget` embeds, one newtype variant
/// per plugin, externally tagged by the plugin's key, with static dispatch to each plugin.
///
/// ```ignore
/// stowage_plugin_sdk::plugin_registry! {
///     /// The plugin section of a BackupTarget.
///     pub enum PluginConfig {
///         /// Download a URL.
///         "http" => Http(stowage_plugin_http::HttpPlugin),
///     }
/// }
/// ```
///
/// The variant's doc comment becomes the description of `spec.<key>`. The calling crate
/// must depend on `serde` and `schemars`. A unit test in the calling crate should check
/// that each literal key equals the plugin's [`Plugin::KEY`](crate::Plugin::KEY); the
/// generated `check_keys` function does that.
#[macro_export]
macro_rules! plugin_registry {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $key:literal => $variant:ident($plugin:ty)
            ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, ::serde::Serialize, ::serde::Deserialize, ::schemars::JsonSchema)]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $key)]
                $variant(<$plugin as $crate::Plugin>::Config),
            )+
        }

        impl $name {
            /// Keys of every registered plugin, in registry order.
            pub const KEYS: &'static [&'static str] = &[$($key),+];

            /// Static descriptions of every registered plugin, in registry order.
            pub fn infos() -> ::std::vec::Vec<$crate::PluginInfo> {
                ::std::vec![$(<$plugin as $crate::Plugin>::info()),+]
            }

            /// The description of the plugin with this key.
            pub fn info_for(key: &str) -> ::std::option::Option<$crate::PluginInfo> {
                Self::infos().into_iter().find(|info| info.key == key)
            }

            /// JSON schema of one plugin's config, by key.
            pub fn config_schema(key: &str) -> ::std::option::Option<::schemars::Schema> {
                match key {
                    $($key => ::std::option::Option::Some(
                        ::schemars::schema_for!(<$plugin as $crate::Plugin>::Config)
                    ),)+
                    _ => ::std::option::Option::None,
                }
            }

            /// Fails when a registry key differs from its plugin's `KEY`.
            pub fn check_keys() -> ::std::result::Result<(), ::std::string::String> {
                $(
                    if $key != <$plugin as $crate::Plugin>::KEY {
                        return ::std::result::Result::Err(::std::format!(
                            "registry key {:?} differs from the plugin's KEY {:?}",
                            $key, <$plugin as $crate::Plugin>::KEY
                        ));
                    }
                )+
                ::std::result::Result::Ok(())
            }

            /// The key of the selected plugin.
            pub fn key(&self) -> &'static str {
                match self { $(Self::$variant(_) => $key,)+ }
            }

            /// The description of the selected plugin.
            pub fn info(&self) -> $crate::PluginInfo {
                match self { $(Self::$variant(_) => <$plugin as $crate::Plugin>::info(),)+ }
            }

            /// The selected plugin's config as JSON (without the key).
            pub fn config_json(&self) -> ::std::result::Result<$crate::__private::serde_json::Value, $crate::__private::serde_json::Error> {
                match self { $(Self::$variant(c) => $crate::__private::serde_json::to_value(c),)+ }
            }

            /// Build from a plugin key and its config as JSON.
            pub fn from_key_and_config(
                key: &str,
                config: $crate::__private::serde_json::Value,
            ) -> ::std::result::Result<Self, $crate::PluginError> {
                let invalid = |e: $crate::__private::serde_json::Error| {
                    $crate::PluginError::InvalidConfig($crate::ValidationErrors::single(key, e.to_string()))
                };
                match key {
                    $($key => $crate::__private::serde_json::from_value(config).map(Self::$variant).map_err(invalid),)+
                    other => ::std::result::Result::Err($crate::PluginError::Unsupported(::std::format!(
                        "unknown plugin {other:?}; known plugins: {}", Self::KEYS.join(", ")
                    ))),
                }
            }

            /// File extension of an uncompressed artifact of the selected plugin and config.
            pub fn artifact_extension(&self) -> ::std::string::String {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::artifact_extension(c),)+ }
            }

            /// The application's claim the selected plugin and config work on, if any.
            pub fn app_claim(&self) -> ::std::option::Option<$crate::AppClaim> {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::app_claim(c),)+ }
            }

            /// The plugin's semantic validation; field paths are relative to its config.
            pub fn validate(&self) -> ::std::result::Result<(), $crate::ValidationErrors> {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::validate(c),)+ }
            }

            /// Run the selected plugin's probe.
            pub async fn probe(&self, ctx: &$crate::RunContext) -> ::std::result::Result<$crate::ProbeReport, $crate::PluginError> {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::probe(c, ctx).await,)+ }
            }

            /// Run the selected plugin's backup into `sink`.
            pub async fn backup(
                &self,
                ctx: &$crate::RunContext,
                sink: &mut $crate::ArtifactSink<'_>,
            ) -> ::std::result::Result<$crate::BackupReport, $crate::PluginError> {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::backup(c, ctx, sink).await,)+ }
            }

            /// Inspect the selected plugin's restore destination.
            pub async fn inspect_destination(
                &self,
                ctx: &$crate::RunContext,
                request: &$crate::RestoreRequest,
            ) -> ::std::result::Result<$crate::DestinationReport, $crate::PluginError> {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::inspect_destination(c, ctx, request).await,)+ }
            }

            /// Run the selected plugin's restore from `source`.
            pub async fn restore(
                &self,
                ctx: &$crate::RunContext,
                source: &mut $crate::ArtifactSource<'_>,
                request: &$crate::RestoreRequest,
            ) -> ::std::result::Result<$crate::RestoreReport, $crate::PluginError> {
                match self { $(Self::$variant(c) => <$plugin as $crate::Plugin>::restore(c, ctx, source, request).await,)+ }
            }
        }
    };
}
