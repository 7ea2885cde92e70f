//! The committed configuration reference is what the code says.

use std::path::Path;

#[test]
fn configuration_md_is_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let generated = omni_docgen::generate(&root).expect("the workspace's source parses");
    let committed = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/configuration.md is stale: run `cargo run -p omni-docgen -- --write`"
    );
}

#[test]
fn documents_the_daemon_and_every_registered_kind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let generated = omni_docgen::generate(&root).unwrap();
    for needle in [
        "### `[http]`",
        "| `listen` | address (`host:port`) | `127.0.0.1:8080` |",
        "### `kind = \"api\"`",
        "### `kind = \"email\"`",
        "### `kind = \"telegram\"`",
        "### `kind = \"twilio\"`",
        "### `kind = \"vonage\"`",
        "### `kind = \"sms_gateway\"`",
        "`{ env = … }` or `{ file = … }`",
    ] {
        assert!(generated.contains(needle), "missing {needle:?}");
    }
}
