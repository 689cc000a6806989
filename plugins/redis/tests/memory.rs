//! The conformance kit's memory check, alone in its test binary (the peak it reads is the
//! whole process's): exporting ~80 MiB of keys from a real redis-server keeps the
//! plugin's memory flat.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stowage_plugin_redis::{RedisConfig, RedisPlugin};
use stowage_plugin_sdk::RunContext;
use stowage_plugin_sdk::conformance::check_flat_memory;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_export_streams_with_flat_memory() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (tests/install-deps.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 80,000 keys of 1 KiB of random bytes (DUMP compresses repetitive values): an
    // export of about 80 MiB.
    let script = "local t = {} for i = 1, 1024 do t[i] = string.char(math.random(0, 255)) end \
                  local base = table.concat(t) \
                  for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'big:' .. i, base .. i) end";
    let populated = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "eval", script, "0", "80000"])
        .output()
        .unwrap();
    assert!(populated.status.success(), "{populated:?}");

    let config: RedisConfig =
        serde_json::from_value(serde_json::json!({"host": "127.0.0.1", "port": port})).unwrap();
    let used = check_flat_memory::<RedisPlugin>(
        &config,
        &RunContext::new("cache", "big"),
        64 << 20,
        24 << 20,
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    let used = used.unwrap_or_else(|p| panic!("{}", p.join("\n")));
    println!(
        "exported {} MiB with the peak growing by {} MiB",
        used.artifact_bytes >> 20,
        used.peak_growth_bytes >> 20
    );
}
