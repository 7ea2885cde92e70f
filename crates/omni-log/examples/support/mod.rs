//! What the examples that measure realistic records share: their first
//! arguments, `[N] [words|x]`, and the records, built as the daemon builds
//! them (see `benches/support/events.rs`).

#[path = "../../benches/support/events.rs"]
pub(crate) mod events;

use std::time::{Duration, SystemTime};

use omni_log::Record;

/// The arguments after the program's name: how many records (default
/// 50,000) and their text (`words`, the default, or `x`), then the rest for
/// the example's own.
pub(crate) fn args()
-> Result<(u64, events::Text, impl Iterator<Item = String>), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(Ok(50_000), |n| n.parse())?;
    let kind = args
        .next()
        .map_or(Some(events::Text::Words), |t| events::Text::parse(&t))
        .ok_or("text is `words` or `x`")?;
    Ok((n, kind, args))
}

/// Records `0..n` with `kind` text, 0.2 ms apart from now (as at 5,000
/// messages/s), from the same seed every run so that runs compare.
pub(crate) fn records(n: u64, kind: events::Text) -> impl Iterator<Item = Record> {
    let mut rng = events::Rng::new(42);
    let start = SystemTime::now();
    (0..n).map(move |i| {
        let now = start + Duration::from_micros(200 * i);
        events::record(i, kind, &mut rng, now)
    })
}
