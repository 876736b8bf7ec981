//! Chat templates: renders a model's Jinja `chat_template` with minijinja exactly the way
//! transformers' `apply_chat_template(tokenize=False)` renders it with Jinja2 (trim_blocks,
//! lstrip_blocks, `raise_exception`, Python-style `tojson` and string methods).

use std::fmt::{self, Write as _};
use std::io;

use minijinja::value::{Kwargs, Rest, StringInput, ValueKind};
use minijinja::{Environment, ErrorKind, State, Value};
use serde::{Deserialize, Serialize};

use crate::io::gguf::Gguf;
use crate::io::tokenizer::TokenizerError;

/// One chat turn, as the chat template sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A Jinja chat template plus the special-token strings it may reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The Jinja source.
    source: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` values visible to the template.
    special_tokens: Vec<(&'static str, String)>,
    /// The model file the template came from, named in render errors ("" if unknown).
    origin: String,
}

/// Bounds on one render. A chat template comes from an untrusted model file, so every render gets
/// fuel and size limits sized from its input: real templates on long conversations stay far below
/// them, while nested loops or a string doubled each iteration fail in well under a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderLimits {
    /// minijinja fuel: about one per instruction, plus one per 8 bytes of every value the template
    /// computes (a value's size, below; the vendored minijinja's size check charges it), so it
    /// bounds both the steps and the total bytes a render produces.
    pub fuel: u64,
    /// Largest rendered output in bytes, and largest value the template may compute (string bytes
    /// plus 8 per list item, map key or value, see `Environment::set_max_value_size`).
    pub size: usize,
}

impl RenderLimits {
    /// Fuel every render gets, whatever its input. SmolLM2's and Gemma 3's templates spend under
    /// 200 000 on 201 turns of 2 KB (`real_templates_fit_well_within_the_limits`); two nested
    /// `range(100000)` loops spend this in well under a second.
    pub const FUEL_BASE: u64 = 4_000_000;
    /// Fuel per input byte, so that templates that copy each message many times still fit.
    pub const FUEL_PER_BYTE: u64 = 100;
    /// Output / value size every render may reach.
    pub const SIZE_BASE: usize = 1 << 20;
    /// Output / value size per input byte (the output is the input plus the template's markup).
    pub const SIZE_PER_BYTE: usize = 8;

    /// The limits for a render whose messages, special tokens and template source total
    /// `input_bytes`.
    pub fn for_input(input_bytes: usize) -> Self {
        RenderLimits {
            fuel: Self::FUEL_BASE
                .saturating_add(Self::FUEL_PER_BYTE.saturating_mul(input_bytes as u64)),
            size: Self::SIZE_BASE.saturating_add(Self::SIZE_PER_BYTE.saturating_mul(input_bytes)),
        }
    }
}

impl ChatTemplate {
    /// A template with the given `bos_token` / `eos_token` strings.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        ChatTemplate {
            source,
            special_tokens: vec![("bos_token", bos_token), ("eos_token", eos_token)],
            origin: String::new(),
        }
    }

    /// The same template, naming `origin` (the model file it came from) in its render errors.
    pub fn with_origin(mut self, origin: String) -> Self {
        self.origin = origin;
        self
    }

    /// The GGUF's `tokenizer.chat_template` with its bos/eos/unk/pad token strings (as
    /// transformers passes them); `None` if the file has no template. Fails on a bad template.
    pub fn from_gguf(g: &Gguf) -> Result<Option<ChatTemplate>, TokenizerError> {
        let Some(source) = g.get_opt_str("tokenizer.chat_template")? else {
            return Ok(None);
        };
        let tokens = g
            .get_opt_str_array("tokenizer.ggml.tokens")?
            .unwrap_or_default();
        let mut special_tokens = Vec::new();
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            let id = g.get_opt_u64(key)?;
            let token = id.and_then(|i| tokens.get(usize::try_from(i).ok()?));
            if let Some(t) = token {
                special_tokens.push((name, t.to_string()));
            }
        }
        let template = ChatTemplate {
            source: source.to_string(),
            special_tokens,
            origin: String::new(),
        };
        template.environment(RenderLimits::for_input(0))?;
        Ok(Some(template))
    }

    /// The special-token strings the template sees (`bos_token`, `eos_token`, ...).
    pub fn special_tokens(&self) -> &[(&'static str, String)] {
        &self.special_tokens
    }

    /// The Jinja source of the template.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// A minijinja environment configured like transformers' Jinja2 sandbox, holding the template,
    /// with `limits` on fuel and value size. The size limit is enforced by the vendored minijinja
    /// (vendor/minijinja/PATCH.md) for its operators, builtin filters and captures, and here for
    /// what this module adds: the pycompat `str.replace` / `str.join` methods, `tojson` and the
    /// debug printers `pprint` / `debug()`, and `indent` / `format` (wrapped here because the
    /// builtins have no access to the limit).
    fn environment(&self, limits: RenderLimits) -> Result<Environment<'_>, TokenizerError> {
        let size = limits.size;
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_fuel(Some(limits.fuel));
        env.set_max_value_size(Some(size));
        env.set_unknown_method_callback(move |state, value, method, args| {
            check_method_growth(value, method, args, size)?;
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        });
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", move |value: &Value, kwargs: Kwargs| {
            tojson(value, kwargs, size)
        });
        env.add_filter(
            "indent",
            move |value: StringInput<'_>,
                  width: Option<usize>,
                  first: Option<bool>,
                  blank: Option<bool>,
                  kwargs: Kwargs| {
                check_indent(value.as_str(), width, &kwargs, size)?;
                minijinja::filters::indent(value, width, first, blank, kwargs)
            },
        );
        env.add_filter(
            "format",
            move |state: &State, format: &Value, args: Rest<Value>| {
                check_format(format.as_str().unwrap_or_default(), &args, size)?;
                minijinja::filters::format(state, format, args)
            },
        );
        env.add_filter("pprint", move |value: &Value| {
            bounded_format(format_args!("{value:#?}"), size)
        });
        env.add_function(
            "debug",
            move |state: &State, args: Rest<Value>| match args.as_slice() {
                [] => bounded_format(format_args!("{state:#?}"), size),
                [one] => bounded_format(format_args!("{one:#?}"), size),
                all => bounded_format(format_args!("{all:#?}"), size),
            },
        );
        env.add_template("chat", &self.source)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(env)
    }

    /// Renders `messages` like transformers' `apply_chat_template(tokenize=False)`; like it,
    /// refuses an empty conversation.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        if messages.is_empty() {
            return Err(TokenizerError::Template(
                "cannot apply a chat template to an empty conversation".into(),
            ));
        }
        let input_bytes = self.source.len()
            + messages
                .iter()
                .map(|m| m.role.len() + m.content.len())
                .sum::<usize>()
            + self
                .special_tokens
                .iter()
                .map(|(_, t)| t.len())
                .sum::<usize>();
        self.render_limited(
            messages,
            add_generation_prompt,
            RenderLimits::for_input(input_bytes),
        )
    }

    /// `render` under the given `limits` (`render` sizes them from the input).
    fn render_limited(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        limits: RenderLimits,
    ) -> Result<String, TokenizerError> {
        let env = self.environment(limits)?;
        let template = env
            .get_template("chat")
            .map_err(|e| self.error(e.to_string()))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        for (name, token) in &self.special_tokens {
            ctx.push((name, Value::from(token.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        let mut out = LimitedWriter {
            bytes: Vec::new(),
            limit: limits.size,
            exceeded: false,
        };
        let result = template.render_captured_to(ctx, &mut out);
        match result {
            Ok(_) => String::from_utf8(out.bytes).map_err(|e| self.error(e.to_string())),
            Err(_) if out.exceeded => Err(self.error(format!(
                "output size limit exceeded: the rendered text passed {} bytes",
                limits.size
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(self.error(format!(
                "fuel limit exceeded: the template ran past {} steps",
                limits.fuel
            ))),
            Err(e) => Err(self.error(template_error_message(&e))),
        }
    }

    /// A render error, naming the model file the template came from when known.
    fn error(&self, message: String) -> TokenizerError {
        if self.origin.is_empty() {
            TokenizerError::Template(message)
        } else {
            TokenizerError::Template(format!("{message} (template from {})", self.origin))
        }
    }
}

/// The render's output: fails (and remembers why) once it would pass `limit` bytes.
struct LimitedWriter {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl io::Write for LimitedWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(io::Error::other("output size limit exceeded"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `fmt::Write` that only counts bytes, failing once they pass `limit`.
struct CountingWriter {
    len: usize,
    limit: usize,
}

impl fmt::Write for CountingWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.len += s.len();
        if self.len > self.limit {
            return Err(fmt::Error);
        }
        Ok(())
    }
}

/// The error for a value computed inside the template that would pass `limit` bytes (same text as
/// the vendored minijinja's).
fn too_large(limit: usize) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("value size limit exceeded: a template value grew past {limit} bytes"),
    )
}

/// `args` formatted into a string, failing once it would pass `limit` bytes.
fn bounded_format(args: fmt::Arguments<'_>, limit: usize) -> Result<String, minijinja::Error> {
    fmt::write(&mut CountingWriter { len: 0, limit }, args).map_err(|_| too_large(limit))?;
    Ok(fmt::format(args))
}

/// Fails if minijinja's `indent` filter (which adds `width` spaces per line) would build more than
/// `limit` bytes; checked before it builds the string.
fn check_indent(
    text: &str,
    width: Option<usize>,
    kwargs: &Kwargs,
    limit: usize,
) -> Result<(), minijinja::Error> {
    let width = match width {
        Some(w) => w,
        None => kwargs.get::<Option<usize>>("width")?.unwrap_or(4),
    };
    let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
    if width.saturating_mul(lines).saturating_add(text.len()) > limit {
        return Err(too_large(limit));
    }
    Ok(())
}

/// Fails if formatting `args` into `format` (printf style for the `format` filter, `{}` style for
/// `str.format`) could build more than `limit` bytes: a field may repeat an argument (`{0}{0}`),
/// so the bound is, per `%` or `{`, the longest argument plus a number's width (a float's `%f` is
/// up to ~320 digits), plus every width or precision written in the string.
fn check_format(format: &str, args: &[Value], limit: usize) -> Result<(), minijinja::Error> {
    const NUMBER: usize = 400;
    let mut longest = 0;
    for arg in args {
        let mut count = CountingWriter { len: 0, limit };
        write!(count, "{arg}").map_err(|_| too_large(limit))?;
        longest = longest.max(count.len);
    }
    let fields = format.bytes().filter(|&b| b == b'%' || b == b'{').count();
    let widths = format
        .split(|c: char| !c.is_ascii_digit())
        .map(|d| d.parse::<usize>().unwrap_or(usize::MAX))
        .fold(0usize, usize::saturating_add);
    let bound = fields
        .saturating_mul(longest + NUMBER)
        .saturating_add(widths)
        .saturating_add(format.len());
    if bound > limit {
        return Err(too_large(limit));
    }
    Ok(())
}

/// Fails if a pycompat string method whose result can outgrow its inputs (`str.replace` with a
/// long replacement, `str.join` of many items, `str.format` repeating an argument) would build
/// more than `limit` bytes; checked before minijinja-contrib builds the string.
fn check_method_growth(
    value: &Value,
    method: &str,
    args: &[Value],
    limit: usize,
) -> Result<(), minijinja::Error> {
    let Some(s) = value.as_str() else {
        return Ok(());
    };
    match (method, args) {
        ("replace", [old, new, rest @ ..]) => {
            let (Some(old), Some(new)) = (old.as_str(), new.as_str()) else {
                return Ok(());
            };
            let mut hits = if old.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(old).count()
            };
            if let Some(n) = rest.first().and_then(Value::as_i64) {
                hits = hits.min(usize::try_from(n).unwrap_or(hits));
            }
            if hits.saturating_mul(new.len()).saturating_add(s.len()) > limit {
                return Err(too_large(limit));
            }
        }
        ("format", args) => check_format(s, args, limit)?,
        ("join", [items]) => {
            let mut count = CountingWriter { len: 0, limit };
            for (i, item) in items.try_iter()?.enumerate() {
                let sep = if i > 0 { s } else { "" };
                write!(count, "{sep}{item}").map_err(|_| too_large(limit))?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Prints values like Jinja2 under Python: `True`/`False`/`None` rather than minijinja's `true`/`none`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(minijinja::Error::from),
        ValueKind::None => out.write_str("None").map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The message of a render error, preferring a `raise_exception` text over minijinja's wrapping.
fn template_error_message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    }
}

/// The template's `raise_exception(message)`: aborts rendering with that message.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson` filter: Python `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)` without Jinja's HTML escaping.
/// Fails once the JSON would pass `limit` bytes.
fn tojson(value: &Value, kwargs: Kwargs, limit: usize) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_i64() {
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(0);
                if n > limit {
                    return Err(too_large(limit));
                }
                " ".repeat(n)
            }
            None => v.as_str().map(str::to_string).unwrap_or_default(),
        }),
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        limit,
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Formatting options of Python's `json.dumps`.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    /// Largest output in bytes.
    limit: usize,
}

impl JsonStyle {
    /// Appends `value` as JSON at nesting `level`.
    fn write(&self, value: &Value, level: usize, out: &mut String) -> Result<(), minijinja::Error> {
        let unsupported = || {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize {} value", value.kind()),
            )
        };
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => {
                let f = f64::try_from(value.clone()).map_err(|_| unsupported())?;
                out.push_str(&py_float_repr(f));
            }
            ValueKind::String => out.push_str(&json_string(value.as_str().unwrap_or_default())),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, level, ('[', ']'), &items, |v, lvl, o| {
                    self.write(v, lvl, o)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key).ok_or_else(unsupported)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, level, ('{', '}'), &entries, |(k, v), lvl, o| {
                    o.push_str(&json_string(k));
                    o.push_str(&self.key_sep);
                    self.write(v, lvl, o)
                })?;
            }
            _ => return Err(unsupported()),
        }
        Ok(())
    }

    /// Writes `[a, b]` / `{...}` with Python's separators and indentation.
    fn write_container<T>(
        &self,
        out: &mut String,
        level: usize,
        (open, close): (char, char),
        items: &[T],
        mut write_item: impl FnMut(&T, usize, &mut String) -> Result<(), minijinja::Error>,
    ) -> Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |o: &mut String, lvl: usize| {
            if let Some(ind) = &self.indent {
                if o.len() + 1 + ind.len().saturating_mul(lvl) > self.limit {
                    return Err(too_large(self.limit));
                }
                o.push('\n');
                o.push_str(&ind.repeat(lvl));
            }
            Ok(())
        };
        for (i, item) in items.iter().enumerate() {
            if out.len() > self.limit {
                return Err(too_large(self.limit));
            }
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, level + 1)?;
            write_item(item, level + 1, out)?;
        }
        newline(out, level)?;
        out.push(close);
        Ok(())
    }
}

/// A JSON object key as Python's json module writes it (str, int, bool, None keys).
fn json_key(key: &Value) -> Option<String> {
    match key.kind() {
        ValueKind::String => key.as_str().map(str::to_string),
        ValueKind::Number if key.is_integer() => Some(key.to_string()),
        ValueKind::Number => f64::try_from(key.clone()).ok().map(py_float_repr),
        ValueKind::Bool => Some(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Some("null".into()),
        _ => None,
    }
}

/// A JSON string literal with Python's `ensure_ascii=False` escaping (same as serde_json's).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Python's `repr(float)` as json.dumps writes it ("1.0", "1e-05", "1.5e+16", "NaN").
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::tokenizer::tests::byte_level_gguf;

    /// A template using namespace, loop controls, Python string methods, `tojson` and bool output.
    const RICH_TEMPLATE: &str = "{%- set ns = namespace(sys='', n=0) -%}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- set ns.sys = messages[0]['content'].strip() -%}\n{%- endif -%}\n{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n  {% if m.content.startswith('STOP') %}{% break %}{% endif %}\n  {% set ns.n = ns.n + 1 %}\n[{{ loop.index }}] {{ m.role | upper }}: {{ m.content | trim }}{{ eos_token }}\n{% endfor %}\nsys={{ ns.sys | tojson }} n={{ ns.n }} tools={{ tools is none }} {{ {'a': [1, 2.5, none, true], 'b': 'x\"y\\u00e9'} | tojson }}\n{{ messages | tojson(indent=2) }}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}\n";

    pub(crate) fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// Expected strings were rendered by Jinja2 3.1.6 through transformers 5.24.0
    /// (`render_jinja_template(..., bos_token="<s>", eos_token="</s>")`).
    #[test]
    fn chat_template_matches_jinja2() {
        let t = ChatTemplate::new(RICH_TEMPLATE.into(), "<s>".into(), "</s>".into());
        let first = [
            msg("system", "  Be brief.  "),
            msg("user", " Hi <b>there</b> "),
            msg("assistant", "Hello!\n"),
        ];
        let want = "<s>\n[2] USER: Hi <b>there</b></s>\n[3] ASSISTANT: Hello!</s>\nsys=\"Be brief.\" n=2 tools=True {\"a\": [1, 2.5, null, true], \"b\": \"x\\\"y\u{e9}\"}\n[\n  {\n    \"role\": \"system\",\n    \"content\": \"  Be brief.  \"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \" Hi <b>there</b> \"\n  },\n  {\n    \"role\": \"assistant\",\n    \"content\": \"Hello!\\n\"\n  }\n]\nASSISTANT:";
        assert_eq!(t.render(&first, true).unwrap(), want);
        let second = [
            msg("user", "one"),
            msg("user", "STOP here"),
            msg("user", "never"),
        ];
        let want = "<s>\n[1] USER: one</s>\nsys=\"\" n=1 tools=True {\"a\": [1, 2.5, null, true], \"b\": \"x\\\"y\u{e9}\"}\n[\n  {\n    \"role\": \"user\",\n    \"content\": \"one\"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \"STOP here\"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \"never\"\n  }\n]\n";
        assert_eq!(t.render(&second, false).unwrap(), want);
    }

    #[test]
    fn chat_template_errors() {
        let src = "{% if messages[0].role == 'bogus' %}{{ raise_exception('bad role: ' + messages[0].role) }}{% endif %}ok";
        let t = ChatTemplate::new(src.into(), String::new(), String::new());
        let err = t.render(&[msg("bogus", "x")], false).unwrap_err();
        assert_eq!(err.to_string(), "chat template: bad role: bogus");
        assert_eq!(t.render(&[msg("user", "x")], false).unwrap(), "ok");
        assert!(t.render(&[], true).is_err());
        let broken = ChatTemplate::new("{% for %}".into(), String::new(), String::new());
        assert!(matches!(
            broken.render(&[msg("user", "x")], false),
            Err(TokenizerError::Template(_))
        ));
        assert!(
            ChatTemplate::from_gguf(&byte_level_gguf())
                .unwrap()
                .is_none()
        );
    }

    /// Renders `src` on one short user message.
    fn render_hostile(src: &str) -> Result<String, TokenizerError> {
        let t = ChatTemplate::new(src.into(), "<s>".into(), "</s>".into());
        t.render(&[msg("user", "hi")], true)
    }

    /// Asserts that rendering `src` fails with a message containing `needle`.
    fn assert_limit(src: &str, needle: &str) {
        match render_hostile(src) {
            Err(TokenizerError::Template(m)) => assert!(m.contains(needle), "{src}: {m}"),
            other => panic!("{src}: expected a template error with {needle:?}, got {other:?}"),
        }
    }

    const VALUE_LIMIT: &str = "value size limit exceeded";

    #[test]
    fn nested_loops_run_out_of_fuel() {
        assert_limit(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "fuel limit exceeded",
        );
        // Scanning a big string costs fuel in proportion to its size (`in`, `length`, methods).
        assert_limit(
            "{% set s = 'x' * 500000 %}{% for i in range(100000) %}{{ s in s }}{{ s|length }}{{ s.startswith(s) }}{% endfor %}",
            "fuel limit exceeded",
        );
        // Recursion through a macro is bounded as well.
        assert_limit(
            "{% macro f(n) %}{% for i in range(100000) %}{{ f(n + 1) if n < 3 }}{% endfor %}{% endmacro %}{{ f(0) }}",
            "fuel limit exceeded",
        );
    }

    #[test]
    fn growing_values_hit_the_size_limit() {
        let doubling = |step: &str| {
            format!(
                "{{% set ns = namespace(s='ab', l=[1, 2]) %}}{{% for i in range(64) %}}{{% set {step} %}}{{% endfor %}}{{{{ ns.s|length }}}}"
            )
        };
        for step in [
            "ns.s = ns.s ~ ns.s",
            "ns.s = ns.s + ns.s",
            "ns.s = [ns.s, ns.s]|join",
            "ns.s = [ns.s, ns.s]|join(ns.s)",
            "ns.s = ns.s.join([ns.s, ns.s])",
            "ns.s = ns.s|replace('a', ns.s)",
            "ns.s = ns.s.replace('', ns.s)",
            "ns.s = ns.s * 2",
            "ns.s = ns.s|indent(ns.s|length, first=true)",
            "ns.s = '%s%s'|format(ns.s, ns.s)",
            "ns.s = ('%s' * 64)|format(*([ns.s] * 64))",
            "ns.s = '{0}{0}'.format(ns.s)",
            "ns.s = ns.s|tojson ~ ns.s|tojson",
            "ns.s = ns.s|pprint ~ ns.s|pprint",
            "ns.l = ns.l + ns.l",
            "ns.l = [ns.l, ns.l]",
            "ns.l = [ns.l]",
            "ns.l = ns.l * 2",
            "ns.l = dict(a=ns.l, b=ns.l)",
        ] {
            assert_limit(&doubling(step), VALUE_LIMIT);
        }
        // Doubling through a captured block and through macro output.
        assert_limit(
            "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set t %}{{ ns.s }}{{ ns.s }}{% endset %}{% set ns.s = t %}{% endfor %}",
            VALUE_LIMIT,
        );
        assert_limit(
            "{% macro d(s) %}{{ s }}{{ s }}{% endmacro %}{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = d(ns.s) %}{% endfor %}",
            VALUE_LIMIT,
        );
        // A namespace that contains itself.
        assert_limit(
            "{% set ns = namespace(l=[]) %}{% set ns.l = [ns] %}{{ ns ~ '' }}",
            VALUE_LIMIT,
        );
    }

    #[test]
    fn huge_widths_fail_before_allocating() {
        assert_limit("{{ 'x'|indent(1000000000000) }}", VALUE_LIMIT);
        assert_limit("{{ 'x'|indent(width=1000000000000) }}", VALUE_LIMIT);
        assert_limit("{{ '%1000000000000s'|format('x') }}", VALUE_LIMIT);
        assert_limit("{{ '%.1000000000f'|format(1.5) }}", VALUE_LIMIT);
        assert_limit("{{ '{:>1000000000}'.format('x') }}", VALUE_LIMIT);
        // One argument repeated by many fields, each padded to the largest allowed width.
        assert_limit("{{ ('{0:>60000}' * 50000).format('x') }}", VALUE_LIMIT);
        assert_limit("{{ ('{0}' * 100000).format('x' * 100000) }}", VALUE_LIMIT);
        assert_limit("{{ 'x' * 1000000000000 }}", VALUE_LIMIT);
        assert_limit("{{ [1]|batch(1000000000000, 0)|list }}", VALUE_LIMIT);
        assert_limit("{{ [1]|slice(1000000000000, 0)|list }}", VALUE_LIMIT);
        assert_limit("{{ messages|tojson(indent=1000000000000) }}", VALUE_LIMIT);
        // Neither Jinja2 nor minijinja has `center`; it fails as unknown, not by allocating.
        assert!(render_hostile("{{ 'x'|center(1000000000000) }}").is_err());
        assert!(render_hostile("{{ 'x'.center(1000000000000) }}").is_err());
    }

    #[test]
    fn output_flood_hits_the_output_limit() {
        assert_limit(
            "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
            "output size limit exceeded",
        );
    }

    #[test]
    fn limits_grow_with_the_input() {
        let small = RenderLimits::for_input(0);
        let big = RenderLimits::for_input(400_000);
        assert_eq!(small.fuel, RenderLimits::FUEL_BASE);
        assert_eq!(small.size, RenderLimits::SIZE_BASE);
        assert!(big.fuel > small.fuel && big.size > small.size);
    }

    #[test]
    fn long_conversations_still_render() {
        let t = ChatTemplate::new(RICH_TEMPLATE.into(), "<s>".into(), "</s>".into());
        let turn = "word ".repeat(400);
        let messages: Vec<ChatMessage> = (0..200)
            .map(|i| msg(if i % 2 == 0 { "user" } else { "assistant" }, &turn))
            .collect();
        let out = t.render(&messages, true).unwrap();
        assert!(out.len() > 200 * turn.trim().len());
        assert!(out.ends_with("ASSISTANT:"));
    }

    /// SmolLM2-135M-Instruct's `tokenizer.chat_template` (from its GGUF).
    const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    /// The real SmolLM2 and Gemma 3 templates render a 201-message conversation of 2 KB turns
    /// even with a quarter of the fuel and size `render` would give them.
    #[test]
    fn real_templates_fit_well_within_the_limits() {
        let gemma: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/arch/gemma3/tokenizer_config.json"
        ))
        .unwrap();
        let gemma = gemma["chat_template"].as_str().unwrap();
        let turn = "word ".repeat(400);
        let mut messages = vec![msg("system", "Be brief.")];
        messages
            .extend((0..200).map(|i| msg(if i % 2 == 0 { "user" } else { "assistant" }, &turn)));
        let input: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        for source in [SMOLLM2_TEMPLATE, gemma] {
            let t = ChatTemplate::new(source.into(), "<bos>".into(), "<eos>".into());
            let full = RenderLimits::for_input(input + source.len());
            let quarter = RenderLimits {
                fuel: full.fuel / 4,
                size: full.size / 4,
            };
            let out = t.render_limited(&messages, true, quarter).unwrap();
            assert_eq!(out, t.render(&messages, true).unwrap());
            assert!(out.len() > input);
        }
    }

    #[test]
    fn errors_name_the_template_origin() {
        let t = ChatTemplate::new(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
                .into(),
            String::new(),
            String::new(),
        )
        .with_origin("models/x/tokenizer_config.json".into());
        let err = t
            .render(&[msg("user", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fuel limit exceeded"), "{err}");
        assert!(err.contains("models/x/tokenizer_config.json"), "{err}");
    }

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(2.5), "2.5");
        assert_eq!(py_float_repr(1e-5), "1e-05");
        assert_eq!(py_float_repr(1.5e16), "1.5e+16");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(123456789012345.0), "123456789012345.0");
        assert_eq!(py_float_repr(f64::NAN), "NaN");
    }
}
