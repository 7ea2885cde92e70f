//! Child-process and polling helpers shared by the servers.

use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group, test_kill_process_group};

/// How long a server gets to come up. Dovecot answers in about 50 ms and
/// aiosmtpd in about 300 ms on an idle machine; the margin is for a loaded
/// CI machine compiling and running other tests at the same time.
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1, as the kernel hands out for port 0. It is
/// free when returned, not reserved: callers that hand it to a server
/// retry with another one if the server then cannot bind it.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether nothing listens on `port` any more (std sets SO_REUSEADDR, as
/// the servers do, so a closed listener's TIME_WAIT leftovers don't count).
pub(crate) fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Calls `probe` every 20 ms until it yields a value or `timeout` passes.
pub(crate) fn poll_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a child started as the leader of its own process group, with
/// everything it forked: SIGTERM to the group, SIGKILL to whatever is left
/// after a grace period. Returns once the leader is reaped.
///
/// Signalling the group rather than the leader matters for Dovecot: its
/// master alone takes about 1 s to shut down and leaves `imap` processes
/// serving connected clients behind, while the whole group is gone in about
/// 10 ms.
pub(crate) fn stop_group(child: &mut Child) {
    if child.try_wait().ok().flatten().is_none() {
        let group = Pid::from_child(child);
        let _ = kill_process_group(group, Signal::TERM);
        let exited = poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten());
        if exited.is_none() {
            let _ = kill_process_group(group, Signal::KILL);
        }
        let _ = child.wait();
        // The leader's children may still be finishing; give them a moment,
        // then make sure none survives (a zombie never reaped by a
        // container's init would also keep the group alive, hence the cap).
        let gone = poll_until(Duration::from_secs(2), || {
            test_kill_process_group(group).is_err().then_some(())
        });
        if gone.is_none() {
            let _ = kill_process_group(group, Signal::KILL);
        }
    } else {
        let _ = child.wait();
    }
}

/// The last `max` bytes of a file, lossily decoded, for panic messages.
pub(crate) fn tail(path: &Path, max: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file.read_to_end(&mut bytes);
    }
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
