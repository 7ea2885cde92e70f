//! The test harness: real mail servers, one private instance per test,
//! and the real daemon, Kafka broker and PostgreSQL schema for end-to-end
//! tests and benchmarks.
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
//! Beside them:
//!
//! - [`daemon`]: the real `omnid` binary on a temporary deployment
//!   (start, SIGKILL, SIGTERM, `omnid tail`), and signed API requests.
//! - [`kafka`]: a Tansu broker behind a proxy the test can cut.
//! - [`postgres`]: a schema of its own on the test PostgreSQL server.
//! - [`imap`]: the blocking IMAP client the servers are seeded with, also
//!   for measuring (APPEND, a counting FETCH, IDLE).
//! - [`corpus`]: deterministic, realistic customer emails.
//! - [`cpu`]: CPU accounting from /proc for benchmarks.
//! - [`wechat`]: WeChat's signatures and encryption, the requests its
//!   servers make to a channel, and a local server playing its APIs.
//! - [`meta`]: Meta's `X-Hub-Signature-256`, its documented webhook
//!   payloads (WhatsApp, Messenger, Instagram), and a local Graph API.
//! - [`twilio`]: Twilio's signed messaging webhook and a local server
//!   playing its Messages API.
//! - [`browser`]: a headless Chromium under chromedriver (W3C WebDriver),
//!   with tabs sharing one profile, for tests of web pages.
//!
//! `scripts/test` installs the servers on a fresh machine
//! (`ensure_mail_servers`, `ensure_tansu`, `ensure_postgres` and
//! `ensure_faketime` and `ensure_chromium` in `scripts/lib.sh`).

pub mod browser;
pub mod corpus;
pub mod cpu;
pub mod daemon;
mod dovecot;
pub mod imap;
pub mod kafka;
pub mod meta;
pub mod postgres;
mod process;
mod smtp;
mod tls;
pub mod twilio;
pub mod wechat;

pub use dovecot::{ALICE, BOB, Dovecot, User};
pub use smtp::{Received, SMTP_LOGIN, SMTP_PASSWORD, SmtpSink};
