//! `omni-docgen [--write|--check]`: prints the generated configuration
//! reference, writes it to `docs/configuration.md`, or fails when that file
//! is stale.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("docs/configuration.md");
    let generated = match omni_docgen::generate(&root) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    match std::env::args().nth(1).as_deref() {
        None => print!("{generated}"),
        Some("--write") => {
            if let Err(error) = std::fs::write(&target, &generated) {
                eprintln!("error: cannot write {}: {error}", target.display());
                return ExitCode::FAILURE;
            }
        }
        Some("--check") => {
            if std::fs::read_to_string(&target).ok().as_deref() != Some(generated.as_str()) {
                eprintln!(
                    "error: {} is stale: run `cargo run -p omni-docgen -- --write`",
                    target.display()
                );
                return ExitCode::FAILURE;
            }
        }
        Some(other) => {
            eprintln!("usage: omni-docgen [--write|--check], not {other}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
