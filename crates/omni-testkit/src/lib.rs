//! Real mail servers for integration tests, one private instance per test.
//!
//! Omnid is tested against real parts rather than mocks: a connector that
//! only ever talked to a hand-written fake learns nothing about STARTTLS,
//! literal handling, IDLE wake-ups or a server that restarts under it. This crate starts the real
//! servers from Debian's packages as child processes:
//!
//! - [`Dovecot`]: Dovecot IMAP (`dovecot-imapd`) with its own config, users,
//!   maildirs and TLS certificate in a temp directory, on free loopback
//!   ports (plain IMAP with STARTTLS, and implicit-TLS IMAPS).
//! - [`SmtpSink`]: an aiosmtpd server (`python3-aiosmtpd`) that stores every
//!   message it accepts, with its envelope, for outbound tests.
//!
//! Both are synchronous (std only) so that async tests and tests that run
//! the `omnid` binary can use them alike; call them from a blocking context
//! or `tokio::task::spawn_blocking` if a test cares about not stalling its
//! runtime for the few milliseconds they take. Everything panics on failure
//! with the server's log attached: this is a test harness, and a panic is
//! the clearest test failure. Each server is stopped (its whole process
//! group) and its directory deleted on drop.
//!
//! `scripts/test` installs the servers on a fresh machine
//! (`ensure_mail_servers` in `scripts/lib.sh`).

mod dovecot;
mod imap;
mod process;
mod smtp;
mod tls;

pub use dovecot::{ALICE, BOB, Dovecot, User};
pub use smtp::{Received, SMTP_LOGIN, SMTP_PASSWORD, SmtpSink};
