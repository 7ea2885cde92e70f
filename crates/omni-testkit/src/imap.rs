//! A minimal blocking IMAP client for seeding, inspecting and measuring a
//! [`Dovecot`].
//!
//! Test data goes in through the server, not by writing maildir files, so
//! that IDLEing clients are notified exactly as they would be in
//! production. Only what the harness and the email benchmark need is here:
//! LOGIN, APPEND (with LITERAL+ and MULTIAPPEND, which Dovecot always
//! offers), CREATE, STATUS, SELECT/EXAMINE, UID SEARCH, a FETCH that
//! counts what it drops, IDLE and LOGOUT over plain TCP on loopback.
//!
//! [`Dovecot`]: crate::Dovecot

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

/// Generous: appending a backlog of thousands of messages in one
/// MULTIAPPEND is a single command.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// One IMAP connection, normally logged in.
#[derive(Debug)]
pub struct Session {
    stream: BufReader<TcpStream>,
    next_tag: u32,
}

impl Session {
    /// Connects to `port` on 127.0.0.1 and reads the greeting.
    pub fn connect(port: u16) -> io::Result<Self> {
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        tcp.set_nodelay(true)?;
        let mut session = Session {
            stream: BufReader::new(tcp),
            next_tag: 1,
        };
        let greeting = session.read_response_line()?;
        if !greeting.starts_with("* OK") {
            return Err(io::Error::other(format!("unexpected greeting: {greeting}")));
        }
        Ok(session)
    }

    /// Connects and logs in with LOGIN.
    pub fn login(port: u16, login: &str, password: &str) -> io::Result<Self> {
        let mut session = Self::connect(port)?;
        session.run(format!("LOGIN {} {}", quote(login), quote(password)).as_bytes())?;
        Ok(session)
    }

    /// Sends one command (without tag and CRLF; literals inside must be
    /// LITERAL+ ones) and returns the untagged response lines followed by
    /// the tagged OK line. A tagged NO or BAD is an error carrying the line.
    pub fn run(&mut self, command: &[u8]) -> io::Result<Vec<String>> {
        let tag = self.send(command)?;
        let mut lines = Vec::new();
        loop {
            let line = self.read_response_line()?;
            if let Some(status) = line.strip_prefix(&tag).and_then(|l| l.strip_prefix(' ')) {
                if status.starts_with("OK") {
                    lines.push(line);
                    return Ok(lines);
                }
                let shown = String::from_utf8_lossy(&command[..command.len().min(200)]);
                return Err(io::Error::other(format!("`{shown}` failed: {line}")));
            }
            lines.push(line);
        }
    }

    /// Appends one message to `mailbox` in a single write (command and
    /// LITERAL+ literal together), so that timing an APPEND times the
    /// server, not a round trip for a continuation.
    pub fn append(&mut self, mailbox: &str, message: &[u8]) -> io::Result<()> {
        let mut command = format!("APPEND {}", quote(mailbox)).into_bytes();
        push_literal(&mut command, message);
        self.run(&command).map(drop)
    }

    /// Runs a FETCH and returns how many messages it answered for and the
    /// bytes of their literals, which are read and dropped rather than
    /// kept: a benchmark's client must not cost more than the server.
    pub fn fetch_counting(&mut self, command: &str) -> io::Result<(usize, usize)> {
        let tag = self.send(command.as_bytes())?;
        let (mut fetches, mut bytes) = (0, 0);
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.stream.read_until(b'\n', &mut line)? == 0 {
                return Err(closed());
            }
            if let Some(status) = line.strip_prefix(tag.as_bytes()) {
                return if status.starts_with(b" OK") {
                    Ok((fetches, bytes))
                } else {
                    Err(io::Error::other(
                        String::from_utf8_lossy(&line).into_owned(),
                    ))
                };
            }
            if line.starts_with(b"* ") && line.windows(8).any(|w| w == b" FETCH (") {
                fetches += 1;
            }
            // A literal ends the line; the response goes on after it.
            while let Some(size) = literal_size(&line) {
                let copied = io::copy(&mut (&mut self.stream).take(size as u64), &mut io::sink())?;
                if copied != size as u64 {
                    return Err(closed());
                }
                bytes += size;
                line.clear();
                self.stream.read_until(b'\n', &mut line)?;
            }
        }
    }

    /// Starts IDLE on the selected mailbox: from then on the server's
    /// untagged updates arrive through [`Idle::next`].
    pub fn idle(mut self) -> io::Result<Idle> {
        self.send(b"IDLE")?;
        let line = self.read_response_line()?;
        if !line.starts_with('+') {
            return Err(io::Error::other(format!("IDLE refused: {line}")));
        }
        Ok(Idle {
            session: self,
            pending: Vec::new(),
        })
    }

    /// Writes `tag command CRLF` and returns the tag.
    fn send(&mut self, command: &[u8]) -> io::Result<String> {
        let tag = format!("t{}", self.next_tag);
        self.next_tag += 1;
        let mut buf = Vec::with_capacity(command.len() + tag.len() + 3);
        buf.extend_from_slice(tag.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(command);
        buf.extend_from_slice(b"\r\n");
        self.stream.get_mut().write_all(&buf)?;
        Ok(tag)
    }

    /// Logs out politely, so the server log shows a clean disconnect.
    pub fn logout(mut self) {
        let _ = self.run(b"LOGOUT");
    }

    /// Reads one response line, with any literals it contains inlined.
    fn read_response_line(&mut self) -> io::Result<String> {
        let mut line = Vec::new();
        loop {
            let start = line.len();
            if self.stream.read_until(b'\n', &mut line)? == 0 {
                return Err(closed());
            }
            let chunk = &line[start..];
            let Some(size) = literal_size(chunk) else {
                break;
            };
            let mut literal = vec![0; size];
            self.stream.read_exact(&mut literal)?;
            line.extend_from_slice(&literal);
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        Ok(String::from_utf8_lossy(&line).into_owned())
    }
}

/// A session in IDLE (see [`Session::idle`]).
#[derive(Debug)]
pub struct Idle {
    session: Session,
    /// What was read of a line when a wait ran out.
    pending: Vec<u8>,
}

impl Idle {
    /// The next complete line from the server, or `None` if none is
    /// complete within `wait`.
    pub fn next(&mut self, wait: Duration) -> io::Result<Option<String>> {
        let stream = &mut self.session.stream;
        stream.get_mut().set_read_timeout(Some(wait))?;
        let read = stream.read_until(b'\n', &mut self.pending);
        stream.get_mut().set_read_timeout(Some(IO_TIMEOUT))?;
        match read {
            Ok(0) => Err(closed()),
            Ok(_) if self.pending.ends_with(b"\n") => {
                let line = String::from_utf8_lossy(&self.pending).trim_end().to_owned();
                self.pending.clear();
                Ok(Some(line))
            }
            Ok(_) => Ok(None),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends IDLE (`DONE`) without waiting for the server's answer.
    pub fn done(mut self) {
        let _ = self.session.stream.get_mut().write_all(b"DONE\r\n");
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
}

/// N of an untagged `* N EXISTS` line.
pub fn exists(line: &str) -> Option<u32> {
    let (n, what) = line.strip_prefix("* ")?.split_once(' ')?;
    what.trim_end()
        .eq_ignore_ascii_case("EXISTS")
        .then(|| n.parse().ok())?
}

/// The size of the literal announced at the end of `chunk` (`{N}\r\n`).
fn literal_size(chunk: &[u8]) -> Option<usize> {
    let chunk = chunk
        .strip_suffix(b"\r\n")
        .or_else(|| chunk.strip_suffix(b"\n"))?;
    let chunk = chunk.strip_suffix(b"}")?;
    let open = chunk.iter().rposition(|b| *b == b'{')?;
    std::str::from_utf8(&chunk[open + 1..]).ok()?.parse().ok()
}

/// An IMAP quoted string. The harness only handles ASCII names and
/// passwords (mailbox names beyond ASCII would need modified UTF-7).
pub(crate) fn quote(s: &str) -> String {
    assert!(
        s.is_ascii() && !s.contains(['\r', '\n', '\0']),
        "omni-testkit's IMAP client only handles printable ASCII strings, got {s:?}"
    );
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Appends `message` as a LITERAL+ literal to an APPEND command line.
pub(crate) fn push_literal(command: &mut Vec<u8>, message: &[u8]) {
    command.extend_from_slice(format!(" {{{}+}}\r\n", message.len()).as_bytes());
    command.extend_from_slice(message);
}

/// The UIDs of an `[APPENDUID <uidvalidity> <uid-set>]` response code.
pub(crate) fn append_uids(tagged: &str) -> Option<Vec<u32>> {
    let rest = &tagged[tagged.find("[APPENDUID ")? + "[APPENDUID ".len()..];
    let rest = &rest[..rest.find(']')?];
    let set = rest.split_whitespace().nth(1)?;
    let mut uids = Vec::new();
    for part in set.split(',') {
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                uids.extend(a.min(b)..=a.max(b));
            }
            None => uids.push(part.parse().ok()?),
        }
    }
    Some(uids)
}

/// The value of `item` in an untagged `* STATUS mailbox (ITEM n ...)` line.
pub(crate) fn status_item(lines: &[String], item: &str) -> Option<u32> {
    let line = lines.iter().find(|l| l.starts_with("* STATUS "))?;
    let items = &line[line.rfind('(')? + 1..];
    let items = items.strip_suffix(')').unwrap_or(items);
    let mut words = items.split_whitespace();
    while let Some(word) = words.next() {
        let value = words.next()?;
        if word.eq_ignore_ascii_case(item) {
            return value.parse().ok();
        }
    }
    None
}

/// The numbers of an untagged `* SEARCH n n n` line.
pub fn search_results(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("* SEARCH"))
        .flat_map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_appenduid_sets() {
        assert_eq!(
            append_uids("t3 OK [APPENDUID 1795427644 7] Append completed."),
            Some(vec![7])
        );
        assert_eq!(
            append_uids("t3 OK [APPENDUID 12 3:5,9] Append completed."),
            Some(vec![3, 4, 5, 9])
        );
        assert_eq!(append_uids("t3 OK Append completed."), None);
    }

    #[test]
    fn parses_status_and_literal_sizes() {
        let lines = vec!["* STATUS \"INBOX\" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY 777)".to_owned()];
        assert_eq!(status_item(&lines, "MESSAGES"), Some(3));
        assert_eq!(status_item(&lines, "UIDVALIDITY"), Some(777));
        assert_eq!(literal_size(b"* LIST () \"/\" {5}\r\n"), Some(5));
        assert_eq!(literal_size(b"* OK done\r\n"), None);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn parses_exists_lines() {
        assert_eq!(exists("* 42 EXISTS"), Some(42));
        assert_eq!(exists("* 42 exists\r\n"), Some(42));
        assert_eq!(exists("* 3 RECENT"), None);
        assert_eq!(exists("t1 OK 4 EXISTS"), None);
    }
}
