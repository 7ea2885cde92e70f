//! The deployment files under `deploy/`, built, started and checked on
//! this machine: the image of `deploy/Dockerfile` (built with podman on
//! locally made base images, run read-only with every capability dropped),
//! `deploy/compose.yaml` (podman-compose, a Tansu broker standing in for
//! Kafka), the systemd unit (`systemd-analyze verify` and `security`) and
//! the Kubernetes manifests (yamllint, kubernetes-validate, and
//! `omnid check-config` in the image with their ConfigMaps and Secrets
//! mounted where the kubelet would).
//!
//! `./scripts/test` installs the tools and makes the base images
//! (`ensure_deploy_tools`, `ensure_deploy_python_tools`,
//! `ensure_deploy_images` in `scripts/lib.sh`) and exports where they
//! are; a test missing one of them fails saying which. The figures the
//! deployment docs quote (image size, memory, stop time, the unit's
//! exposure score) are printed by these tests (`--nocapture`).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use omni_testkit::daemon::{message, omnid_binary, signed};

/// The repository root: `deploy/`, `config/` and the build context.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// A variable `./scripts/test` exports, or a failure naming what sets it.
fn required_env(name: &str, set_by: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run ./scripts/test, or first \
             `. scripts/lib.sh && {set_by}` in this shell"
        )
    })
}

/// podman, with the storage and configuration `ensure_deploy_images` set
/// up (its own storage under ~/.cache/omnid-deploy, runc, no default
/// ulimits).
fn podman() -> Command {
    for name in ["CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF"] {
        required_env(name, "ensure_deploy_tools && ensure_deploy_images");
    }
    let mut command = Command::new("podman");
    command.stdin(Stdio::null());
    command
}

/// Runs `command`, panicking with its output unless it succeeds.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} ({e}); is it installed?"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A name no other run on this machine uses at the same time.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("omnid-test-{what}-{}-{nanos}", std::process::id())
}

/// How long a stop may take: in-flight requests are answered within
/// `http.request_timeout_secs`, then each draining step (the log flush
/// last) within `shutdown_timeout_secs`, of the image's config.
fn drain_bound() -> Duration {
    let settings = omnid::Settings::load(&repo().join("config/omnid.toml")).unwrap();
    Duration::from_secs(settings.http.request_timeout_secs + settings.shutdown_timeout_secs)
}

/// The image of `deploy/Dockerfile`, built once per test process on the
/// local base images, as `localhost/omnid:test`.
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let tag = "localhost/omnid:test".to_owned();
        let rust = required_env("OMNID_TEST_RUST_IMAGE", "ensure_deploy_images");
        let debian = required_env("OMNID_TEST_DEBIAN_IMAGE", "ensure_deploy_images");
        let tmpdir = required_env("OMNID_TEST_BUILD_TMPDIR", "ensure_deploy_images");
        let started = Instant::now();
        run(podman()
            .current_dir(repo())
            // Docker's image format: OCI images have no HEALTHCHECK.
            .args(["build", "--format", "docker", "-f", "deploy/Dockerfile"])
            .args(["--build-arg", &format!("RUST_IMAGE={rust}")])
            .args(["--build-arg", &format!("RUNTIME_IMAGE={debian}")])
            .args([
                "--build-arg",
                &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
            ])
            .args(["--build-arg", &format!("REVISION={}", revision())])
            // Podman 4.3's layer cache reuses the Dockerfile's `LABEL`
            // step when only a build argument it names changed (a commit
            // that touches no file the image copies), leaving the previous
            // revision in the label; a label given here is applied after
            // the cache. Docker re-runs the step, so the Dockerfile's
            // `ARG REVISION` stays what users build with.
            .args([
                "--label",
                &format!("org.opencontainers.image.revision={}", revision()),
            ])
            .args(["-t", &tag, "."])
            // Where podman keeps the cache mounts (registry, target).
            .env("TMPDIR", tmpdir));
        let size = stdout(&run(podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            &tag,
        ])));
        let size: u64 = size.parse().expect("an image size in bytes");
        let base = stdout(&run(podman().args([
            "image",
            "inspect",
            "--format",
            "{{.Size}}",
            &debian,
        ])));
        let base: u64 = base.parse().expect("an image size in bytes");
        eprintln!(
            "image {tag}: built in {:.0?}, {:.1} MB ({:.1} MB over its Debian base of {:.1} MB)",
            started.elapsed(),
            size as f64 / 1e6,
            (size - base) as f64 / 1e6,
            base as f64 / 1e6
        );
        tag
    })
}

/// The checkout's commit, for the image's revision label (read once: the
/// label and the test's expectation are the same value).
fn revision() -> &'static str {
    static REVISION: OnceLock<String> = OnceLock::new();
    REVISION.get_or_init(|| {
        Command::new("git")
            .current_dir(repo())
            .args(["rev-parse", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| stdout(&o))
            .unwrap_or_else(|| "unknown".into())
    })
}

/// Containers, volumes and a compose project a test made, removed when it
/// ends (however it ends).
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    volumes: Vec<String>,
    /// A compose project: its directory-relative command line and env.
    compose: Option<(String, Vec<(String, String)>)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((project, env)) = &self.compose {
            let _ = Command::new("podman-compose")
                .current_dir(repo())
                .args(["-p", project, "-f", "deploy/compose.yaml", "down", "-v"])
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .output();
            // podman-compose 1.0 leaves the project's network behind.
            let _ = podman()
                .args(["network", "rm", "-f", &format!("{project}_default")])
                .output();
        }
        for container in &self.containers {
            let _ = podman().args(["rm", "-f", "-t", "0", container]).output();
        }
        for volume in &self.volumes {
            let _ = podman().args(["volume", "rm", "-f", volume]).output();
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Waits until `GET url` answers 200; panics with the container's log
/// otherwise.
async fn wait_ready(url: &str, container: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let client = client();
    loop {
        if let Ok(response) = client.get(url).send().await
            && response.status() == 200
        {
            return started.elapsed();
        }
        if started.elapsed() > within {
            let logs = podman().args(["logs", "--tail", "60", container]).output();
            panic!(
                "{url} not ready within {within:?}; {container} logs:\n{}",
                logs.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()
                    + &String::from_utf8_lossy(&o.stdout))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `omnid tail --topic <topic>` inside `container`: the records as JSON.
fn tail_in(container: &str, topic: &str) -> Vec<serde_json::Value> {
    let output = run(podman().args(["exec", container, "omnid", "tail", "--topic", topic]));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("tail prints JSON lines"))
        .collect()
}

/// Posts a signed API-channel message; returns its event id.
async fn post(client: &reqwest::Client, url: &str, external_id: &str, secret: &str) -> String {
    post_body(
        client,
        url,
        message(external_id, "سلام from a container"),
        secret,
    )
    .await
}

async fn post_body(client: &reqwest::Client, url: &str, body: String, secret: &str) -> String {
    let response = signed(client, url, body, secret)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let body: serde_json::Value = response.json().await.unwrap();
    body["event_id"].as_str().unwrap().to_owned()
}

/// A process's resident memory and its peak, in bytes, from the host's
/// /proc (the container's first process is omnid itself).
fn memory(container: &str) -> (u64, u64) {
    let pid = stdout(&run(podman().args([
        "inspect",
        "--format",
        "{{.State.Pid}}",
        container,
    ])));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1024.0 / 1024.0)
}

/// The state of a container: (running, exit code).
fn state(container: &str) -> (bool, i64) {
    let text = stdout(&run(podman().args([
        "inspect",
        "--format",
        "{{.State.Running}} {{.State.ExitCode}}",
        container,
    ])));
    let (running, code) = text.split_once(' ').expect("two fields");
    (running == "true", code.parse().expect("an exit code"))
}

/// Waits for `container` to exit; its exit code and how long it took.
fn wait_exit(container: &str, within: Duration) -> (i64, Duration) {
    let started = Instant::now();
    loop {
        let (running, code) = state(container);
        if !running {
            return (code, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "{container} still running {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `podman run -d` of the image as the Kubernetes manifests run it:
/// read-only root, no capabilities, no privilege escalation, the data
/// volume, channel files and the channel's secret mounted. (A bind mount:
/// podman 4.3 cannot mount its own `--secret`s into a read-only root.)
fn run_omnid(name: &str, port: u16, volume: &str, channels: &Path, secret: &Path) {
    run(podman()
        .args(["run", "-d", "--name", name])
        .args(["--read-only", "--cap-drop=all"])
        .args(["--security-opt", "no-new-privileges"])
        .args(["-p", &format!("127.0.0.1:{port}:8080")])
        .args(["-v", &format!("{volume}:/var/lib/omnid")])
        .args([
            "-v",
            &format!("{}:/etc/omnid/channels:ro", channels.display()),
        ])
        .args([
            "-v",
            &format!("{}:/run/secrets/shop-api:ro", secret.display()),
        ])
        .arg(image()));
}

/// The image: serves signed webhooks on its published port as an
/// unprivileged user on a read-only root, answers its own health check
/// without curl, keeps its data on the volume across a new container, and
/// stops on SIGTERM with exit code 0 within the drain bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_serves_keeps_its_data_and_stops_cleanly() {
    const SECRET: &str = "container-secret";
    let image = image();
    let test_started = Instant::now();
    let mut cleanup = Cleanup::default();
    let scratch = tempfile::tempdir().unwrap();
    let channels = scratch.path().join("channels");
    std::fs::create_dir(&channels).unwrap();
    std::fs::write(
        channels.join("shop-api.toml"),
        "id = \"shop-api\"\nkind = \"api\"\nsecret = { file = \"/run/secrets/shop-api\" }\n\
         default_region = \"IR\"\n",
    )
    .unwrap();
    // Readable by the image's user (10001), as a ConfigMap volume is.
    set_mode(&channels, 0o755);
    set_mode(&channels.join("shop-api.toml"), 0o644);
    // Only the image's user may read it.
    let secret = scratch.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::os::unix::fs::chown(&secret, Some(10001), Some(10001)).unwrap();
    set_mode(&secret, 0o400);
    let volume = unique("data");
    run(podman().args(["volume", "create", &volume]));
    cleanup.volumes.push(volume.clone());

    // Labels and user.
    let inspected: serde_json::Value =
        serde_json::from_slice(&run(podman().args(["image", "inspect", image])).stdout).unwrap();
    let config = &inspected[0]["Config"];
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.revision"], revision());
    assert!(
        labels["org.opencontainers.image.source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{labels}"
    );
    assert_eq!(config["User"], "10001:10001");
    assert_eq!(
        inspected[0]["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/omnid", "health"]),
        "the image keeps its HEALTHCHECK, the binary's own, no shell: {inspected}"
    );

    let first = unique("omnid");
    let port = free_port();
    let started = Instant::now();
    run_omnid(&first, port, &volume, &channels, &secret);
    cleanup.containers.push(first.clone());
    let base = format!("http://127.0.0.1:{port}");
    let ready_after = wait_ready(&format!("{base}/readyz"), &first, Duration::from_secs(90)).await;
    eprintln!(
        "container: ready {ready_after:.1?} after `podman run` ({:.1?} in all)",
        started.elapsed()
    );

    // The image's HEALTHCHECK (`omnid health`: no shell, no curl) passes,
    // and podman records the container healthy.
    let checked = run(podman().args(["healthcheck", "run", &first]));
    eprintln!("container: podman healthcheck run: {:?}", stdout(&checked));
    assert_eq!(health_status(&first), "healthy");
    // The same command asks /readyz, and fails saying why when nothing
    // listens where it asks.
    let ready = run(podman().args(["exec", &first, "omnid", "health", "--ready"]));
    assert!(
        stdout(&ready).starts_with("ok: GET http://127.0.0.1:8080/readyz: 200"),
        "{}",
        stdout(&ready)
    );
    let closed = podman()
        .args([
            "exec",
            &first,
            "omnid",
            "health",
            "--url",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    let why = String::from_utf8_lossy(&closed.stderr);
    assert_eq!(closed.status.code(), Some(1), "{why}");
    assert!(
        why.trim()
            .starts_with("error: GET http://127.0.0.1:9/healthz: ")
            && why.contains("refused"),
        "{why}"
    );
    assert_eq!(
        stdout(&run(podman().args(["exec", &first, "id", "-u"]))),
        "10001"
    );
    let (idle, _) = memory(&first);

    // A signed message, then a small load.
    let client = client();
    let url = format!("{base}/webhooks/shop-api");
    let first_id = post(&client, &url, "deploy-0", SECRET).await;
    let load_started = Instant::now();
    let mut senders = Vec::new();
    for sender in 0..8 {
        let (client, url) = (client.clone(), url.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..125 {
                post(&client, &url, &format!("load-{sender}-{i}"), SECRET).await;
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let load_took = load_started.elapsed();
    let (loaded, peak) = memory(&first);
    eprintln!(
        "container memory: {} idle; {} after 1000 messages ({load_took:.1?}), peak {}",
        mib(idle),
        mib(loaded),
        mib(peak)
    );
    let limit = manifest_memory_limit("embedded.yaml");
    assert!(
        peak < limit / 2,
        "peak RSS {} leaves less than half of the embedded manifest's limit {}",
        mib(peak),
        mib(limit)
    );

    let records = tail_in(&first, "inbound");
    assert_eq!(records.len(), 1001);
    assert_eq!(records[0]["headers"]["ce_id"], first_id.as_str());
    assert_eq!(records[0]["value"]["channelId"], "shop-api");
    assert_eq!(records[0]["value"]["sender"]["value"], "+989121234567");

    // SIGTERM (podman stop): exit 0 within the drain bound.
    let bound = drain_bound();
    let stopping = Instant::now();
    run(podman().args(["stop", "-t", &bound.as_secs().to_string(), &first]));
    let (code, _) = wait_exit(&first, bound);
    eprintln!(
        "container: stopped by SIGTERM in {:.1?}",
        stopping.elapsed()
    );
    assert_eq!(code, 0, "exit code after SIGTERM");
    assert!(stopping.elapsed() < bound);

    // A new container on the same volume finds the message.
    let second = unique("omnid");
    run_omnid(&second, port, &volume, &channels, &secret);
    cleanup.containers.push(second.clone());
    let restarted = wait_ready(&format!("{base}/readyz"), &second, Duration::from_secs(90)).await;
    eprintln!("container: a new container on the volume ready in {restarted:.1?}");
    let records = tail_in(&second, "inbound");
    assert_eq!(records.len(), 1001, "the volume kept every record");
    assert_eq!(records[0]["headers"]["ce_id"], first_id.as_str());
    let after = post(&client, &url, "deploy-after-restart", SECRET).await;
    let records = tail_in(&second, "inbound");
    assert_eq!(records.len(), 1002);
    assert_eq!(records[1001]["headers"]["ce_id"], after.as_str());

    // SIGTERM to the process directly (as a kubelet or systemd sends it).
    run(podman().args(["kill", "--signal", "TERM", &second]));
    let (code, took) = wait_exit(&second, bound);
    eprintln!("container: exited {took:.1?} after SIGTERM");
    assert_eq!(code, 0, "exit code after SIGTERM");
    let logs = run(podman().args(["logs", &second]));
    let logs = String::from_utf8_lossy(&logs.stderr).into_owned() + &stdout(&logs);
    assert!(logs.contains("event log closed, bye"), "{logs}");
    eprintln!(
        "container: test done in {:.1?} after the image",
        test_started.elapsed()
    );
}

/// The container's health as podman recorded it at its last check
/// (`healthy`, `unhealthy`, `starting`).
fn health_status(container: &str) -> String {
    let inspected: serde_json::Value =
        serde_json::from_slice(&run(podman().args(["container", "inspect", container])).stdout)
            .unwrap();
    let state = &inspected[0]["State"];
    // `Health` since podman 4 (as Docker names it), `Healthcheck` before.
    state["Health"]["Status"]
        .as_str()
        .or_else(|| state["Healthcheck"]["Status"].as_str())
        .unwrap_or_else(|| panic!("no health status: {state}"))
        .to_owned()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// compose.yaml's service layout with podman-compose: omnid on Kafka (a
/// Tansu broker in the `kafka` service's place), a signed message posted
/// to the published port and read back from the broker by `omnid tail`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_runs_omnid_on_kafka() {
    const SECRET: &str = "compose-secret";
    let image = image();
    let kafka = required_env("OMNID_TEST_TANSU_IMAGE", "ensure_deploy_images");
    let project = unique("compose");
    let port = free_port();
    let env: Vec<(String, String)> = [
        ("OMNID_IMAGE", image.to_owned()),
        ("KAFKA_IMAGE", kafka),
        ("OMNID_DEMO_API_SECRET", SECRET.to_owned()),
        ("OMNID_HTTP_PORT", port.to_string()),
        ("KAFKA_HOST_PORT", free_port().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut cleanup = Cleanup::default();
    cleanup.compose = Some((project.clone(), env.clone()));
    let started = Instant::now();
    run(Command::new("podman-compose")
        .current_dir(repo())
        .args([
            "-p",
            &project,
            "-f",
            "deploy/compose.yaml",
            "up",
            "-d",
            "--no-build",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null()));
    let omnid = format!("{project}_omnid_1");
    let ready = wait_ready(
        &format!("http://127.0.0.1:{port}/readyz"),
        &omnid,
        Duration::from_secs(120),
    )
    .await;
    eprintln!(
        "compose: omnid on Kafka ready {ready:.1?} after `up` returned ({:.1?} in all)",
        started.elapsed()
    );

    let (idle, _) = memory(&omnid);
    eprintln!("compose: omnid on Kafka {} resident when idle", mib(idle));
    let client = client();
    let body = serde_json::json!({
        "external_id": "compose-1",
        "sender": { "kind": "phone", "value": "+1 415 555 0134" },
        "text": "hello through compose",
    });
    let id = post_body(
        &client,
        &format!("http://127.0.0.1:{port}/webhooks/demo-api"),
        body.to_string(),
        SECRET,
    )
    .await;
    // Read from the broker, all partitions, by a client of its own.
    let records = tail_in(&omnid, "inbound");
    let record = records
        .iter()
        .find(|r| r["headers"]["ce_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not on omni.inbound.v1: {records:?}"));
    assert_eq!(record["topic"], "omni.inbound.v1");
    assert_eq!(record["key"], "phone:+14155550134");
    assert_eq!(record["value"]["content"]["text"], "hello through compose");
    assert_eq!(record["value"]["channelId"], "demo-api");
    // The compose health check of the omnid service (`omnid health --ready`).
    run(podman().args(["healthcheck", "run", &omnid]));
    // A stop within the service's stop_grace_period (podman-compose's own
    // `down` waits 1 s only): the producer flushed, exit code 0.
    let stopping = Instant::now();
    run(podman().args(["stop", "-t", "90", &omnid]));
    let (code, _) = wait_exit(&omnid, drain_bound());
    eprintln!(
        "compose: omnid on Kafka stopped by SIGTERM in {:.1?}",
        stopping.elapsed()
    );
    assert_eq!(code, 0, "exit code after SIGTERM");
    drop(cleanup);
    eprintln!("compose: up, message, down in {:.1?}", started.elapsed());
}

/// The unit file: `systemd-analyze verify` finds nothing to say (in a
/// root holding the binary at its path and the system's units), and
/// `systemd-analyze security` rates it OK or better.
#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let started = Instant::now();
    let unit_path = repo().join("deploy/systemd/omnid.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let root = tempfile::tempdir().unwrap();
    let install = |from: &Path, to: &str| {
        let target = root.path().join(to.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from, &target)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), target.display()));
    };
    // verify checks that ExecStart's path is executable; the real binary
    // runs under the unit in the next test.
    install(Path::new("/bin/true"), "/usr/local/bin/omnid");
    install(Path::new("/bin/kill"), "/bin/kill");
    install(&unit_path, "/etc/systemd/system/omnid.service");
    // The units it orders itself after (network-online.target, ...).
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("multi-user.target").exists())
        .expect("systemd's units (install systemd)");
    std::fs::create_dir_all(root.path().join("usr/lib/systemd")).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(root.path().join("usr/lib/systemd/system")));

    let analyze = |args: &[&str]| {
        let output = Command::new("systemd-analyze")
            .args(args)
            .arg(format!("--root={}", root.path().display()))
            .arg("/etc/systemd/system/omnid.service")
            // To stderr, not to a journal that may not exist.
            .env("SYSTEMD_LOG_TARGET", "console")
            .output()
            .unwrap_or_else(|e| panic!("cannot run systemd-analyze ({e}): install systemd"));
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), text)
    };
    let (ok, text) = analyze(&["verify"]);
    assert!(
        ok && text.trim().is_empty(),
        "systemd-analyze verify:\n{text}"
    );

    let (ok, text) = analyze(&["security", "--offline=yes", "--no-pager"]);
    assert!(ok, "systemd-analyze security:\n{text}");
    let overall = text
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for omnid.service: "))
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| panic!("no overall exposure level:\n{text}"));
    eprintln!("systemd-analyze security: {overall}");
    let mut fields = overall.split_whitespace();
    let score: f64 = fields.next().unwrap().parse().unwrap();
    let rating = fields.next().unwrap();
    // systemd 252 rates below 1.0 SAFE, below 5.0 OK, below 7.5 MEDIUM.
    assert!(
        score < 5.0 && ["PERFECT", "SAFE", "OK"].contains(&rating),
        "exposure {overall}:\n{text}"
    );

    // Stops are given longer than the daemon's drain.
    let timeout = directive(&unit, "TimeoutStopSec")
        .trim_end_matches('s')
        .parse::<u64>()
        .expect("TimeoutStopSec in seconds");
    assert!(Duration::from_secs(timeout) > drain_bound(), "{timeout}");
    // omnid sends no readiness notification: Type=notify would never start.
    assert_eq!(directive(&unit, "Type"), "exec");
    eprintln!("systemd: verified in {:.1?}", started.elapsed());
}

/// The value of a unit file's directive (its last assignment).
fn directive<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
}

/// Every YAML file under deploy/ passes yamllint; the manifests validate
/// against the Kubernetes schemas (strict: no unknown field) and say what
/// the daemon needs; and the config they mount passes `omnid check-config`
/// inside the image, mounted where the kubelet would mount it.
#[test]
fn the_kubernetes_manifests_validate_and_their_config_checks() {
    let started = Instant::now();
    let venv = PathBuf::from(required_env(
        "OMNID_TEST_VENV",
        "ensure_deploy_python_tools",
    ));
    let deploy = repo().join("deploy");
    run(Command::new(venv.join("bin/yamllint"))
        .arg("--strict")
        .arg("-c")
        .arg(deploy.join(".yamllint"))
        .arg(&deploy));
    let manifests = ["embedded.yaml", "production.yaml"];
    run(Command::new(venv.join("bin/kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(manifests.map(|m| deploy.join("kubernetes").join(m))));

    let bound = drain_bound();
    for manifest in manifests {
        let documents = manifest_documents(manifest);
        let find = |kind: &str| documents.iter().find(|d| d["kind"] == kind);
        let workload = find("StatefulSet")
            .or_else(|| find("Deployment"))
            .unwrap_or_else(|| panic!("{manifest}: no workload"));
        let pod = &workload["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{manifest}"
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{manifest}"
        );
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            Duration::from_secs(grace) > bound,
            "{manifest}: grace {grace} s"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{manifest}");
        assert_eq!(pod["securityContext"]["runAsUser"], 10001, "{manifest}");
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{manifest}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{manifest}");
        assert_eq!(security["capabilities"]["drop"][0], "ALL", "{manifest}");
        assert!(
            container["resources"]["limits"]["memory"].is_string(),
            "{manifest}"
        );
        assert!(
            container["resources"]["requests"]["cpu"].is_string(),
            "{manifest}"
        );
        let mounts = container["volumeMounts"].as_array().unwrap();
        let data = mounts
            .iter()
            .find(|m| m["mountPath"] == "/var/lib/omnid")
            .unwrap_or_else(|| panic!("{manifest}: nothing at the data directory"));

        if workload["kind"] == "StatefulSet" {
            // The embedded log: one writer, a claim of its own.
            assert_eq!(workload["spec"]["replicas"], 1, "{manifest}");
            let claims = workload["spec"]["volumeClaimTemplates"].as_array().unwrap();
            assert!(claims.iter().any(|c| c["metadata"]["name"] == data["name"]));
        } else {
            // Kafka and PostgreSQL: replicas, and a budget for drains.
            let pdb = find("PodDisruptionBudget")
                .unwrap_or_else(|| panic!("{manifest}: no PodDisruptionBudget"));
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"],
                workload["spec"]["template"]["metadata"]["labels"]
            );
            assert!(workload["spec"]["replicas"].as_u64().unwrap() > 1);
        }
        check_config_in_image(manifest, &documents, container);
    }
    eprintln!("kubernetes: checked in {:.1?}", started.elapsed());
}

/// `omnid check-config` in the image, with the manifest's ConfigMaps and
/// Secrets written out and mounted at the container's mount paths, its
/// environment, user and a read-only root.
fn check_config_in_image(
    manifest: &str,
    documents: &[serde_json::Value],
    container: &serde_json::Value,
) {
    let scratch = tempfile::tempdir().unwrap();
    let pod_volumes: BTreeMap<String, serde_json::Value> = documents
        .iter()
        .filter_map(|d| d["spec"]["template"]["spec"]["volumes"].as_array())
        .flatten()
        .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
        .collect();
    let mut command = podman();
    command.args([
        "run",
        "--rm",
        "--read-only",
        "--cap-drop=all",
        "--user",
        "10001:10001",
    ]);
    for mount in container["volumeMounts"].as_array().unwrap() {
        let name = mount["name"].as_str().unwrap();
        let path = mount["mountPath"].as_str().unwrap();
        let Some(volume) = pod_volumes.get(name) else {
            continue; // a claim template: nothing to check
        };
        let (kind, source) = if let Some(map) = volume["configMap"]["name"].as_str() {
            ("ConfigMap", map)
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            ("Secret", secret)
        } else {
            continue; // emptyDir, a claim
        };
        let object = documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == source)
            .unwrap_or_else(|| panic!("{manifest}: no {kind} {source}"));
        let files = if kind == "ConfigMap" {
            &object["data"]
        } else {
            &object["stringData"]
        };
        let dir = scratch.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o755);
        for (file, text) in files.as_object().unwrap() {
            std::fs::write(dir.join(file), text.as_str().unwrap()).unwrap();
            set_mode(&dir.join(file), 0o644);
        }
        command.args(["-v", &format!("{}:{path}:ro", dir.display())]);
    }
    for variable in container["env"].as_array().into_iter().flatten() {
        command.args([
            "-e",
            &format!(
                "{}={}",
                variable["name"].as_str().unwrap(),
                variable["value"].as_str().unwrap()
            ),
        ]);
    }
    command.arg(image()).arg("check-config");
    let output = run(&mut command);
    let text = stdout(&output);
    assert!(
        text.contains("1 channel(s): shop-api (api)"),
        "{manifest}: {text}"
    );
}

/// A manifest's documents, as JSON (through the venv's PyYAML).
fn manifest_documents(manifest: &str) -> Vec<serde_json::Value> {
    let venv = PathBuf::from(required_env(
        "OMNID_TEST_VENV",
        "ensure_deploy_python_tools",
    ));
    let output = run(Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(repo().join("deploy/kubernetes").join(manifest)));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The memory limit of a manifest's omnid container, in bytes.
fn manifest_memory_limit(manifest: &str) -> u64 {
    let documents = manifest_documents(manifest);
    let limit = documents
        .iter()
        .find_map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"].as_str()
        })
        .unwrap_or_else(|| panic!("{manifest}: no memory limit"))
        .to_owned();
    let (number, unit) = limit.split_at(
        limit
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(limit.len()),
    );
    let number: u64 = number.parse().unwrap();
    number
        * match unit {
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "" => 1,
            other => panic!("{manifest}: unit {other}"),
        }
}

/// The unit file run by systemd itself, in a container booting systemd:
/// omnid starts in the unit's sandbox (a dynamic user, no capabilities,
/// the system-call filter, a read-only system), reads its channel's secret
/// from a credential, takes a signed webhook, survives `systemctl reload`,
/// and `systemctl stop` ends it with exit code 0, its data kept in the
/// state directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_runs_omnid_in_its_sandbox() {
    const SECRET: &str = "systemd-secret";
    let image = required_env("OMNID_TEST_SYSTEMD_IMAGE", "ensure_deploy_images");
    let binary = omnid_binary();
    let name = unique("systemd");
    let port = free_port();
    let mut cleanup = Cleanup::default();
    run(podman()
        .args(["run", "-d", "--name", &name, "--systemd=always"])
        .args(["-p", &format!("127.0.0.1:{port}:8080")])
        .arg(&image));
    cleanup.containers.push(name.clone());
    let exec = |args: &[&str]| run(podman().args(["exec", &name]).args(args));
    let journal = || {
        podman()
            .args(["exec", &name, "journalctl", "-u", "omnid", "--no-pager"])
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default()
    };

    // Installed as deploy/systemd/omnid.service says, plus a drop-in that
    // listens on every address of the container, for its published port.
    let files = tempfile::tempdir().unwrap();
    let etc = files.path();
    let write = |path: &str, text: &str, mode: u32| {
        let path = etc.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        set_mode(&path, mode);
    };
    write(
        "omnid/omnid.toml",
        &std::fs::read_to_string(repo().join("config/omnid.toml")).unwrap(),
        0o644,
    );
    write(
        "omnid/channels/shop-api.toml",
        "id = \"shop-api\"\nkind = \"api\"\n\
         secret = { file = \"/run/credentials/omnid.service/omnid_shop-api\" }\n\
         default_region = \"IR\"\n",
        0o644,
    );
    write("omnid/credentials/shop-api", SECRET, 0o600);
    set_mode(&etc.join("omnid/credentials"), 0o700);
    write(
        "systemd/system/omnid.service",
        &std::fs::read_to_string(repo().join("deploy/systemd/omnid.service")).unwrap(),
        0o644,
    );
    write(
        "systemd/system/omnid.service.d/listen.conf",
        "[Service]\nEnvironment=OMNID__HTTP__LISTEN=0.0.0.0:8080\n",
        0o644,
    );
    run(podman()
        .arg("cp")
        .arg(format!("{}/.", etc.display()))
        .arg(format!("{name}:/etc/")));
    run(podman()
        .arg("cp")
        .arg(binary)
        .arg(format!("{name}:/usr/local/bin/omnid")));
    // systemd is up (degraded is fine: a container lacks some units).
    let _ = podman()
        .args(["exec", &name, "systemctl", "is-system-running", "--wait"])
        .output();
    exec(&["systemctl", "daemon-reload"]);
    let started = Instant::now();
    let start = podman()
        .args(["exec", &name, "systemctl", "start", "omnid"])
        .output()
        .unwrap();
    assert!(
        start.status.success(),
        "systemctl start omnid:\n{}",
        journal()
    );
    let url = format!("http://127.0.0.1:{port}");
    let ready = wait_ready(&format!("{url}/readyz"), &name, Duration::from_secs(90)).await;
    eprintln!(
        "systemd: omnid ready {ready:.1?} after `systemctl start` ({:.1?} in all)",
        started.elapsed()
    );

    // The sandbox it runs in.
    let pid = stdout(&exec(&["systemctl", "show", "-P", "MainPID", "omnid"]));
    let status = stdout(&exec(&["cat", &format!("/proc/{pid}/status")]));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
            .to_owned()
    };
    assert!(
        !field("Uid:").starts_with('0'),
        "runs as root: {}",
        field("Uid:")
    );
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "a system-call filter");

    let client = client();
    let webhook = format!("{url}/webhooks/shop-api");
    let id = post(&client, &webhook, "systemd-1", SECRET).await;
    exec(&["systemctl", "reload", "omnid"]);
    let again = post(&client, &webhook, "systemd-2", SECRET).await;

    let stopping = Instant::now();
    exec(&["systemctl", "stop", "omnid"]);
    eprintln!("systemd: `systemctl stop` took {:.1?}", stopping.elapsed());
    // Exited by itself (systemd would log how the main process ended had
    // it been killed, or exited non-zero), after closing the log.
    let result = stdout(&exec(&["systemctl", "show", "-P", "Result", "omnid"]));
    let journal = journal();
    assert_eq!(result, "success", "{journal}");
    assert!(journal.contains("event log closed, bye"), "{journal}");
    assert!(!journal.contains("Main process exited"), "{journal}");
    let output = exec(&[
        "env",
        "OMNID__DATA_DIR=/var/lib/omnid",
        "omnid",
        "--config",
        "/etc/omnid/omnid.toml",
        "tail",
        "--topic",
        "inbound",
    ]);
    let records: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ids: Vec<_> = records
        .iter()
        .map(|r| r["headers"]["ce_id"].clone())
        .collect();
    assert_eq!(ids, [id.as_str(), again.as_str()]);
    eprintln!(
        "systemd: start, webhooks, reload, stop and tail in {:.1?}",
        started.elapsed()
    );
}
