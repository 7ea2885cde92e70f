# Shared helpers of the scripts: install what a fresh Debian machine lacks.
# Sourced, not run.

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# A C toolchain (the embedded SQLite and librdkafka are compiled from
# source, librdkafka against the system's OpenSSL and zlib) and a Rust
# toolchain (via rustup when cargo is missing: Debian's rustc is too old for
# edition 2024).
ensure_build_tools() {
  if ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
    apt_install build-essential
  fi
  if ! command -v pkg-config >/dev/null 2>&1 \
    || ! pkg-config --exists openssl zlib 2>/dev/null; then
    apt_install pkg-config libssl-dev zlib1g-dev
  fi
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
}

# The Kafka-protocol broker the tests run against (Tansu). Building it takes
# about 12 minutes on two cores, so it is installed once into
# ~/.cargo/bin and reused (CI caches that directory).
TANSU_VERSION=0.6.0
ensure_tansu() {
  local tansu="$HOME/.cargo/bin/tansu"
  if [ -x "$tansu" ] && "$tansu" --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore
}

# The mail servers the email tests start privately (crates/omni-testkit):
# Dovecot's IMAP server, run from /usr/sbin/dovecot with a config of its own
# on random loopback ports; aiosmtpd, run by Debian's /usr/bin/python3 (not
# whatever python3 is first on PATH); and mbsync (isync) as an independent
# IMAP client. Installing dovecot-imapd may also start Debian's own Dovecot
# service on ports 143 and 993 (or fail to, in a container without systemd
# or init scripts); either way the tests neither use nor mind it.
ensure_mail_servers() {
  local missing=()
  [ -x /usr/sbin/dovecot ] && [ -x /usr/bin/doveadm ] || missing+=(dovecot-imapd)
  { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import aiosmtpd' 2>/dev/null; } \
    || missing+=(python3-aiosmtpd)
  command -v mbsync >/dev/null 2>&1 || missing+=(isync)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# libfaketime: the Meta tests restart the daemon with its clock a day ahead
# (LD_PRELOAD, real time otherwise) to show a redelivery that late is still
# dropped. tests read OMNID_TEST_FAKETIME (the library's path).
ensure_faketime() {
  if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then
    apt_install faketime
  fi
  OMNID_TEST_FAKETIME="$(ls /usr/lib/*/faketime/libfaketime.so.1 | head -n1)"
  export OMNID_TEST_FAKETIME
}

# The PostgreSQL server the threading store's tests use: 127.0.0.1:5432,
# trust auth on loopback, users postgres and root, database `test`. Reused
# when one already answers; otherwise Debian's `postgresql` is installed and
# its cluster started and opened up for loopback trust, as on a fresh
# machine. Tests read OMNID_TEST_POSTGRES_URL and fail loudly without one.
ensure_postgres() {
  if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; then
    return
  fi
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt_install postgresql
  fi
  local version cluster_conf
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  if ! as_root pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
    as_root pg_createcluster "$version" main
  fi
  cluster_conf="/etc/postgresql/$version/main"
  # Loopback only, trust: a test server holding nothing but test schemas.
  as_root sh -c "printf '%s\n' \
    'local all all trust' \
    'host all all 127.0.0.1/32 trust' \
    'host all all ::1/128 trust' > '$cluster_conf/pg_hba.conf'"
  as_root sed -i "s/^#\?listen_addresses.*/listen_addresses = '127.0.0.1'/; s/^#\?port = .*/port = 5432/" \
    "$cluster_conf/postgresql.conf"
  as_root pg_ctlcluster "$version" main restart || as_root pg_ctlcluster "$version" main start
  local i
  for i in $(seq 1 30); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 1
  done
  pg_isready -h 127.0.0.1 -p 5432
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'root'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE ROLE root SUPERUSER LOGIN'
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc 'CREATE DATABASE test'
  export OMNID_TEST_POSTGRES_URL="${OMNID_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
}

# Chromium and its WebDriver server, for the browser end-to-end tests
# (crates/omni-testkit's `browser`): tests drive Debian's /usr/bin/chromium
# headless through /usr/bin/chromedriver and read OMNID_TEST_CHROMEDRIVER.
ensure_chromium() {
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    apt_install chromium chromium-driver
  fi
  export OMNID_TEST_CHROMEDRIVER=/usr/bin/chromedriver
}

# The deployment tests (tests/deploy.rs) build and run deploy/Dockerfile,
# run deploy/compose.yaml and check the systemd unit and the Kubernetes
# manifests. Their tools: podman with Debian's runc (podman's default
# runtime, crun, cannot start containers on hosts with hybrid cgroups),
# netavark and aardvark-dns (compose networks and service names), iptables
# (published ports), debootstrap (base images are made locally, see
# ensure_deploy_images), podman-compose, and systemd-analyze.
ensure_deploy_tools() {
  local missing=()
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  [ -x /usr/sbin/runc ] || missing+=(runc)
  [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
  [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  command -v podman-compose >/dev/null 2>&1 || missing+=(podman-compose)
  command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# yamllint and kubernetes-validate (which ships the Kubernetes schemas, so
# validating needs no cluster), in a virtualenv of Debian's Python reused
# across runs. Tests read OMNID_TEST_VENV.
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
ensure_deploy_python_tools() {
  local venv="$HOME/.cache/omnid-venv"
  if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
  fi
  if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION" \
    || ! "$venv/bin/yamllint" --version 2>/dev/null | grep -q "$YAMLLINT_VERSION"; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "yamllint==$YAMLLINT_VERSION"
  fi
  export OMNID_TEST_VENV="$venv"
}

# Container images the deployment tests build on. Public registries may be
# out of reach, so deploy/Dockerfile's two base images are made here
# instead, and given to it as build arguments:
#   - a Debian bookworm made with debootstrap and trimmed as
#     debian:bookworm-slim is (no documentation, locales or package lists),
#     for the runtime stage;
#   - that plus build-essential and the host's own Rust toolchain (at the
#     paths rust:1-bookworm uses: CARGO_HOME=/usr/local/cargo), for the
#     build stage;
#   - that Debian plus the Tansu broker of ensure_tansu, standing in for
#     compose.yaml's Kafka image;
#   - that Debian booting systemd, to run deploy/systemd/omnid.service.
# Podman keeps them in a storage of its own under ~/.cache/omnid-deploy,
# each tagged with a hash of what made it (the recipe below, the toolchain's
# version, the broker binary), so they are made once per machine and
# remade when one of those changes. Run as root (debootstrap needs it).
# Exports podman's CONTAINERS_CONF and CONTAINERS_STORAGE_CONF, and
# OMNID_TEST_DEBIAN_IMAGE, OMNID_TEST_RUST_IMAGE, OMNID_TEST_TANSU_IMAGE,
# OMNID_TEST_SYSTEMD_IMAGE and OMNID_TEST_BUILD_TMPDIR (where podman build
# keeps RUN --mount=type=cache directories: the image's cargo registry and
# target directory, so a rebuild compiles only what changed).
ensure_deploy_images() {
  local cache="$HOME/.cache/omnid-deploy"
  mkdir -p "$cache/tmp"
  # runc, not crun; no default ulimits (setting RLIMIT_NPROC is refused
  # in some sandboxes); netavark, not the CNI plugins Debian also leaves
  # configured.
  cat > "$cache/containers.conf" <<'EOF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
EOF
  cat > "$cache/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$cache/storage"
runroot = "/run/omnid-deploy"
EOF
  export CONTAINERS_CONF="$cache/containers.conf"
  export CONTAINERS_STORAGE_CONF="$cache/storage.conf"
  export OMNID_TEST_BUILD_TMPDIR="$cache/tmp"
  # The image's crate registry cache (deploy/Dockerfile's cache mount of
  # that id) is the host's own registry: crates are downloaded once.
  local registry="${CARGO_HOME:-$HOME/.cargo}/registry"
  mkdir -p "$registry" "$cache/tmp/buildah-cache"
  if [ ! -L "$cache/tmp/buildah-cache/omnid-cargo-registry" ]; then
    rm -rf "$cache/tmp/buildah-cache/omnid-cargo-registry"
    ln -s "$registry" "$cache/tmp/buildah-cache/omnid-cargo-registry"
  fi

  local debian_key rust_key tansu_key systemd_key
  debian_key=$(deploy_key "$(declare -f deploy_debian_image)")
  rust_key=$(deploy_key "$debian_key" "$(declare -f deploy_rust_image)" "$(rustc -vV)" "$(cargo -V)" \
    "$(cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true)")
  tansu_key=$(deploy_key "$debian_key" "$(declare -f deploy_tansu_image)" \
    "$(sha256sum < "$HOME/.cargo/bin/tansu")")
  systemd_key=$(deploy_key "$debian_key" "$(declare -f deploy_systemd_image)")
  export OMNID_TEST_DEBIAN_IMAGE="localhost/omnid-deploy-debian:$debian_key"
  export OMNID_TEST_SYSTEMD_IMAGE="localhost/omnid-deploy-systemd:$systemd_key"
  export OMNID_TEST_RUST_IMAGE="localhost/omnid-deploy-rust:$rust_key"
  export OMNID_TEST_TANSU_IMAGE="localhost/omnid-deploy-tansu:$tansu_key"
  podman image exists "$OMNID_TEST_DEBIAN_IMAGE" || deploy_debian_image "$OMNID_TEST_DEBIAN_IMAGE"
  podman image exists "$OMNID_TEST_RUST_IMAGE" \
    || deploy_rust_image "$OMNID_TEST_RUST_IMAGE" "$OMNID_TEST_DEBIAN_IMAGE"
  podman image exists "$OMNID_TEST_TANSU_IMAGE" \
    || deploy_tansu_image "$OMNID_TEST_TANSU_IMAGE" "$OMNID_TEST_DEBIAN_IMAGE"
  podman image exists "$OMNID_TEST_SYSTEMD_IMAGE" \
    || deploy_systemd_image "$OMNID_TEST_SYSTEMD_IMAGE" "$OMNID_TEST_DEBIAN_IMAGE"
  # Earlier versions of the four, and dangling layers of earlier builds.
  podman images --format '{{.Repository}}:{{.Tag}}' \
    | grep -E '^localhost/omnid-deploy-(debian|rust|tansu|systemd):' \
    | grep -v -x -F -e "$OMNID_TEST_DEBIAN_IMAGE" -e "$OMNID_TEST_RUST_IMAGE" \
      -e "$OMNID_TEST_TANSU_IMAGE" -e "$OMNID_TEST_SYSTEMD_IMAGE" \
    | xargs -r podman rmi --force >/dev/null || true
  podman image prune --force >/dev/null || true
}

deploy_key() {
  printf '%s\n' "$@" | sha256sum | cut -c1-16
}

# Debian bookworm, minimal, trimmed as the official slim image is.
deploy_debian_image() {
  local root
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" >"$root.log" 2>&1 \
    || { cat "$root.log" >&2; rm -rf "$root" "$root.log"; return 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin \
    "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/locale/* "$root"/usr/share/info/*
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/man/*' \
    'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/info/*' \
    > "$root/etc/dpkg/dpkg.cfg.d/slim"
  tar -C "$root" -c . | podman import --quiet --change 'CMD ["bash"]' - "$1" >/dev/null
  rm -rf "$root" "$root.log"
}

# $2 with a C toolchain, the host's Rust toolchain (rustup's active one:
# cargo, rustc, rustdoc and their libraries, no docs) and the certificate
# authorities the host added to its trust store (a TLS-inspecting proxy's,
# without which cargo cannot reach the registry from inside).
deploy_rust_image() {
  local context status=0
  context=$(mktemp -d)
  mkdir "$context/ca"
  find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$context/ca/" \; 2>/dev/null || true
  cat > "$context/Containerfile" <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && mkdir -p /usr/local/rust/bin /usr/local/cargo/bin \
 && cp /toolchain/bin/cargo /toolchain/bin/rustc /toolchain/bin/rustdoc /usr/local/rust/bin/ \
 && cp -a /toolchain/lib /usr/local/rust/
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN cargo --version && rustc --version
EOF
  podman build --quiet --build-arg BASE="$2" --volume "$(rustc --print sysroot):/toolchain:ro" \
    -t "$1" "$context" >/dev/null || status=$?
  rm -rf "$context"
  return "$status"
}

# $2 with the Tansu broker, started as compose.yaml's `kafka` service would
# be reached (kafka:9092), and an answer to that service's health check
# command: the broker accepts a connection.
deploy_tansu_image() {
  local context
  context=$(mktemp -d)
  cp "$HOME/.cargo/bin/tansu" "$context/tansu"
  cat > "$context/kafka-broker-api-versions.sh" <<'EOF'
#!/bin/bash
# Stands in for Kafka's script of this name: succeeds when the broker given
# as --bootstrap-server HOST:PORT accepts a connection.
while [ "$#" -gt 0 ]; do
  if [ "$1" = --bootstrap-server ]; then server=$2; fi
  shift
done
exec 3<>"/dev/tcp/${server%:*}/${server##*:}"
EOF
  chmod +x "$context/kafka-broker-api-versions.sh"
  cat > "$context/Containerfile" <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY tansu /usr/local/bin/tansu
COPY kafka-broker-api-versions.sh /opt/kafka/bin/kafka-broker-api-versions.sh
EXPOSE 9092
ENTRYPOINT ["/usr/local/bin/tansu"]
CMD ["broker", "--storage-engine", "memory://tansu/", "--listener-url", "tcp://0.0.0.0:9092", "--advertised-listener-url", "tcp://kafka:9092"]
EOF
  local status=0
  podman build --quiet --build-arg BASE="$2" -t "$1" "$context" >/dev/null || status=$?
  rm -rf "$context"
  return "$status"
}

# $2 booting systemd (podman run --systemd=always), with the libraries the
# omnid binary links and procps (/bin/kill, for ExecReload), to run the
# unit file as a Debian machine would.
deploy_systemd_image() {
  local context status=0
  context=$(mktemp -d)
  cat > "$context/Containerfile" <<'EOF'
ARG BASE
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv dbus \
      ca-certificates libssl3 zlib1g procps \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
STOPSIGNAL SIGRTMIN+3
CMD ["/sbin/init"]
EOF
  podman build --quiet --build-arg BASE="$2" -t "$1" "$context" >/dev/null || status=$?
  rm -rf "$context"
  return "$status"
}

# The benchmarks' plots: matplotlib in a virtualenv of its own ($VENV).
MATPLOTLIB_VERSION=3.10.9
VENV="$HOME/.cache/omnid-bench-venv"
ensure_plot_venv() {
  if ! /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
  fi
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV"
  if ! "$VENV/bin/python" -c "import matplotlib, sys; sys.exit(matplotlib.__version__ != '$MATPLOTLIB_VERSION')" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
  fi
}
