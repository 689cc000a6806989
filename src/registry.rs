//! The plugin registry: every plugin stowage ships, and the CRD's plugin enum built from
//! them. Adding a plugin is a crate under `plugins/<key>/` plus one entry here.

stowage_plugin_sdk::plugin_registry! {
    /// The plugin section of a BackupTarget: exactly one key, naming the plugin, whose value
    /// is that plugin's configuration.
    pub enum PluginConfig {
        /// Snapshot an etcd cluster through its maintenance API (what `etcdctl snapshot
        /// save` does), checked against etcd's own SHA-256; restore offline with `etcdutl`.
        "etcd" => Etcd(stowage_plugin_etcd::EtcdPlugin),
        /// Download a URL (an application's export endpoint, a file) with optional
        /// authentication; the response body is the artifact.
        "http" => Http(stowage_plugin_http::HttpPlugin),
        /// Export selected Redis databases key by key (SCAN, DUMP), restored into a running
        /// server with RESTORE.
        "redis" => Redis(stowage_plugin_redis::RedisPlugin),
        /// Dump a PostgreSQL database (pg_dump) or every database (pg_dumpall).
        "postgres" => Postgres(stowage_plugin_postgres::PostgresPlugin),
        /// Dump MariaDB or MySQL databases (one, several or all) with mariadb-dump or
        /// mysqldump in one consistent snapshot, with routines, triggers and events;
        /// restored with the client, a single database also under another name.
        "mysql" => Mysql(stowage_plugin_mysql::MysqlPlugin),
        /// Copy a SQLite database file on an application's claim while the application
        /// runs (SQLite's online backup API), and write it back the same way.
        "sqlite" => Sqlite(stowage_plugin_sqlite::SqlitePlugin),
        /// Archive a directory tree on an application's claim as a tar stream (include and
        /// exclude globs, links kept as links), restored into the same or another directory.
        "files" => Files(stowage_plugin_files::FilesPlugin),
        /// A plugin installed on its own as a cluster-scoped BackupPlugin (an image whose
        /// command speaks the stowage plugin protocol): its name, and its configuration,
        /// checked against the JSON schema the BackupPlugin declares.
        "external" => External(stowage_plugin_external::ExternalPlugin),
    }
}

#[cfg(test)]
mod tests {
    use super::PluginConfig;

    #[test]
    fn registry_keys_match_plugin_keys() {
        PluginConfig::check_keys().unwrap();
    }

    #[test]
    fn every_plugin_has_a_schema_and_info() {
        for key in PluginConfig::KEYS {
            assert!(PluginConfig::config_schema(key).is_some(), "{key}");
            let info = PluginConfig::info_for(key).unwrap();
            assert!(!info.description.is_empty(), "{key} has no description");
            assert!(!info.version.is_empty(), "{key} has no version");
        }
        assert!(PluginConfig::config_schema("nope").is_none());
    }
}
