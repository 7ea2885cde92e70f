//! Customer-service rule files (`rules.dir`, one rule set per `*.toml`):
//! read from disk and compiled by [`omni_rules::RuleBook::compile`], all
//! or nothing. The compiled book is shared with the threading service
//! through [`Rules`]; a reload swaps it between two batches, so each
//! event is evaluated against one whole book, never half of an edit.

use std::{
    path::Path,
    sync::{Arc, RwLock},
};

use omni_rules::{RuleBook, RuleFileError};

/// Largest rule file read: a thousand rules with their keywords and
/// templates fit in a few hundred KiB, and a larger file is a mistake
/// (or a hostile mount), not a rule set.
pub const MAX_RULE_FILE_BYTES: u64 = 1024 * 1024;

/// The current rule book; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Rules(Arc<RwLock<Arc<RuleBook>>>);

impl Rules {
    pub fn new(book: RuleBook) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(book))))
    }

    /// The book to evaluate a batch with; later reloads do not change it.
    pub fn current(&self) -> Arc<RuleBook> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn replace(&self, book: RuleBook) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(book);
    }
}

/// Reads and compiles every rule file in `dir`. A directory that does not
/// exist holds no rules (automation off), so a deployment without
/// `config/rules/` runs as before; an unreadable one is an error. Returns
/// every problem of every file.
pub fn load(dir: &Path) -> Result<RuleBook, Vec<RuleFileError>> {
    if !dir.exists() {
        return Ok(RuleBook::default());
    }
    let file_error = |file: &Path, reason: String| RuleFileError {
        file: file.display().to_string(),
        key: ".".into(),
        reason,
    };
    let files = crate::channels::toml_files(dir)
        .map_err(|e| vec![file_error(dir, format!("cannot read rule directory: {e}"))])?;
    let mut texts = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    for file in files {
        match read_limited(&file) {
            Ok(text) => texts.push((file.display().to_string(), text)),
            Err(reason) => errors.push(file_error(&file, reason)),
        }
    }
    match RuleBook::compile(texts) {
        Ok(book) if errors.is_empty() => Ok(book),
        Ok(_) => Err(errors),
        Err(compiled) => {
            errors.extend(compiled.errors);
            Err(errors)
        }
    }
}

fn read_limited(file: &Path) -> Result<String, String> {
    let len = std::fs::metadata(file)
        .map_err(|e| format!("cannot read file: {e}"))?
        .len();
    if len > MAX_RULE_FILE_BYTES {
        return Err(format!(
            "file has {len} bytes, more than the {MAX_RULE_FILE_BYTES} a rule file may have"
        ));
    }
    std::fs::read_to_string(file).map_err(|e| format!("cannot read file: {e}"))
}

/// How many rules a book holds, for the log line of a (re)load.
pub fn rule_count(book: &RuleBook) -> usize {
    book.rule_sets()
        .iter()
        .map(|set| set.rule_names().count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
name = "support"
time_zone = "Europe/Berlin"
default_language = "en"
[templates.received]
en = "We got your message"
[[rules]]
name = "acknowledge"
match.conversation = ["new"]
actions.acknowledge = "received"
"#;

    #[test]
    fn a_missing_directory_holds_no_rules() {
        let dir = tempfile::tempdir().unwrap();
        let book = load(&dir.path().join("rules")).unwrap();
        assert!(book.rule_sets().is_empty());
    }

    #[test]
    fn every_file_is_compiled_and_only_toml_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("support.toml"), SET).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a rule file").unwrap();
        let book = load(dir.path()).unwrap();
        let names: Vec<_> = book.rule_sets().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["support"]);
        assert_eq!(rule_count(&book), 1);
    }

    #[test]
    fn errors_name_the_file_the_key_and_the_reason_and_nothing_is_loaded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.toml"), SET).unwrap();
        let broken = SET
            .replace("name = \"support\"", "name = \"other\"")
            .replace("\"received\"\n", "\"missing\"\n");
        std::fs::write(dir.path().join("broken.toml"), broken).unwrap();
        std::fs::write(
            dir.path().join("huge.toml"),
            "#".repeat(MAX_RULE_FILE_BYTES as usize + 1),
        )
        .unwrap();
        let errors = load(dir.path()).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        let huge = errors
            .iter()
            .find(|e| e.file.ends_with("huge.toml"))
            .unwrap();
        assert_eq!(huge.key, ".");
        assert!(huge.reason.contains("more than"), "{huge}");
        let broken = errors
            .iter()
            .find(|e| e.file.ends_with("broken.toml"))
            .unwrap();
        assert_eq!(broken.key, "rules[0].actions.acknowledge");
        assert!(broken.reason.contains("missing"), "{broken}");
    }

    #[test]
    fn a_replaced_book_is_seen_by_later_readers_not_by_earlier_ones() {
        let rules = Rules::default();
        let before = rules.current();
        rules.replace(RuleBook::compile([("support.toml", SET)]).unwrap());
        assert!(before.rule_sets().is_empty());
        assert_eq!(rules.current().rule_sets().len(), 1);
    }
}
