//! What the generator knows of the workspace's source: every struct and
//! enum that derives `Deserialize`, every function and constant (for
//! `#[serde(default = "...")]` and `const KIND`), and the types that
//! implement `ChannelConfig`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use syn::{Attribute, Expr, ImplItem, Item, Lit, Meta};

/// Why the source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {path}: {source}", path = .0.display(), source = .1)]
    Io(PathBuf, #[source] std::io::Error),
    #[error("cannot parse {path}: {source}", path = .0.display(), source = .1)]
    Parse(PathBuf, #[source] syn::Error),
}

/// A type found in the source, with where it lives.
#[derive(Debug)]
pub struct Found<T> {
    /// The crate's directory name (`omni-sms`).
    pub krate: String,
    /// The file, relative to `crates/`.
    pub file: String,
    pub item: T,
}

/// A channel kind: its `kind` value and the struct of its file.
#[derive(Debug)]
pub struct ChannelKind {
    pub kind: String,
    pub krate: String,
    pub config: String,
}

/// Everything the renderer looks up.
#[derive(Debug, Default)]
pub struct Index {
    pub structs: BTreeMap<String, Vec<Found<syn::ItemStruct>>>,
    pub enums: BTreeMap<String, Vec<Found<syn::ItemEnum>>>,
    /// Functions by name, per file (default functions are file-local).
    pub fns: BTreeMap<(String, String), syn::ItemFn>,
    /// Constants by name: free ones and associated ones (`Type::NAME`),
    /// per crate.
    pub consts: BTreeMap<(String, String), Vec<(String, Expr)>>,
    pub channels: Vec<ChannelKind>,
}

impl Index {
    /// Reads every `src/**/*.rs` of every crate under `crates`.
    pub fn load(crates: &Path) -> Result<Index, SourceError> {
        let mut index = Index::default();
        let mut pending_kinds = Vec::new();
        let mut dirs: Vec<_> = std::fs::read_dir(crates)
            .map_err(|e| SourceError::Io(crates.to_path_buf(), e))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.join("src").is_dir())
            .collect();
        dirs.sort();
        for dir in dirs {
            let krate = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files = Vec::new();
            rust_files(&dir.join("src"), &mut files)?;
            files.sort();
            for path in files {
                let text =
                    std::fs::read_to_string(&path).map_err(|e| SourceError::Io(path.clone(), e))?;
                let file =
                    syn::parse_file(&text).map_err(|e| SourceError::Parse(path.clone(), e))?;
                let name = path
                    .strip_prefix(crates)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                index.add_items(&krate, &name, &file.items, &mut pending_kinds);
            }
        }
        for (krate, file, config, kind) in pending_kinds {
            if let Some(kind) = index.resolve_kind(&krate, &file, &config, &kind) {
                index.channels.push(ChannelKind {
                    kind,
                    krate,
                    config,
                });
            }
        }
        index.channels.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(index)
    }

    fn add_items(
        &mut self,
        krate: &str,
        file: &str,
        items: &[Item],
        kinds: &mut Vec<(String, String, String, Expr)>,
    ) {
        for item in items {
            match item {
                Item::Struct(s) if derives_deserialize(&s.attrs) => {
                    self.structs
                        .entry(s.ident.to_string())
                        .or_default()
                        .push(Found {
                            krate: krate.to_owned(),
                            file: file.to_owned(),
                            item: s.clone(),
                        });
                }
                Item::Enum(e) if derives_deserialize(&e.attrs) => {
                    self.enums
                        .entry(e.ident.to_string())
                        .or_default()
                        .push(Found {
                            krate: krate.to_owned(),
                            file: file.to_owned(),
                            item: e.clone(),
                        });
                }
                Item::Fn(f) => {
                    self.fns
                        .insert((file.to_owned(), f.sig.ident.to_string()), f.clone());
                }
                Item::Const(c) => {
                    self.consts
                        .entry((krate.to_owned(), c.ident.to_string()))
                        .or_default()
                        .push((file.to_owned(), (*c.expr).clone()));
                }
                Item::Impl(i) => {
                    let self_name = type_name(&i.self_ty);
                    let trait_name = i
                        .trait_
                        .as_ref()
                        .and_then(|(_, path, _)| path.segments.last())
                        .map(|s| s.ident.to_string());
                    for impl_item in &i.items {
                        let ImplItem::Const(c) = impl_item else {
                            continue;
                        };
                        if trait_name.as_deref() == Some("ChannelConfig") && c.ident == "KIND" {
                            kinds.push((
                                krate.to_owned(),
                                file.to_owned(),
                                self_name.clone(),
                                c.expr.clone(),
                            ));
                        } else if trait_name.is_none() {
                            self.consts
                                .entry((krate.to_owned(), format!("{self_name}::{}", c.ident)))
                                .or_default()
                                .push((file.to_owned(), c.expr.clone()));
                        }
                    }
                }
                // Test modules may define kinds of their own (an
                // embedding's); they are not the product's.
                Item::Mod(m) if is_test_only(&m.attrs) => {}
                Item::Mod(m) => {
                    if let Some((_, inner)) = &m.content {
                        self.add_items(krate, file, inner, kinds);
                    }
                }
                _ => {}
            }
        }
    }

    /// The string a `const KIND` expression names: a literal, or a path to
    /// a constant of the same crate (preferring the config struct's file).
    fn resolve_kind(&self, krate: &str, file: &str, config: &str, expr: &Expr) -> Option<String> {
        if let Some(text) = string_literal(expr) {
            return Some(text);
        }
        let Expr::Path(path) = expr else { return None };
        let name = path.path.segments.last()?.ident.to_string();
        let module = path
            .path
            .segments
            .iter()
            .rev()
            .nth(1)
            .map(|s| s.ident.to_string());
        let candidates = self.consts.get(&(krate.to_owned(), name))?;
        let config_file = self
            .find_struct(krate, config)
            .map(|found| found.file.clone());
        let pick = candidates
            .iter()
            .find(|(f, _)| {
                module
                    .as_ref()
                    .is_some_and(|m| f.ends_with(&format!("/{m}.rs")))
            })
            .or_else(|| {
                candidates
                    .iter()
                    .find(|(f, _)| Some(f) == config_file.as_ref())
            })
            .or_else(|| candidates.iter().find(|(f, _)| f == file))
            .or_else(|| (candidates.len() == 1).then(|| &candidates[0]))?;
        string_literal(&pick.1)
    }

    /// A struct by name, preferring the given crate's.
    pub fn find_struct(&self, krate: &str, name: &str) -> Option<&Found<syn::ItemStruct>> {
        let all = self.structs.get(name)?;
        all.iter()
            .find(|f| f.krate == krate)
            .or_else(|| all.first())
    }

    /// An enum by name, preferring the given crate's.
    pub fn find_enum(&self, krate: &str, name: &str) -> Option<&Found<syn::ItemEnum>> {
        let all = self.enums.get(name)?;
        all.iter()
            .find(|f| f.krate == krate)
            .or_else(|| all.first())
    }

    /// A constant by name (`NAME` or `Type::NAME`) in a crate.
    pub fn find_const(&self, krate: &str, name: &str) -> Option<&Expr> {
        self.consts
            .get(&(krate.to_owned(), name.to_owned()))
            .and_then(|all| all.first())
            .map(|(_, expr)| expr)
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SourceError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SourceError::Io(dir.to_path_buf(), e))?;
    for entry in entries {
        let path = entry
            .map_err(|e| SourceError::Io(dir.to_path_buf(), e))?
            .path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `#[cfg(test)]`.
fn is_test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Path>()
                .is_ok_and(|path| path.is_ident("test"))
    })
}

fn derives_deserialize(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("derive")
            && attr
                .parse_args_with(
                    syn::punctuated::Punctuated::<syn::Path, syn::Token![,]>::parse_terminated,
                )
                .is_ok_and(|paths| {
                    paths
                        .iter()
                        .any(|p| p.segments.last().is_some_and(|s| s.ident == "Deserialize"))
                })
    })
}

/// The last path segment of a type (`omni_connector::SecretRef` is
/// `SecretRef`).
pub(crate) fn type_name(ty: &syn::Type) -> String {
    match ty {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

pub(crate) fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(s) => Some(s.value()),
            _ => None,
        },
        Expr::Reference(r) => string_literal(&r.expr),
        _ => None,
    }
}

/// The doc comment of an item or field, as paragraphs joined into one
/// line each.
pub(crate) fn doc(attrs: &[Attribute]) -> String {
    let mut lines = Vec::new();
    for attr in attrs {
        if let Meta::NameValue(nv) = &attr.meta
            && nv.path.is_ident("doc")
            && let Some(text) = string_literal(&nv.value)
        {
            lines.push(text.trim().to_owned());
        }
    }
    let mut paragraphs: Vec<String> = vec![String::new()];
    for line in lines {
        if line.is_empty() {
            paragraphs.push(String::new());
        } else if let Some(last) = paragraphs.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(&line);
        }
    }
    paragraphs.retain(|p| !p.is_empty());
    // Rustdoc links (`[`ParseLimits`]`) read as plain code in Markdown.
    paragraphs.join(" ").replace("[`", "`").replace("`]", "`")
}

/// The `serde(...)` settings of an item or field that the docs need.
#[derive(Debug, Default, Clone)]
pub(crate) struct Serde {
    pub rename: Option<String>,
    pub rename_all: Option<String>,
    /// `Some(None)`: `#[serde(default)]`; `Some(Some(f))`: `default = "f"`.
    pub default: Option<Option<String>>,
    pub skip: bool,
    pub flatten: bool,
    pub untagged: bool,
}

pub(crate) fn serde_attrs(attrs: &[Attribute]) -> Serde {
    let mut serde = Serde::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let _ = attr.parse_nested_meta(|meta| {
            let name = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            let value = || -> Option<String> {
                meta.value()
                    .ok()?
                    .parse::<syn::LitStr>()
                    .ok()
                    .map(|s| s.value())
            };
            match name.as_str() {
                "rename" => serde.rename = value(),
                "rename_all" => serde.rename_all = value(),
                "default" => {
                    serde.default = Some(if meta.input.peek(syn::Token![=]) {
                        value()
                    } else {
                        None
                    })
                }
                "skip" | "skip_deserializing" => serde.skip = true,
                "flatten" => serde.flatten = true,
                "untagged" => serde.untagged = true,
                _ => {
                    // Skip whatever value the attribute has (`with = ".."`).
                    if meta.input.peek(syn::Token![=]) {
                        let _ = meta.value().and_then(|v| v.parse::<Expr>());
                    }
                }
            }
            Ok(())
        });
    }
    serde
}

/// A name as serde spells it under `rename_all`.
pub(crate) fn renamed(name: &str, rule: Option<&str>) -> String {
    let words = split_words(name);
    match rule {
        Some("snake_case") => words.join("_").to_lowercase(),
        Some("kebab-case") => words.join("-").to_lowercase(),
        Some("lowercase") => name.to_lowercase(),
        Some("UPPERCASE") => name.to_uppercase(),
        Some("SCREAMING_SNAKE_CASE") => words.join("_").to_uppercase(),
        _ => name.to_owned(),
    }
}

fn split_words(name: &str) -> Vec<String> {
    if name.contains('_') {
        return name.split('_').map(str::to_owned).collect();
    }
    let mut words = Vec::new();
    let mut current = String::new();
    for ch in name.chars() {
        if ch.is_uppercase() && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        current.push(ch);
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}
