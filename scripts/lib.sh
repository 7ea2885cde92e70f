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
