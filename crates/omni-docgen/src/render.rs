//! Markdown from the index: one table per TOML table, sub-tables after
//! their parent.

use std::fmt::Write as _;

use quote::ToTokens;
use syn::{Expr, Fields, GenericArgument, PathArguments, Type};

use crate::source::{Index, doc, renamed, serde_attrs, string_literal, type_name};

const HEADER: &str = "\
# Configuration reference

<!-- Generated from the config structs' doc comments by
     `cargo run -p omni-docgen -- --write`. Do not edit by hand: the test
     `configuration_md_is_fresh` fails when this file and the code differ. -->

Omnid reads three kinds of files:

- **`omnid.toml`**, the daemon's own settings (path from `--config` or
  `OMNID_CONFIG`, default `config/omnid.toml`). Every key can be overridden
  by an environment variable: `OMNID__` followed by the key's path in upper
  case with `__` between levels (`OMNID__HTTP__LISTEN=0.0.0.0:8080` sets
  `http.listen`).
- **Channel files**, one TOML file per channel instance in `channels.dir`,
  each with a unique `id` (1 to 64 lowercase letters, digits, `-` or `_`), a
  `kind`, and that kind's keys below. They are reloaded without a restart,
  all or nothing: one bad file keeps the previous set running.
- **Rule files**, one customer-service rule set per TOML file in
  `rules.dir` (tags, priority, acknowledgements, business hours, SLA
  targets), reloaded like channel files; described in
  [automation.md](automation.md), with a complete example in
  `config/examples/rules.toml`.

Unknown keys are errors everywhere, so a typo never silently falls back to
a default. `omnid check-config` validates everything and names the file,
key and reason of each problem. Secrets are never written in these files:
a secret key takes `{ env = \"NAME\" }` or `{ file = \"/run/secrets/name\" }`.
";

pub(crate) fn document(index: &Index) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\n## The daemon: `omnid.toml`\n");
    if let Some(found) = index.find_struct("omnid", "Settings") {
        table(index, &found.krate, "Settings", "", 3, &mut out);
    }
    out.push_str("\n## Channel files\n");
    out.push_str(
        "\nEvery channel file has these two keys, then its kind's own:\n\n\
         | key | type | default | meaning |\n|---|---|---|---|\n\
         | `id` | string | **required** | The channel's unique id: in the webhook URL (`/webhooks/{id}`), event ids, metric labels. |\n\
         | `kind` | string | **required** | One of the kinds below. |\n",
    );
    for channel in &index.channels {
        let _ = write!(out, "\n### `kind = \"{}\"`\n", channel.kind);
        table(index, &channel.krate, &channel.config, "", 4, &mut out);
    }
    out
}

/// What a field's type is in TOML terms, and the struct it opens as a
/// sub-table, if any.
struct Shape {
    text: String,
    optional: bool,
    table: Option<(String, bool)>,
}

fn shape(index: &Index, krate: &str, ty: &Type) -> Shape {
    let name = type_name(ty);
    let inner = first_generic(ty);
    match (name.as_str(), inner) {
        ("Option", Some(inner)) => {
            let mut shape = shape(index, krate, inner);
            shape.optional = true;
            shape
        }
        ("Vec", Some(inner)) => {
            let item = shape(index, krate, inner);
            match item.table {
                Some((name, _)) => Shape {
                    text: "array of tables".into(),
                    optional: false,
                    table: Some((name, true)),
                },
                None => Shape {
                    text: format!("array of {}", item.text),
                    optional: false,
                    table: None,
                },
            }
        }
        ("HashMap" | "BTreeMap", _) => plain("table of strings"),
        ("String" | "PathBuf", _) => plain("string"),
        ("bool", _) => plain("boolean"),
        ("u8" | "u16" | "u32" | "u64" | "usize" | "i32" | "i64", _) => plain("integer"),
        ("f32" | "f64", _) => plain("number"),
        ("SocketAddr", _) => plain("address (`host:port`)"),
        _ => {
            if index.find_struct(krate, &name).is_some() {
                return Shape {
                    text: "table".into(),
                    optional: false,
                    table: Some((name, false)),
                };
            }
            if let Some(found) = index.find_enum(krate, &name) {
                return plain(&enum_text(&found.item));
            }
            plain(&format!("`{name}`"))
        }
    }
}

fn plain(text: &str) -> Shape {
    Shape {
        text: text.to_owned(),
        optional: false,
        table: None,
    }
}

fn first_generic(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let PathArguments::AngleBracketed(args) = &path.path.segments.last()?.arguments else {
        return None;
    };
    args.args.iter().find_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    })
}

/// The accepted values of an enum: names for unit variants, inline tables
/// for externally tagged ones (`{ env = "…" }`).
fn enum_text(item: &syn::ItemEnum) -> String {
    let serde = serde_attrs(&item.attrs);
    let values: Vec<String> = item
        .variants
        .iter()
        .filter(|v| !serde_attrs(&v.attrs).skip)
        .map(|v| {
            let name = serde_attrs(&v.attrs)
                .rename
                .unwrap_or_else(|| renamed(&v.ident.to_string(), serde.rename_all.as_deref()));
            match &v.fields {
                Fields::Unit => format!("`\"{name}\"`"),
                _ if serde.untagged => "a value".to_owned(),
                _ => format!("`{{ {name} = … }}`"),
            }
        })
        .collect();
    match values.as_slice() {
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
        [] => "nothing".to_owned(),
    }
}

/// One struct as a table, then its sub-tables.
fn table(index: &Index, krate: &str, name: &str, path: &str, depth: usize, out: &mut String) {
    let Some(found) = index.find_struct(krate, name) else {
        return;
    };
    let item = &found.item;
    let container = serde_attrs(&item.attrs);
    let about = doc(&item.attrs);
    if !about.is_empty() {
        let _ = write!(out, "\n{about}\n");
    }
    let Fields::Named(fields) = &item.fields else {
        return;
    };
    let mut rows = String::new();
    let mut nested = Vec::new();
    for field in &fields.named {
        let serde = serde_attrs(&field.attrs);
        if serde.skip {
            continue;
        }
        let ident = field
            .ident
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let key = serde
            .rename
            .clone()
            .unwrap_or_else(|| renamed(&ident, container.rename_all.as_deref()));
        let shape = shape(index, &found.krate, &field.ty);
        if serde.flatten
            && let Some((inner, _)) = &shape.table
        {
            nested.push((key, inner.clone(), false, true));
            continue;
        }
        let default = match (&serde.default, &container.default) {
            (Some(Some(function)), _) => {
                default_value(index, &found.krate, &found.file, function, &key)
            }
            (Some(None), _) | (None, Some(_)) => empty_default(&shape),
            (None, None) if shape.optional => "unset".to_owned(),
            (None, None) => "**required**".to_owned(),
        };
        let mut meaning = doc(&field.attrs);
        if let Some((inner, array)) = &shape.table {
            let sub = join(path, &key);
            let anchor = if *array {
                format!("[[{sub}]]")
            } else {
                format!("[{sub}]")
            };
            if !meaning.is_empty() {
                meaning.push(' ');
            }
            let _ = write!(meaning, "See `{anchor}` below.");
            nested.push((key.clone(), inner.clone(), *array, false));
        }
        let _ = writeln!(
            rows,
            "| `{key}` | {} | {} | {} |",
            shape.text,
            default,
            meaning.replace('|', "\\|")
        );
    }
    if !rows.is_empty() {
        out.push_str("\n| key | type | default | meaning |\n|---|---|---|---|\n");
        out.push_str(&rows);
    }
    for (key, inner, array, flatten) in nested {
        if flatten {
            table(index, &found.krate, &inner, path, depth, out);
            continue;
        }
        let sub = join(path, &key);
        let hashes = "#".repeat(depth.min(6));
        if array {
            let _ = write!(out, "\n{hashes} `[[{sub}]]`\n");
        } else {
            let _ = write!(out, "\n{hashes} `[{sub}]`\n");
        }
        table(index, &found.krate, &inner, &sub, depth + 1, out);
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// What `#[serde(default)]` gives a field of this shape.
fn empty_default(shape: &Shape) -> String {
    if shape.optional {
        return "unset".into();
    }
    match shape.text.as_str() {
        "boolean" => "`false`".into(),
        "integer" => "`0`".into(),
        "string" => "`\"\"`".into(),
        "table" => "(its defaults)".into(),
        "table of strings" => "empty".into(),
        text if text.starts_with("array") => "`[]`".into(),
        _ => "(type default)".into(),
    }
}

/// The value a default function returns, as TOML would spell it; byte
/// sizes also in MiB or KiB when round (the code writes them that way).
fn default_value(index: &Index, krate: &str, file: &str, function: &str, key: &str) -> String {
    let Some(f) = index.fns.get(&(file.to_owned(), function.to_owned())) else {
        return format!("`{function}()`");
    };
    let Some(syn::Stmt::Expr(expr, None)) = f.block.stmts.last() else {
        return format!("`{function}()`");
    };
    match value(index, krate, expr) {
        Some(text) => match text.parse::<i128>() {
            Ok(n) if key.contains("bytes") => format!("`{text}`{}", units(n)),
            _ => format!("`{text}`"),
        },
        None => format!("`{}`", expr.to_token_stream()),
    }
}

/// Evaluates the small expressions default functions use: literals,
/// integer arithmetic, `"x".to_owned()`, `PathBuf::from("x")`, `vec![..]`,
/// enum variants (spelled as serde spells them), constants, and
/// `Type::CONST.field`.
fn value(index: &Index, krate: &str, expr: &Expr) -> Option<String> {
    if let Some(text) = string_literal(expr) {
        return Some(format!("{text:?}"));
    }
    if let Some(n) = integer(index, krate, expr) {
        return Some(n.to_string());
    }
    match expr {
        Expr::Lit(lit) => Some(lit.to_token_stream().to_string()),
        Expr::MethodCall(call)
            if matches!(
                call.method.to_string().as_str(),
                "to_owned" | "into" | "to_string"
            ) =>
        {
            value(index, krate, &call.receiver)
        }
        Expr::Call(call) => {
            let callee = call.func.to_token_stream().to_string().replace(' ', "");
            match (callee.as_str(), call.args.first()) {
                ("PathBuf::from" | "String::from", Some(arg)) => value(index, krate, arg),
                ("SocketAddr::from", Some(Expr::Tuple(pair))) => {
                    let ip = pair.elems.first()?.to_token_stream().to_string();
                    let ip = ip
                        .trim_matches(|c| c == '[' || c == ']')
                        .replace(" ,", ".")
                        .replace([' ', ','], "");
                    let port = pair.elems.get(1)?.to_token_stream().to_string();
                    Some(format!("{ip}:{port}"))
                }
                _ => None,
            }
        }
        Expr::Macro(m) if m.mac.path.is_ident("vec") => {
            let items = m
                .mac
                .parse_body_with(
                    syn::punctuated::Punctuated::<Expr, syn::Token![,]>::parse_terminated,
                )
                .ok()?;
            let values: Option<Vec<String>> =
                items.iter().map(|item| value(index, krate, item)).collect();
            Some(format!("[{}]", values?.join(", ")))
        }
        Expr::Path(path) => {
            let segments: Vec<String> = path
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            if let Some(constant) = index.find_const(krate, &segments.join("::")) {
                return value(index, krate, constant);
            }
            let [ty, variant] = segments.as_slice() else {
                return None;
            };
            // A variant: spelled as its enum's serde attributes say, or in
            // snake case for a library's enum (serde's usual spelling).
            let name = match index.find_enum(krate, ty) {
                Some(found) => {
                    let serde = serde_attrs(&found.item.attrs);
                    let v = found.item.variants.iter().find(|v| v.ident == variant)?;
                    serde_attrs(&v.attrs)
                        .rename
                        .unwrap_or_else(|| renamed(variant, serde.rename_all.as_deref()))
                }
                None => renamed(variant, Some("snake_case")),
            };
            Some(format!("{name:?}"))
        }
        Expr::Field(field) => {
            let syn::Member::Named(member) = &field.member else {
                return None;
            };
            let base = field.base.to_token_stream().to_string().replace(' ', "");
            let Expr::Struct(literal) = index.find_const(krate, &base)? else {
                return None;
            };
            let field = literal.fields.iter().find(|f| match &f.member {
                syn::Member::Named(name) => name == member,
                syn::Member::Unnamed(_) => false,
            })?;
            value(index, krate, &field.expr)
        }
        _ => None,
    }
}

fn integer(index: &Index, krate: &str, expr: &Expr) -> Option<i128> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            syn::Lit::Int(n) => n.base10_parse().ok(),
            _ => None,
        },
        Expr::Binary(bin) => {
            let (a, b) = (
                integer(index, krate, &bin.left)?,
                integer(index, krate, &bin.right)?,
            );
            match bin.op {
                syn::BinOp::Mul(_) => a.checked_mul(b),
                syn::BinOp::Add(_) => a.checked_add(b),
                syn::BinOp::Sub(_) => a.checked_sub(b),
                syn::BinOp::Div(_) => a.checked_div(b),
                _ => None,
            }
        }
        Expr::Paren(p) => integer(index, krate, &p.expr),
        Expr::Path(path) => {
            let name = path.to_token_stream().to_string().replace(' ', "");
            integer(index, krate, index.find_const(krate, &name)?)
        }
        _ => None,
    }
}

fn units(n: i128) -> String {
    const MIB: i128 = 1024 * 1024;
    if n >= MIB && n % MIB == 0 {
        format!(" ({} MiB)", n / MIB)
    } else if n >= 1024 && n % 1024 == 0 {
        format!(" ({} KiB)", n / 1024)
    } else {
        String::new()
    }
}
