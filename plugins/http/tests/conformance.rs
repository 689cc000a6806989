//! The conformance kit's checks that need no service.

use stowage_plugin_http::HttpPlugin;
use stowage_plugin_sdk::conformance::check_config_schema;

#[test]
fn the_config_schema_documents_every_field_and_takes_credentials_only_from_secrets() {
    check_config_schema::<HttpPlugin>().unwrap_or_else(|p| panic!("{}", p.join("\n")));
}
