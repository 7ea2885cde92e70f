//! A private Dovecot IMAP server per test.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::imap::{self, Session};
use crate::process::{self, START_TIMEOUT};
use crate::tls;

const DOVECOT_BIN: &str = "/usr/sbin/dovecot";
const DOVEADM_BIN: &str = "/usr/bin/doveadm";

/// A mailbox owner, as listed in every [`Dovecot`]'s passwd-file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct User {
    /// The IMAP login name (also the maildir's directory name).
    pub login: &'static str,
    /// The plain-text password LOGIN and AUTHENTICATE PLAIN accept.
    pub password: &'static str,
}

/// The user tests normally use.
pub const ALICE: User = User {
    login: "alice",
    password: "alice-pw",
};

/// A second user, for tests about mailbox isolation or several accounts.
pub const BOB: User = User {
    login: "bob",
    password: "bob-pw",
};

/// A Dovecot IMAP server of its own: config, users, TLS certificate and
/// maildirs in a temp directory, listening on two free loopback ports.
///
/// - [`imap_port`](Self::imap_port): plain IMAP offering STARTTLS, and
///   accepting LOGIN / AUTHENTICATE PLAIN without TLS too.
/// - [`imaps_port`](Self::imaps_port): implicit TLS.
///
/// The certificate is for `localhost` and `127.0.0.1`, issued by a CA made
/// for this server ([`ca_pem_path`](Self::ca_pem_path)), so clients can
/// keep verification on. Users are [`ALICE`] and [`BOB`].
///
/// Messages are put in through IMAP (APPEND) rather than as files, so
/// IDLEing clients are told as in production: about 0.5 s later, as Dovecot
/// batches change notifications. Dovecot re-checks a mailbox every second
/// besides (`mailbox_idle_check_interval`), in case inotify is short in a
/// container.
///
/// Dovecot runs in the foreground as a child of the test, in its own
/// process group, which is terminated on drop. Starting takes about 50 ms.
///
/// [`start_with_oauth2`](Self::start_with_oauth2) also offers
/// `AUTHENTICATE XOAUTH2` and `OAUTHBEARER`, checking bearer tokens itself.
#[derive(Debug)]
pub struct Dovecot {
    dir: TempDir,
    /// The HS256 key of the oauth2 passdb, if there is one.
    oauth2_key: Option<[u8; 32]>,
    config_path: PathBuf,
    ca_pem: String,
    ca_path: PathBuf,
    imap_port: u16,
    imaps_port: u16,
    child: Option<Child>,
}

impl Dovecot {
    /// Starts a fresh server and waits until it greets with `* OK`.
    ///
    /// # Panics
    /// If Dovecot is not installed (`scripts/test` installs it) or does not
    /// come up within 30 s; the message carries its log.
    pub fn start() -> Dovecot {
        Self::start_configured(false)
    }

    /// Like [`start`](Self::start), and also accepts OAuth 2.0 bearer
    /// tokens: `AUTHENTICATE XOAUTH2` and `OAUTHBEARER`, with tokens from
    /// [`oauth2_token`](Self::oauth2_token). LOGIN and PLAIN with the
    /// users' passwords work as before (the helpers use them).
    ///
    /// Tokens are JWTs signed with HS256 by a key made for this server,
    /// which Dovecot's `oauth2` passdb checks itself
    /// (`introspection_mode = local`): signature, `exp`/`iat`, `iss` and
    /// that `sub` is the login name; no token endpoint or HTTP server is
    /// involved. Refused tokens are answered within about 0.5 s (Dovecot
    /// sends failures in batches every 500 ms): the anvil authentication
    /// penalty, which would delay the next attempts from 127.0.0.1 by 2 s,
    /// then 4, 8 and 15 s, is turned off (Dovecot logs a harmless
    /// `net_connect_unix(anvil-auth-penalty) failed` error for that). The
    /// log says why a token was refused (`auth_verbose`).
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub fn start_with_oauth2() -> Dovecot {
        Self::start_configured(true)
    }

    fn start_configured(oauth2: bool) -> Dovecot {
        for binary in [DOVECOT_BIN, DOVEADM_BIN] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install Debian's dovecot-imapd \
                 (scripts/test does, via ensure_mail_servers in scripts/lib.sh)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("omni-dovecot-")
            .tempdir()
            .expect("create Dovecot temp dir");
        let identity = Identity::current();
        for sub in ["run", "state", "mail"] {
            fs::create_dir(dir.path().join(sub)).expect("create Dovecot dir");
        }
        if identity.is_root() {
            // Mail processes run as `mail`, not root (Dovecot refuses uid 0
            // for mail access): they must reach the temp dir and create each
            // user's maildir under mail/.
            set_mode(dir.path(), 0o755);
            set_mode(&dir.path().join("mail"), 0o1777);
        }
        let tls = tls::write_certificates(dir.path());
        let users: String = [ALICE, BOB]
            .iter()
            .map(|u| format!("{}:{{PLAIN}}{}::::::\n", u.login, u.password))
            .collect();
        fs::write(dir.path().join("users"), users).expect("write Dovecot users");
        let oauth2_key = oauth2.then(|| write_oauth2_files(dir.path()));

        let mut dovecot = Dovecot {
            oauth2_key,
            config_path: dir.path().join("dovecot.conf"),
            dir,
            ca_pem: tls.ca_pem,
            ca_path: tls.ca_path,
            imap_port: 0,
            imaps_port: 0,
            child: None,
        };
        // Free ports are only free until someone else binds them; Dovecot
        // then exits with "Address already in use" and we pick others.
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            dovecot.imap_port = process::free_port();
            dovecot.imaps_port = process::free_port();
            if dovecot.imap_port == dovecot.imaps_port {
                continue;
            }
            let config = dovecot.config(&identity, &tls.cert_path, &tls.key_path);
            fs::write(&dovecot.config_path, config).expect("write dovecot.conf");
            match dovecot.spawn() {
                Ok(()) => return dovecot,
                Err(why) if why.contains("in use") && attempt < ATTEMPTS => {}
                Err(why) => panic!("Dovecot did not start: {why}\n{}", dovecot.log()),
            }
        }
        panic!("Dovecot did not start: no free ports\n{}", dovecot.log());
    }

    /// The plain IMAP port on 127.0.0.1 (STARTTLS offered, not required).
    pub fn imap_port(&self) -> u16 {
        self.imap_port
    }

    /// The implicit-TLS IMAPS port on 127.0.0.1.
    pub fn imaps_port(&self) -> u16 {
        self.imaps_port
    }

    /// The PEM file of the CA that issued the server's certificate; trust
    /// it (and only it) to connect with verification on.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_path
    }

    /// The same CA certificate, PEM-encoded, for clients configured from
    /// memory.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A bearer token for `user` that a server from
    /// [`start_with_oauth2`](Self::start_with_oauth2) accepts for the next
    /// hour: an HS256 JWT with `sub` (the login name), `iss`, `iat`, `exp`.
    /// Send it as XOAUTH2 (`user=<login>\x01auth=Bearer <token>\x01\x01`)
    /// or OAUTHBEARER. Any other server, and this one for another user,
    /// refuses it.
    ///
    /// # Panics
    /// If the server was started without OAuth 2.0.
    pub fn oauth2_token(&self, user: User) -> String {
        let now = unix_now();
        self.jwt(user, now, now + 3600)
    }

    /// A token like [`oauth2_token`](Self::oauth2_token), correctly
    /// signed, that expired an hour ago: the server refuses it ("Token has
    /// expired" in its [`log`](Self::log)).
    ///
    /// # Panics
    /// If the server was started without OAuth 2.0.
    pub fn expired_oauth2_token(&self, user: User) -> String {
        let now = unix_now();
        self.jwt(user, now - 7200, now - 3600)
    }

    fn jwt(&self, user: User, issued_at: u64, expires_at: u64) -> String {
        let key = self
            .oauth2_key
            .as_ref()
            .expect("OAuth 2.0 tokens need a server from Dovecot::start_with_oauth2()");
        assert!(
            user.login
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
            "login {:?} needs no JSON escaping",
            user.login
        );
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iss":"{OAUTH2_ISSUER}","sub":"{}","iat":{issued_at},"exp":{expires_at}}}"#,
            user.login
        ));
        let signed = format!("{header}.{claims}");
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key size");
        mac.update(signed.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signed}.{signature}")
    }

    /// The pid of the running server's master process (Dovecot runs in
    /// the foreground, so it is our child), whose `imap` children serve
    /// the connections: what a benchmark meters.
    pub fn master_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Dovecot's log so far (logins, errors, disconnect reasons): worth
    /// printing when a test against it fails.
    pub fn log(&self) -> String {
        let stderr = process::tail(&self.dir.path().join("dovecot.stderr"), 16 * 1024);
        let log = process::tail(&self.dir.path().join("dovecot.log"), 64 * 1024);
        format!("--- dovecot stderr ---\n{stderr}--- dovecot.log ---\n{log}")
    }

    /// Appends one message (raw RFC 5322 bytes, CRLF line ends preferred)
    /// to `mailbox` and returns its UID.
    ///
    /// # Panics
    /// If the mailbox does not exist (see [`create_mailbox`](Self::create_mailbox);
    /// INBOX always does) or the server refuses the message.
    pub fn append(&self, user: User, mailbox: &str, raw: &[u8]) -> u32 {
        let uids = self.append_many(user, mailbox, &[raw]);
        uids[0]
    }

    /// Appends many messages over one connection and returns their UIDs in
    /// order. Fast enough for backlogs of thousands of messages: they go
    /// as MULTIAPPEND commands of up to 500 messages, each one transaction
    /// and one round trip.
    pub fn append_many<M: AsRef<[u8]>>(
        &self,
        user: User,
        mailbox: &str,
        messages: &[M],
    ) -> Vec<u32> {
        const BATCH: usize = 500;
        let mut session = self.session(user);
        let mut uids = Vec::with_capacity(messages.len());
        for batch in messages.chunks(BATCH) {
            let mut command = format!("APPEND {}", imap::quote(mailbox)).into_bytes();
            for message in batch {
                imap::push_literal(&mut command, message.as_ref());
            }
            let lines = session.run(&command).unwrap_or_else(|e| {
                panic!("APPEND to {mailbox} of {}: {e}\n{}", user.login, self.log())
            });
            let tagged = lines.last().map(String::as_str).unwrap_or_default();
            let batch_uids = imap::append_uids(tagged)
                .filter(|u| u.len() == batch.len())
                .unwrap_or_else(|| panic!("no APPENDUID for the batch in {tagged:?}"));
            uids.extend(batch_uids);
        }
        session.logout();
        uids
    }

    /// Creates a mailbox (a Maildir++ folder). Creating one that exists is
    /// not an error, so tests can call this unconditionally.
    pub fn create_mailbox(&self, user: User, mailbox: &str) {
        let mut session = self.session(user);
        if let Err(e) = session.run(format!("CREATE {}", imap::quote(mailbox)).as_bytes())
            && !e.to_string().contains("[ALREADYEXISTS]")
        {
            panic!("CREATE {mailbox} for {}: {e}\n{}", user.login, self.log());
        }
        session.logout();
    }

    /// The number of messages in `mailbox` (IMAP STATUS MESSAGES).
    pub fn message_count(&self, user: User, mailbox: &str) -> u32 {
        self.status(user, mailbox, "MESSAGES")
    }

    /// The mailbox's current UIDVALIDITY (IMAP STATUS UIDVALIDITY).
    pub fn uid_validity(&self, user: User, mailbox: &str) -> u32 {
        self.status(user, mailbox, "UIDVALIDITY")
    }

    /// The UIDs of all messages in `mailbox`, ascending (UID SEARCH ALL).
    pub fn uids(&self, user: User, mailbox: &str) -> Vec<u32> {
        let mut session = self.session(user);
        let quoted = imap::quote(mailbox);
        let lines = session
            .run(format!("EXAMINE {quoted}").as_bytes())
            .and_then(|_| session.run(b"UID SEARCH ALL"))
            .unwrap_or_else(|e| panic!("UID SEARCH in {mailbox}: {e}\n{}", self.log()));
        session.logout();
        let mut uids = imap::search_results(&lines);
        uids.sort_unstable();
        uids
    }

    /// Gives `mailbox` a new UIDVALIDITY and renumbers its messages from
    /// UID 1, keeping their order — what clients see when a server rebuilt
    /// or recreated a mailbox, and must answer by re-reading it.
    ///
    /// `doveadm mailbox update --uid-validity` alone changes the number but
    /// keeps the old UIDs, which no real server does. So the mailbox's UID
    /// list and indexes are deleted first (Dovecot then rescans the maildir
    /// and numbers the messages anew on next access), and the value is set
    /// after. The user's connected clients are disconnected before and
    /// after (`doveadm kick`: `* BYE Server shutting down.`), as a client
    /// that kept the mailbox open might otherwise go on with its stale view;
    /// on reconnecting, SELECT reports `value` and the new UIDs.
    ///
    /// # Panics
    /// If the server is stopped or doveadm fails.
    pub fn set_uid_validity(&self, user: User, mailbox: &str, value: u32) {
        assert!(
            self.child.is_some(),
            "set_uid_validity needs the server running"
        );
        let path = self.doveadm(&["mailbox", "path", "-u", user.login, mailbox]);
        let path = PathBuf::from(path.trim());
        self.kick(user);
        for file in [
            "dovecot-uidlist",
            "dovecot.index",
            "dovecot.index.log",
            "dovecot.index.log.2",
            "dovecot.index.cache",
        ] {
            match fs::remove_file(path.join(file)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("remove {}: {e}", path.join(file).display()),
            }
        }
        let value = value.to_string();
        self.doveadm(&[
            "mailbox",
            "update",
            "-u",
            user.login,
            "--uid-validity",
            &value,
            mailbox,
        ]);
        // Again, for any client that reconnected in between and so saw the
        // mailbox half rebuilt.
        self.kick(user);
    }

    /// Disconnects all of `user`'s IMAP sessions (`doveadm kick`); they
    /// get `* BYE Server shutting down.`
    fn kick(&self, user: User) {
        // Exit code 68 (EX_NOUSER): nobody was connected.
        self.doveadm_allowing(&["kick", user.login], &[68]);
    }

    /// Stops the server (its whole process group). Maildirs, config and
    /// ports are kept for [`restart`](Self::restart); until then clients
    /// get "connection refused". Stopping a stopped server does nothing.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::stop_group(&mut child);
        }
    }

    /// Stops the server if it runs and starts it again on the same ports
    /// with the same certificate and mail, e.g. to test that a client
    /// reconnects. Connected clients see their connection closed.
    pub fn restart(&mut self) {
        self.stop();
        for port in [self.imap_port, self.imaps_port] {
            process::poll_until(Duration::from_secs(10), || {
                process::port_is_free(port).then_some(())
            })
            .unwrap_or_else(|| panic!("port {port} still taken after stopping Dovecot"));
        }
        if let Err(why) = self.spawn() {
            panic!("Dovecot did not restart: {why}\n{}", self.log());
        }
    }

    /// Runs Dovecot and waits for its greeting; on failure the child is
    /// stopped and the reason returned.
    fn spawn(&mut self) -> Result<(), String> {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dovecot.stderr"))
            .expect("open dovecot.stderr");
        let child = Command::new(DOVECOT_BIN)
            .arg("-F")
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("clone stderr file"))
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("spawn {DOVECOT_BIN}: {e}"))?;
        let child = self.child.insert(child);
        let port = self.imap_port;
        let ready = process::poll_until(START_TIMEOUT, || match child.try_wait() {
            Ok(Some(status)) => Some(Err(format!("exited with {status}"))),
            Err(e) => Some(Err(format!("wait: {e}"))),
            Ok(None) => greets(port).then_some(Ok(())),
        });
        let result = ready.unwrap_or_else(|| Err(format!("no greeting within {START_TIMEOUT:?}")));
        if let Err(why) = result {
            self.stop();
            let log = self.log();
            return Err(if log.contains("Address already in use") {
                format!("{why}: address in use")
            } else {
                why
            });
        }
        Ok(())
    }

    fn session(&self, user: User) -> Session {
        Session::login(self.imap_port, user.login, user.password)
            .unwrap_or_else(|e| panic!("IMAP login as {}: {e}\n{}", user.login, self.log()))
    }

    fn status(&self, user: User, mailbox: &str, item: &str) -> u32 {
        let mut session = self.session(user);
        let lines = session
            .run(format!("STATUS {} ({item})", imap::quote(mailbox)).as_bytes())
            .unwrap_or_else(|e| panic!("STATUS {mailbox}: {e}\n{}", self.log()));
        session.logout();
        imap::status_item(&lines, item)
            .unwrap_or_else(|| panic!("no {item} in STATUS response {lines:?}"))
    }

    fn doveadm(&self, args: &[&str]) -> String {
        self.doveadm_allowing(args, &[])
    }

    /// Runs doveadm; exit codes in `also_ok` count as success.
    fn doveadm_allowing(&self, args: &[&str], also_ok: &[i32]) -> String {
        let output = Command::new(DOVEADM_BIN)
            .arg("-c")
            .arg(&self.config_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {DOVEADM_BIN}: {e}"));
        assert!(
            output.status.success() || output.status.code().is_some_and(|c| also_ok.contains(&c)),
            "doveadm {args:?} failed ({}): {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The complete dovecot.conf; nothing from /etc/dovecot is included.
    fn config(&self, identity: &Identity, cert: &Path, key: &Path) -> String {
        let dir = self.dir.path().display();
        let oauth2 = self.oauth2_key.is_some();
        let mut c = String::new();
        let _ = write!(
            c,
            "\
# Written by omni-testkit for one test. Nothing from /etc/dovecot is read.
protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
"
        );
        match identity {
            Identity::Root => c.push_str(
                "\
# Login processes refuse to run as root; mail processes run as `mail`
# because Dovecot refuses uid 0 for mail access.
default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = 1
first_valid_gid = 1
",
            ),
            Identity::User {
                name,
                group,
                uid,
                gid,
            } => {
                let _ = write!(
                    c,
                    "\
# Not root: every process runs as the invoking user.
default_login_user = {name}
default_internal_user = {name}
default_internal_group = {group}
first_valid_uid = {uid}
first_valid_gid = {gid}
"
                );
            }
        }
        let _ = write!(
            c,
            "\
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
# Failed logins answer at once (the default waits 2 s).
auth_failure_delay = 0
mail_location = maildir:{dir}/mail/%u
# Test mail needn't survive a power cut; backlogs append much faster.
mail_fsync = never
# IDLE: inotify wakes clients (after Dovecot's 0.5 s batching); this
# is the fallback poll where inotify is short.
mailbox_idle_check_interval = 1 secs
imap_idle_notify_interval = 2 mins
passdb {{
  driver = passwd-file
{passwd_mechanisms}  args = scheme=PLAIN username_format=%u {dir}/users
}}
",
            cert = cert.display(),
            key = key.display(),
            mechanisms = if oauth2 {
                "plain login xoauth2 oauthbearer"
            } else {
                "plain login"
            },
            // XOAUTH2 hands the token to the passdbs as the password:
            // only the oauth2 passdb is to see it.
            passwd_mechanisms = if oauth2 {
                "  mechanisms = plain login\n"
            } else {
                ""
            },
        );
        if oauth2 {
            let _ = write!(
                c,
                "\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {dir}/{OAUTH2_CONF}
}}
# Why a token was refused (e.g. Token has expired), in the log.
auth_verbose = yes
# No growing delay (2, 4, 8, 15 s) for further logins from 127.0.0.1
# after a failed one, so tests of refused tokens stay fast.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"
            );
        }
        let (uid, gid) = match identity {
            Identity::Root => ("mail".to_owned(), "mail".to_owned()),
            Identity::User { uid, gid, .. } => (uid.to_string(), gid.to_string()),
        };
        let _ = write!(
            c,
            "\
userdb {{
  driver = static
  args = uid={uid} gid={gid}
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
",
            imap = self.imap_port,
            imaps = self.imaps_port,
        );
        if identity.is_root() {
            c.push_str("}\n");
        } else {
            // chroot needs root: off for every service that has one.
            c.push_str("  chroot =\n}\n");
            for service in [
                "anvil",
                "ipc",
                "imap-urlauth-login",
                "old-stats",
                "aggregator",
            ] {
                let _ = writeln!(c, "service {service} {{\n  chroot =\n}}");
            }
        }
        c
    }
}

/// What [`Dovecot::oauth2_token`] puts in `iss`; the passdb requires it.
const OAUTH2_ISSUER: &str = "omni-testkit";
/// The oauth2 passdb's settings file, in the server's directory.
const OAUTH2_CONF: &str = "dovecot-oauth2.conf.ext";

/// Makes a fresh HS256 key and writes the oauth2 passdb's settings and the
/// key dictionary; returns the key.
///
/// Dovecot 2.3.19 looks the key up as `shared/<azp>/<alg>/<kid>` with
/// `default` for a missing `azp` or `kid` and the algorithm as the token
/// names it (`HS256`, not lowercased as newer versions' documentation
/// says); the `fs` dictionary drops the `shared/` and reads
/// `<prefix><azp>/<alg>/<kid>`, a file holding the key in base64.
fn write_oauth2_files(dir: &Path) -> [u8; 32] {
    // Unguessable enough for a test server: unique per temp dir and time.
    let mut seed = Sha256::new();
    seed.update(dir.as_os_str().as_encoded_bytes());
    seed.update(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes(),
    );
    seed.update(std::process::id().to_le_bytes());
    let key: [u8; 32] = seed.finalize().into();

    let keys = dir.join("oauth2-keys");
    let key_dir = keys.join("default").join("HS256");
    fs::create_dir_all(&key_dir).expect("create the oauth2 key dir");
    fs::write(key_dir.join("default"), STANDARD.encode(key)).expect("write the oauth2 key");
    let conf = format!(
        "\
# The oauth2 passdb of an omni-testkit Dovecot: JWTs are checked here,
# against keys in a dictionary, instead of at a token endpoint.
introspection_mode = local
local_validation_key_dict = fs:posix:prefix={keys}/
issuers = {OAUTH2_ISSUER}
# Must equal the login name (the default is `email`).
username_attribute = sub
",
        keys = keys.display()
    );
    fs::write(dir.join(OAUTH2_CONF), conf).expect("write the oauth2 passdb settings");
    key
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who the test runs as, which decides the users Dovecot's processes get.
#[derive(Debug)]
enum Identity {
    Root,
    User {
        name: String,
        group: String,
        uid: u32,
        gid: u32,
    },
}

impl Identity {
    fn current() -> Identity {
        let uid = rustix::process::geteuid();
        if uid.is_root() {
            return Identity::Root;
        }
        let id = |flag: &str| {
            Command::new("id")
                .arg(flag)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| panic!("`id {flag}` names the current user or group"))
        };
        Identity::User {
            name: id("-un"),
            group: id("-gn"),
            uid: uid.as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    fn is_root(&self) -> bool {
        matches!(self, Identity::Root)
    }
}

/// Whether a Dovecot greets on `port` (within a few seconds).
fn greets(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.starts_with("* OK") && line.contains("Dovecot")
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}
