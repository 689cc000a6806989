//! The redis plugin as an external plugin: the same `Plugin` type that stowage compiles in
//! (`spec.redis`), served over the external plugin protocol by the SDK's `main`. Install
//! it with `backupplugin.yaml`; targets then use it under `spec.external`.

fn main() {
    stowage_plugin_sdk::protocol::main::<stowage_plugin_redis::RedisPlugin>()
}
