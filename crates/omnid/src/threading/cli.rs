//! `omnid timeline`: a customer's timeline from the configured store, as
//! JSON lines.

use std::path::Path;

use omni_threading::ThreadingStore;

use super::{
    store::Store,
    wire::{entry_json, parse_handle},
};
use crate::settings::Settings;

/// `omnid timeline`: the arguments.
#[derive(Debug, clap::Args)]
pub struct TimelineArgs {
    /// A handle of the customer: `email:ana@example.com`,
    /// `phone:+14155550134`, `external:<channel>:<id>`.
    #[arg(required_unless_present = "customer", conflicts_with = "customer")]
    handle: Option<String>,
    /// A customer id instead (a merged id reads its survivor's timeline).
    #[arg(long)]
    customer: Option<String>,
}

/// `omnid timeline`: prints a customer's timeline from the configured
/// store as JSON lines, oldest first.
pub(crate) async fn timeline(
    config: &Path,
    args: TimelineArgs,
) -> anyhow::Result<std::process::ExitCode> {
    let settings = Settings::load(config)?;
    let store = Store::open(&settings).await?;
    let shared = store.shared();
    let result = print_timeline(shared.as_ref(), &args).await;
    store.close().await;
    result
}

async fn print_timeline(
    store: &dyn ThreadingStore,
    args: &TimelineArgs,
) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write as _;
    let customer = match (&args.customer, &args.handle) {
        (Some(id), _) => omni_threading::CustomerId::from_string(id.clone()),
        (None, Some(text)) => {
            let key = parse_handle(text).map_err(|e| anyhow::anyhow!("{e}"))?;
            match store.identity(&key).await? {
                Some(identity) => identity.customer_id,
                None => {
                    eprintln!("error: no customer has the handle {text}");
                    return Ok(std::process::ExitCode::FAILURE);
                }
            }
        }
        (None, None) => anyhow::bail!("give a handle or --customer"),
    };
    let Some(resolved) = store.resolve_customer(&customer).await? else {
        eprintln!("error: no customer with id {customer}");
        return Ok(std::process::ExitCode::FAILURE);
    };
    let stdout = std::io::stdout();
    let mut after = None;
    loop {
        let page = store.timeline(&resolved, after, 500).await?;
        let mut out = stdout.lock();
        for row in &page.entries {
            if writeln!(out, "{}", entry_json(row)).is_err() {
                return Ok(std::process::ExitCode::SUCCESS);
            }
        }
        let _ = out.flush();
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
